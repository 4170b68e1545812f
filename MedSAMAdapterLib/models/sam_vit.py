"""SAM ViT-B/L/H through segment-anything's modules, at the official 1024 input or at 256.

At 256 the official 1024 checkpoint is adapted while loading (:func:`adapt_state_dict`): the absolute position
embedding (1, 64, 64, C) is resized bicubically to (1, 16, 16, C), and the relative-position tables of the
global-attention blocks go from 2*64-1 = 127 to 2*16-1 = 31 rows (linear along the offset axis). Windowed blocks
keep their 27-row tables (window 14 at both sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from .promptable import PromptableSam, build_mask_decoder, build_prompt_encoder, sam_modeling

if TYPE_CHECKING:
    from .registry import ModelSpec

PATCH_SIZE = 16


@dataclass(frozen=True)
class SamVitConfig:
    """Hyper-parameters that differ between SAM encoders (the rest are shared)."""

    depth: int
    embed_dim: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14


SAM_VIT_CONFIGS: dict[str, SamVitConfig] = {
    "vit_b": SamVitConfig(12, 768, 12, (2, 5, 8, 11)),
    "vit_l": SamVitConfig(24, 1024, 16, (5, 11, 17, 23)),
    "vit_h": SamVitConfig(32, 1280, 16, (7, 15, 23, 31)),
}


def build_image_encoder(config: SamVitConfig, image_size: int) -> nn.Module:
    """SAM's ImageEncoderViT with the official settings (patch 16, rel-pos, qkv bias, 256 output channels)."""
    if image_size % PATCH_SIZE:
        raise ValueError(f"image_size must be a multiple of {PATCH_SIZE}, got {image_size}")
    return sam_modeling().ImageEncoderViT(
        img_size=image_size,
        patch_size=PATCH_SIZE,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=4.0,
        out_chans=256,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        global_attn_indexes=config.global_attn_indexes,
        window_size=config.window_size,
    )


def build_sam_vit(config: SamVitConfig, image_size: int, spec: ModelSpec) -> PromptableSam:
    """A randomly initialised SAM (load weights afterwards, through :func:`adapt_state_dict`)."""
    grid = image_size // PATCH_SIZE
    return PromptableSam(
        image_encoder=build_image_encoder(config, image_size),
        prompt_encoder=build_prompt_encoder(image_size, grid),
        mask_decoder=build_mask_decoder(),
        spec=spec,
    )


def resize_pos_embed(pos: Tensor, grid: int) -> Tensor:
    """(1, G, G, C) -> (1, grid, grid, C), bicubic (as usual when fine-tuning ViTs at another resolution)."""
    x = pos.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos.dtype).contiguous()


def resize_rel_pos(table: Tensor, rows: int) -> Tensor:
    """(2G-1, head_dim) -> (rows, head_dim), linear along the offset axis (SAM's own ``get_rel_pos`` rule)."""
    x = table.float().t().unsqueeze(0)
    x = F.interpolate(x, size=rows, mode="linear", align_corners=False)
    return x.squeeze(0).t().to(table.dtype).contiguous()


def adapt_state_dict(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Resize position tables whose shape differs from ``model``'s (e.g. a 1024 checkpoint for a 256 model).

    Only ``pos_embed`` and ``rel_pos_h`` / ``rel_pos_w`` entries are touched; other shape mismatches are left
    for the strict load to report. The non-persistent ``pixel_mean`` / ``pixel_std`` buffers of segment-anything's
    ``Sam`` are dropped if a checkpoint carries them (normalisation is the engine's job).
    """
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        want = target.get(key)
        if want is not None and want.shape != value.shape:
            if key.endswith("pos_embed") and value.ndim == 4:
                value = resize_pos_embed(value, want.shape[1])
            elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.ndim == 2:
                value = resize_rel_pos(value, want.shape[0])
        out[key] = value
    return out
