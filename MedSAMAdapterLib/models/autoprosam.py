"""AutoProSAM-style volumetric, prompt-free segmentation on a frozen TinyViT (LiteMedSAM) encoder.

Input: a patch (B, 1, D, H, W) of a volume already mapped to [0, 1] (the intensity policy's display range / 255,
one mapping for the whole volume so neighbouring sliding windows see the same values). Output: K-class logits
(B, K, D, H, W). Shapes below for LiteMedSAM and the default 64 x 128 x 128 patch.

1. **Frozen per-slice stem** (no gradient): TinyViT's patch embedding + conv stage 0 + its stride-2 merge run on
   every slice (3 channels = the grey slice repeated): (B*D, 128, 64, 64).
2. **Depth merge into 3D tokens**: a learnable depthwise Conv3d, kernel/stride 2 along depth, initialised to the
   mean of the two slices (3DSAM-adapter merges slices the same way, with a 16-slice kernel after x4 upsampling),
   so tokens are isotropic in index space: (B, 32, 64, 64, 128). A learnable **depth position embedding**
   (zero-initialised, linearly resampled when a patch has another depth) is added; TinyViT has no absolute
   in-plane position embedding (its blocks use relative biases and a depthwise conv), so none is added in-plane.
3. **3D windowed attention with the frozen 2D blocks**: every TinyViT attention block runs on windows of
   ``depth_window`` x w x w tokens (w = the block's own 2D window). q/k/v, projection, MLP, local conv and the
   in-plane relative-position bias table are the block's frozen tensors; a new per-head bias over |dz| (zero init,
   trainable) makes the relative position 3D (3DSAM-adapter's trainable d-table). The block's 3x3 local conv runs
   per slice. A **3D adapter** before each block (Linear C -> C*ratio, GELU, depthwise Conv3d 3x3x3, GELU,
   Linear back, residual; the last Linear zero-initialised so training starts from the 2D blocks' behaviour)
   carries the depth context. Stride-2 merges between stages run per slice (frozen) followed by another depth merge.
4. **Levels**: stage-1 (D/2, H/2, W/2), stage-2 and stage-3 outputs (D/4, H/4, W/4), and the frozen SAM neck
   (per slice) on stage 3, each through a trainable 3D neck (1x1x1 conv, GroupNorm, 3x3x3 conv, GroupNorm) to
   ``neck_channels``.
5. **Automatic prompt generator** (APG): a small MONAI 3D U-Net on the shallowest level produces a dense prompt
   embedding (``neck_channels``) that replaces that level in the decoder input (AutoProSAM feeds its APG output
   into the decoder in place of the block-3 level the same way).
6. **Decoder** (3DSAM-adapter's multi-level aggregation, narrower): per level two 3x3x3 conv + InstanceNorm +
   ReLU, trilinear upsampling to the D/2 grid, concatenation with the image at that grid, conv, 1x1x1 conv to K,
   trilinear x2 to the patch.

Trainable: depth merges and embedding, depth biases, 3D adapters, (optionally) the blocks' LayerNorms, necks, APG,
decoder. The frozen backbone lives under ``encoder.backbone`` with the base model's own keys and is never saved
with a checkpoint (``trainable_state_dict``); it stays in eval mode (its BatchNorms keep their statistics).
SAM ViT backbones are not supported here (LiteMedSAM is the realistic backbone on this hardware).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from .tiny_vit import AttentionStage, ConvStage, TinyViT, TinyViTBlock

PATCH_MULTIPLE = 8  # stem /2 + stage merge /2 in-plane, depth merges /4 and the APG U-Net's two /2 on the D/2 grid


@dataclasses.dataclass
class AutoProSAMConfig:
    """Architecture settings (the card stores them; the same values rebuild the network).

    ``patch_size`` (D, H, W): training patch and sliding window; multiples of 8. 64 x 128 x 128 fits a 24 GB GPU
    at LiteMedSAM scale with batch 2 in bf16; use ``gradient_checkpointing`` for bigger patches or batches.
    ``depth_window``: tokens along depth per attention window (in-plane: each block's own window).
    """

    patch_size: tuple[int, int, int] = (64, 128, 128)
    depth_window: int = 4
    adapter_ratio: float = 0.25
    neck_channels: int = 64
    decoder_channels: int = 32
    apg_channels: tuple[int, ...] = (32, 64, 128)
    train_norms: bool = True
    gradient_checkpointing: bool = False
    stem_chunk: int = 16

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(v) for v in self.patch_size)  # type: ignore[assignment]
        self.apg_channels = tuple(int(v) for v in self.apg_channels)
        if len(self.patch_size) != 3 or any(v < PATCH_MULTIPLE or v % PATCH_MULTIPLE for v in self.patch_size):
            raise InputError(f"patch_size must be 3 multiples of {PATCH_MULTIPLE} (D, H, W), got {self.patch_size}")
        if self.depth_window < 1 or not 0 < self.adapter_ratio <= 1 or len(self.apg_channels) < 2:
            raise InputError("depth_window >= 1, adapter_ratio in (0, 1] and >= 2 APG levels are required")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["patch_size"], out["apg_channels"] = list(self.patch_size), list(self.apg_channels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AutoProSAMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------------------------------------- building blocks
def _groups(channels: int) -> int:
    return 8 if channels % 8 == 0 else 1


class DepthMerge(nn.Module):
    """Depthwise Conv3d merging 2 consecutive slices into one token layer; starts as their mean."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (2, 1, 1), stride=(2, 1, 1), groups=channels)
        with torch.no_grad():
            self.conv.weight.fill_(0.5)
            self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, D, H, W) -> (B, C, D/2, H, W)."""
        return self.conv(x)


class Adapter3D(nn.Module):
    """Pre-block adapter on (B, D, H, W, C): bottleneck with a depthwise 3x3x3 conv, residual, zero-init output."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        hidden = max(4, int(round(channels * ratio)))
        self.down = nn.Linear(channels, hidden)
        self.conv = nn.Conv3d(hidden, hidden, 3, padding=1, groups=hidden)
        self.up = nn.Linear(hidden, channels)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.down(x)).permute(0, 4, 1, 2, 3)
        h = F.gelu(self.conv(h)).permute(0, 2, 3, 4, 1)
        return x + self.up(h)


