"""TinyViT image encoder (the LiteMedSAM / MobileSAM variant), written in plain torch.

Module names reproduce the state-dict keys of ``lite_medsam.pth`` (``patch_embed.seq.0.c.weight``,
``layers.1.blocks.0.attn.qkv.weight``, ``neck.0.weight``...) so the checkpoint loads with ``strict=True``.

Stage layout for a ``S x S`` input (LiteMedSAM: S=256, patch-embed stride 1):

    patch_embed (stride p)  ->  stage 0: MBConv blocks           at S/p
    merge (stride 2)        ->  stage 1: TinyViT blocks          at S/(2p)
    merge (stride 2)        ->  stage 2: TinyViT blocks          at S/(4p)
    merge (stride 1)        ->  stage 3: TinyViT blocks          at S/(4p)   (SAM keeps the last merge at stride 1)
    neck (1x1 conv, LN2d, 3x3 conv, LN2d)  ->  (B, 256, S/(4p), S/(4p))

The LiteMedSAM checkpoint has 1x1 patch-embedding convolutions (``seq.0.c.weight`` is (32, 3, 1, 1)), so its
patch embedding keeps the resolution (p=1) and a 256^2 image gives a 64x64 embedding. ``patch_stride=2`` gives the
original MobileSAM stem (two 3x3 stride-2 convolutions, p=4) for 1024^2 inputs.

TinyViT blocks run on channels-last maps ``(B, H, W, C)``; they expose ``attn``, ``mlp`` and ``local_conv`` so
PEFT adapters can wrap them: ``attn`` maps window tokens ``(B*nW, w*w, C) -> same``, ``mlp`` maps ``(..., C)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training (identity in eval)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvBN(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d, named ``c`` / ``bn`` as in the checkpoint."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 bn_weight: float = 1.0) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))
        nn.init.constant_(self.bn.weight, bn_weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        """In eval mode, fold BN into the conv weights on the fly (~10% faster encode on CPU, same keys).

        Only for a plain Conv2d + BatchNorm2d, so a submodule swapped by an adapter is never bypassed.
        """
        c, bn = self.c, self.bn
        if self.training or type(c) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d or bn.running_var is None:
            return super().forward(x)
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return F.conv2d(x, c.weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale,
                        c.stride, c.padding, c.dilation, c.groups)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map (SAM's neck normalisation, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    """Convolutional stem: ConvBN -> GELU -> ConvBN to ``embed_dim`` channels (keys ``seq.0``, ``seq.2``)."""

    def __init__(self, in_chans: int, embed_dim: int, stride: int = 1) -> None:
        super().__init__()
        kernel = 1 if stride == 1 else 3
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, kernel, stride),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, kernel, stride),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU (NCHW in and out)."""

    def __init__(self, dim: int, expand_ratio: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim, 1, bn_weight=0.0)  # zero-init: block starts as identity
        self.act3 = nn.GELU()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(x + self.drop_path(self.conv3(y)))


class PatchMerging(nn.Module):
    """Channel change + optional 2x downsampling between stages: 1x1, GELU, 3x3 depthwise, GELU, 1x1."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim, 1)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        """NCHW -> NCHW."""
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


def _relative_offset_index(window: int) -> Tensor:
    """(w*w, w*w) index into the bias table: offset (|dy|, |dx|) -> |dy| * w + |dx|.

    This is the order in which TinyViT enumerates distinct offsets, so the checkpoint's table lines up.
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()


class WindowAttention(nn.Module):
    """Multi-head self-attention over the tokens of one window, with a learned bias per (head, offset).

    ``qkv`` output is laid out per head as [q, k, v] (TinyViT convention), not as [all q, all k, all v].
    The LayerNorm lives inside (``attn.norm``) as in the checkpoint.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", _relative_offset_index(window), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B', N, C) -> (B', N, C) with N = window**2."""
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        # explicit softmax attention: windows are small (<= 196 tokens) and on CPU this beats SDPA with a float mask
        attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1) + self.attention_biases[:, self.attention_bias_idxs]
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Pre-norm two-layer MLP (``mlp.norm``, ``mlp.fc1``, ``mlp.fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def window_partition(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B*nW, window*window, C), zero-padding bottom/right; also returns the padded (H, W).

    The padding is applied before the attention's LayerNorm, exactly like the reference, so padded
    tokens take part in attention the same way (needed to reproduce the checkpoint's outputs).
    """
    b, h, w, c = x.shape
    ph, pw = -h % window, -w % window
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c), (hp, wp)


def window_unpartition(x: Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`, cropping the padding away."""
    hp, wp = padded
    b = x.shape[0] // ((hp // window) * (wp // window))
    x = x.view(b, hp // window, wp // window, window, window, -1).transpose(2, 3).reshape(b, hp, wp, -1)
    return x[:, : size[0], : size[1]].contiguous()


class TinyViTBlock(nn.Module):
    """Windowed attention + residual, 3x3 depthwise ``local_conv``, MLP + residual; on (B, H, W, C) maps."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, local_conv_size: int = 3) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[1:3]
        windows, padded = window_partition(x, self.window)
        x = x + self.drop_path(window_unpartition(self.attn(windows), self.window, padded, (h, w)))
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.mlp(x))


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks then the patch merging into stage 1 (keys ``blocks.*``, ``downsample``)."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, drop_paths: Sequence[float],
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio, drop_paths[i]) for i in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """NCHW -> NCHW."""
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class AttentionStage(nn.Module):
    """Stages 1..n: TinyViT blocks (channels-last) then the optional patch merging (NCHW in and out)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 local_conv_size: int, drop_paths: Sequence[float], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window, mlp_ratio, drop_paths[i], local_conv_size) for i in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT encoder producing SAM image embeddings ``(B, out_chans, S/(4p), S/(4p))``.

    Defaults are the LiteMedSAM configuration (9.8M-parameter model with its decoder).
    """

    def __init__(self, img_size: int = 256, in_chans: int = 3,
                 embed_dims: Sequence[int] = (64, 128, 160, 320), depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (2, 4, 5, 10), window_sizes: Sequence[int] = (7, 7, 14, 7),
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, mbconv_expand_ratio: float = 4.0,
                 local_conv_size: int = 3, out_chans: int = 256, patch_stride: int = 1) -> None:
        super().__init__()
        n = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(window_sizes) == n) or n < 2:
            raise ValueError("embed_dims, depths, num_heads and window_sizes need the same length (>= 2)")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], patch_stride)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i in range(n):
            paths = rates[sum(depths[:i]): sum(depths[: i + 1])]
            merge = None
            if i < n - 1:  # the merge into the last stage keeps the resolution (SAM needs S/4p at the end)
                merge = PatchMerging(embed_dims[i], embed_dims[i + 1], stride=1 if i == n - 2 else 2)
            if i == 0:
                self.layers.append(ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, paths, merge))
            else:
                self.layers.append(AttentionStage(embed_dims[i], depths[i], num_heads[i], window_sizes[i],
                                                  mlp_ratio, local_conv_size, paths, merge))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))  # ~20% faster convs on CPU
        for layer in self.layers:
            x = layer(x)
        return self.neck(x).contiguous()  # plain NCHW for callers that .view() or cache the embedding


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal linears, unit LayerNorms: only matters for training from scratch and the tiny test model."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
