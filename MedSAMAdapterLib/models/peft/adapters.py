"""Bottleneck adapter and the Med-SA encoder blocks (SAM ViT and TinyViT) that carry it.

The block wrappers take over the original block's submodules under the *same attribute names*
(``norm1``/``attn``/``norm2``/``mlp`` for SAM, ``attn``/``mlp``/``local_conv`` for TinyViT), so every base
state-dict key is unchanged; the new tensors sit under ``peft_*`` names (``blocks.3.peft_space.down.weight``).
The forwards are re-implemented from those submodules instead of forking segment-anything.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..promptable import sam_modeling
from ..tiny_vit import TinyViTBlock
from ..tiny_vit import window_partition as tv_window_partition
from ..tiny_vit import window_unpartition as tv_window_unpartition
from .depth import depth_to_slices, sam_depth_attention, tinyvit_depth_attention

#: Every tensor added by PEFT surgery has a name component starting with this (policy and checkpoints rely on it).
PEFT_PREFIX = "peft_"


def is_peft_name(name: str) -> bool:
    """True for state-dict / parameter names created by PEFT surgery."""
    return any(part.startswith(PEFT_PREFIX) for part in name.split("."))


def factory_kwargs(module: nn.Module) -> dict:
    """device / dtype of ``module``'s first parameter, so new layers land beside it (also on ``meta``)."""
    ref = next(module.parameters())
    return {"device": ref.device, "dtype": ref.dtype}


class Adapter(nn.Module):
    """Linear ``dim -> dim*ratio`` -> act -> Linear back; ``x + f(x)`` with ``skip`` else ``f(x)``.

    Unlike the public Med-SA code the up projection is zero-initialised, so an untrained adapter is an exact
    identity (skip) or an exact zero (no skip) and adding it never changes a pretrained model's output.
    """

    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True, act: type[nn.Module] = nn.GELU,
                 *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        hidden = max(1, int(dim * ratio))
        self.skip = skip
        self.down = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.act = act()
        self.up = nn.Linear(hidden, dim, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.up(self.act(self.down(x)))
        return x + y if self.skip else y

    def extra_repr(self) -> str:
        return f"skip={self.skip}"


def sam_block_class() -> type[nn.Module]:
    """segment-anything's ``image_encoder.Block`` (imported without torchvision)."""
    return sam_modeling().image_encoder.Block


class MedSAVitBlock(nn.Module):
    """Med-SA wiring of a segment-anything ViT block (see methods digest §2.1).

    ``x + [A_space(Attn(LN1 x)) + A_depth(DepthAttn(LN1 x))]`` then ``x + MLP(LN2 x) + s * A_mlp(LN2 x)``.
    The depth branch (SD-Trans, optional) works on the full-resolution tokens *before* window partitioning,
    so windowed blocks never mix window and slice indices (the public code's bug).
    """

    def __init__(self, block: nn.Module, ratio: float = 0.25, mlp_scale: float = 0.5,
                 depth_chunk: int | None = None) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.window_size = int(block.window_size)
        self.mlp_scale = float(mlp_scale)
        self.depth_chunk = depth_chunk
        dim, kw = block.norm1.normalized_shape[0], factory_kwargs(block)
        self.peft_space = Adapter(dim, ratio, skip=True, **kw)
        self.peft_mlp = Adapter(dim, ratio, skip=False, **kw)
        self.peft_depth = Adapter(dim, ratio, skip=False, **kw) if depth_chunk is not None else None
        self.train(block.training)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C); with SD-Trans B = volumes * depth_chunk consecutive slices."""
        ie = sam_modeling().image_encoder
        h, w = x.shape[1:3]
        xn = self.norm1(x)
        if self.window_size > 0:
            windows, pad_hw = ie.window_partition(xn, self.window_size)
            y = ie.window_unpartition(self.attn(windows), self.window_size, pad_hw, (h, w))
        else:
            y = self.attn(xn)
        y = self.peft_space(y)  # per token, so applying it after un-partitioning equals Med-SA's order
        if self.peft_depth is not None:
            d = int(self.depth_chunk)
            y = y + depth_to_slices(self.peft_depth(sam_depth_attention(self.attn, xn, d)), d, h, w)
        x = x + y
        xn = self.norm2(x)
        return x + self.mlp(xn) + self.mlp_scale * self.peft_mlp(xn)


class MedSATinyViTBlock(nn.Module):
    """Med-SA wiring of a TinyViT block: space adapter after windowed attention, depth branch (optional),
    MLP adapter parallel to the MLP fed the *un-normalised* x (TinyViT's Mlp and attention have their own LN).
    """

    def __init__(self, block: TinyViTBlock, ratio: float = 0.25, mlp_scale: float = 0.5,
                 depth_chunk: int | None = None) -> None:
        super().__init__()
        self.window = int(block.window)
        self.attn, self.mlp, self.local_conv, self.drop_path = block.attn, block.mlp, block.local_conv, block.drop_path
        self.mlp_scale = float(mlp_scale)
        self.depth_chunk = depth_chunk
        dim, kw = block.attn.norm.normalized_shape[0], factory_kwargs(block)
        self.peft_space = Adapter(dim, ratio, skip=True, **kw)
        self.peft_mlp = Adapter(dim, ratio, skip=False, **kw)
        self.peft_depth = Adapter(dim, ratio, skip=False, **kw) if depth_chunk is not None else None
        self.train(block.training)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C), channels last like :class:`TinyViTBlock`."""
        h, w = x.shape[1:3]
        windows, padded = tv_window_partition(x, self.window)
        y = self.peft_space(tv_window_unpartition(self.attn(windows), self.window, padded, (h, w)))
        if self.peft_depth is not None:
            d = int(self.depth_chunk)
            y = y + depth_to_slices(self.peft_depth(tinyvit_depth_attention(self.attn, x, d)), d, h, w)
        x = x + self.drop_path(y)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.mlp(x)) + self.mlp_scale * self.peft_mlp(x)


MEDSA_BLOCKS = (MedSAVitBlock, MedSATinyViTBlock)