def _pad_to(x: Tensor, window: tuple[int, int, int]) -> Tensor:
    """Zero-pad (B, D, H, W, C) at the end of D, H, W to multiples of ``window`` (TinyViT pads windows the same)."""
    pads = [(-s) % w for s, w in zip(x.shape[1:4], window)]
    return F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0])) if any(pads) else x


class Block3D(nn.Module):
    """A frozen ``TinyViTBlock`` applied to 3D token grids (see the module docstring, step 3)."""

    def __init__(self, block: TinyViTBlock, depth_window: int, adapter_ratio: float) -> None:
        super().__init__()
        # a plain reference, not a submodule: the tensors belong to (and are saved / moved with) encoder.backbone
        object.__setattr__(self, "block", block)
        dim = block.attn.qkv.in_features
        self.adapter = Adapter3D(dim, adapter_ratio)
        self.depth_bias = nn.Parameter(torch.zeros(block.attn.num_heads, depth_window))
        self.window = (int(depth_window), block.window, block.window)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, H, W, C) -> same."""
        x = self.adapter(x)
        x = x + self._attention(x)
        b, d, h, w, c = x.shape
        flat = x.reshape(b * d, h, w, c).permute(0, 3, 1, 2)
        x = self.block.local_conv(flat).permute(0, 2, 3, 1).reshape(b, d, h, w, c)
        return x + self.block.mlp(x)

    def _bias(self, dtype: torch.dtype) -> Tensor:
        """(heads, N, N) bias over a window's tokens (z-major): in-plane table of the 2D block + depth table."""
        attn = self.block.attn
        wd, plane = self.window[0], self.window[1] * self.window[2]
        in_plane = attn.attention_biases[:, attn.attention_bias_idxs].repeat(1, wd, wd)
        z = torch.arange(wd, device=in_plane.device)
        dz = (z[:, None] - z[None, :]).abs().repeat_interleave(plane, 0).repeat_interleave(plane, 1)
        return (in_plane + self.depth_bias[:, dz]).to(dtype)

    def _attention(self, x: Tensor) -> Tensor:
        attn = self.block.attn
        b, d, h, w, c = x.shape
        wd, wh, ww = self.window
        padded = _pad_to(x, self.window)
        pd, ph, pw = padded.shape[1:4]
        win = padded.view(b, pd // wd, wd, ph // wh, wh, pw // ww, ww, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        win = win.reshape(-1, wd * wh * ww, c)
        n = win.shape[1]
        qkv = attn.qkv(attn.norm(win)).view(-1, n, attn.num_heads, 3 * attn.head_dim).transpose(1, 2)
        q, k, v = qkv.split(attn.head_dim, dim=-1)  # TinyViT's per-head [q, k, v] layout
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._bias(q.dtype))
        out = attn.proj(out.transpose(1, 2).reshape(-1, n, c))
        out = out.view(b, pd // wd, ph // wh, pw // ww, wd, wh, ww, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
        return out.reshape(b, pd, ph, pw, c)[:, :d, :h, :w]


class Neck3D(nn.Sequential):
    """1x1x1 conv, GroupNorm, 3x3x3 conv, GroupNorm: one encoder level -> ``out`` channels."""

    def __init__(self, cin: int, out: int) -> None:
        super().__init__(nn.Conv3d(cin, out, 1, bias=False), nn.GroupNorm(_groups(out), out),
                         nn.Conv3d(out, out, 3, padding=1, bias=False), nn.GroupNorm(_groups(out), out))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm3d(cout, affine=True),
                         nn.ReLU(inplace=True))


class PromptGenerator3D(nn.Module):
    """Automatic prompt generator: a small MONAI 3D U-Net, level feature -> dense prompt embedding (same size)."""

    def __init__(self, channels: int, levels: Sequence[int]) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.net = UNet(spatial_dims=3, in_channels=channels, out_channels=channels, channels=tuple(levels),
                        strides=(2,) * (len(levels) - 1), num_res_units=1, norm="instance")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLADecoder3D(nn.Module):
    """Multi-level aggregation: every level -> 2 convs -> D/2 grid, + image, -> conv -> K logits -> x2."""

    def __init__(self, level_channels: int, levels: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(_conv_block(level_channels, channels), _conv_block(channels, channels))
            for _ in range(levels))
        self.fuse = _conv_block(levels * channels + 1, channels)
        self.classifier = nn.Conv3d(channels, num_classes, 1)

    def forward(self, levels: Sequence[Tensor], image: Tensor) -> Tensor:
        grid = levels[0].shape[2:]
        feats = [F.interpolate(branch(x), size=grid, mode="trilinear", align_corners=False)
                 if x.shape[2:] != grid else branch(x) for branch, x in zip(self.branches, levels)]
        small = F.interpolate(image, size=grid, mode="trilinear", align_corners=False)
        logits = self.classifier(self.fuse(torch.cat([*feats, small.to(feats[0].dtype)], dim=1)))
        return F.interpolate(logits, size=image.shape[2:], mode="trilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------- encoder
class VolumeEncoder(nn.Module):
    """TinyViT adapted to volumes (module docstring, steps 1-4): (B, 1, D, H, W) in [0, 1] -> 4 level maps."""

    def __init__(self, backbone: TinyViT, config: AutoProSAMConfig) -> None:
        super().__init__()
        if not isinstance(backbone, TinyViT) or not isinstance(backbone.layers[0], ConvStage):
            raise InputError("AutoProSAM needs a TinyViT (LiteMedSAM) image encoder; SAM ViT is not supported")
        self.backbone = backbone
        self.config = config
        stages: list[AttentionStage] = list(backbone.layers[1:])
        stem_dim = stages[0].blocks[0].attn.qkv.in_features
        self.stem_merge = DepthMerge(stem_dim)
        self.depth_embed = nn.Parameter(torch.zeros(1, stem_dim, config.patch_size[0] // 2))
        self.blocks = nn.ModuleList(
            nn.ModuleList(Block3D(b, config.depth_window, config.adapter_ratio) for b in stage.blocks)
            for stage in stages)
        self.merges = nn.ModuleList(
            DepthMerge(s.downsample.conv3.c.out_channels) if _merge_stride(s) == 2 else nn.Identity()
            for s in stages)
        dims = [s.blocks[0].attn.qkv.in_features for s in stages]
        neck_out = backbone.neck[0].out_channels
        self.level_channels = [dims[0], dims[1], dims[-1], neck_out]
        self.necks = nn.ModuleList(Neck3D(c, config.neck_channels) for c in self.level_channels)

    def forward(self, image: Tensor) -> list[Tensor]:
        x = self._stem(image)  # (B, C, D/2, H/2, W/2)
        x = x + _resample_depth(self.depth_embed, x.shape[2]).unsqueeze(-1).unsqueeze(-1).to(x.dtype)
        x = x.permute(0, 2, 3, 4, 1)  # channels last
        levels = []
        for blocks, stage, merge in zip(self.blocks, self.backbone.layers[1:], self.merges):
            for block in blocks:
                x = self._run(block, x)
            levels.append(x.permute(0, 4, 1, 2, 3))
            if stage.downsample is not None:
                x = merge(_per_slice(stage.downsample, levels[-1])).permute(0, 2, 3, 4, 1)
        neck = _per_slice(self.backbone.neck, levels[-1])
        features = [levels[0], levels[1], levels[-1], neck]
        return [n(f) for n, f in zip(self.necks, features)]

    def _stem(self, image: Tensor) -> Tensor:
        """Frozen per-slice patch embedding + conv stage, no gradient, in chunks of slices; then the depth merge."""
        b, _, d, h, w = image.shape
        slices = image.permute(0, 2, 1, 3, 4).reshape(b * d, 1, h, w).expand(-1, 3, -1, -1)
        with torch.no_grad():
            parts = [self.backbone.layers[0](self.backbone.patch_embed(chunk))
                     for chunk in slices.split(self.config.stem_chunk)]
        x = torch.cat(parts)
        x = x.view(b, d, *x.shape[1:]).permute(0, 2, 1, 3, 4)
        return self.stem_merge(x.contiguous())

    def _run(self, block: Block3D, x: Tensor) -> Tensor:
        if self.config.gradient_checkpointing and torch.is_grad_enabled() and self.training:
            return checkpoint(block, x, use_reentrant=False)
        return block(x)


def _merge_stride(stage: AttentionStage) -> int:
    return 1 if stage.downsample is None else int(stage.downsample.conv2.c.stride[0])


def _per_slice(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2D module (NCHW -> NCHW) to every depth slice of (B, C, D, H, W)."""
    b, c, d, h, w = x.shape
    y = module(x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w))
    return y.view(b, d, *y.shape[1:]).permute(0, 2, 1, 3, 4)


def _resample_depth(embed: Tensor, depth: int) -> Tensor:
    """(1, C, n) -> (1, C, depth), linear, so a patch of another depth still gets a position embedding."""
    return embed if embed.shape[-1] == depth else F.interpolate(embed, size=depth, mode="linear",
                                                                  align_corners=False)


# ---------------------------------------------------------------------------------------------- the network
class AutoProSAM(nn.Module):
    """Volume encoder + automatic prompt generator + multi-level decoder: (B, 1, D, H, W) -> (B, K, D, H, W)."""

    def __init__(self, backbone: TinyViT, num_classes: int, config: AutoProSAMConfig | None = None) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise InputError(f"need background + at least one class, got {num_classes} classes")
        self.config = config or AutoProSAMConfig()
        self.num_classes = int(num_classes)
        self.encoder = VolumeEncoder(backbone, self.config)
        c = self.config.neck_channels
        self.prompt_generator = PromptGenerator3D(c, self.config.apg_channels)
        self.decoder = MLADecoder3D(c, 4, self.config.decoder_channels, self.num_classes)
        self.configure_trainable()

    def forward(self, image: Tensor) -> Tensor:
        if image.ndim != 5 or image.shape[1] != 1:
            raise InputError(f"AutoProSAM expects (B, 1, D, H, W) patches, got {tuple(image.shape)}")
        bad = [s for s in image.shape[2:] if s % PATCH_MULTIPLE]
        if bad:
            raise InputError(f"patch sides must be multiples of {PATCH_MULTIPLE}, got {tuple(image.shape[2:])}")
        levels = self.encoder(image)
        levels[0] = self.prompt_generator(levels[0])  # dense prompt in place of the shallowest level
        return self.decoder(levels, image)

    def configure_trainable(self) -> int:
        """Freeze the backbone (except LayerNorms with ``train_norms``), train everything new; returns the count."""
        for name, p in self.named_parameters():
            p.requires_grad_(is_trainable_name(name, self.config.train_norms))
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> "AutoProSAM":
        super().train(mode)
        self.encoder.backbone.eval()  # frozen BatchNorm statistics, no drop path
        return self

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The tensors a checkpoint holds: everything new + the trained backbone norms, never the frozen backbone."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith("encoder.backbone.") or is_trainable_name(k, self.config.train_norms)}

    def load_trainable(self, tensors: dict[str, Tensor]) -> None:
        """Strictly load what ``trainable_state_dict`` saved (missing or unexpected keys -> InputError)."""
        own = self.trainable_state_dict()
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise InputError(f"AutoProSAM tensors do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.load_state_dict(tensors, strict=False)


def is_trainable_name(name: str, train_norms: bool = True) -> bool:
    """Trainable-parameter policy by name: everything outside ``encoder.backbone.`` (new parts), plus the
    attention / MLP LayerNorms of the backbone blocks with ``train_norms`` (3DSAM-adapter trains its norms)."""
    if not name.startswith("encoder.backbone."):
        return True
    return train_norms and (".attn.norm." in name or ".mlp.norm." in name)


def build_autoprosam(base_model: nn.Module, num_classes: int, config: AutoProSAMConfig | None = None) -> AutoProSAM:
    """An AutoProSAM on a copy of ``base_model.image_encoder`` (training its norms must not change the base model
    other code holds); the new parts are randomly initialised (seed the global RNG first for a repeatable run)."""
    return AutoProSAM(copy.deepcopy(base_model.image_encoder), num_classes, config)
