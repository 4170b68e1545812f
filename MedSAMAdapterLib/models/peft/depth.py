"""SD-Trans (Med-SA's space-depth transpose): the block's own attention applied along the slice axis.

A batch of ``B*D`` slices (D consecutive slices per volume) is regrouped into one length-D sequence per spatial
position, laid out on a near-square ``dh x dw`` grid so the 2D relative-position machinery of the attention
applies, and run through the *same* attention module (shared weights).

- SAM ``Attention``: called on ``(B*H*W, dh, dw, C)``; segment-anything's ``get_rel_pos`` linearly resizes the
  ``rel_pos_h`` / ``rel_pos_w`` tables to ``2*dh-1`` / ``2*dw-1`` rows whenever the sizes differ.
- TinyViT ``WindowAttention``: its bias table is indexed by ``(|dy|, |dx|)`` offsets inside a window; the depth
  grid uses the same table with offsets clamped to ``window - 1`` (farther offsets share the farthest bias).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError


def near_square(d: int) -> tuple[int, int]:
    """``(dh, dw)`` with ``dh * dw == d``, ``dh <= dw``, closest to sqrt(d): 96 -> (8, 12), 16 -> (4, 4)."""
    if d < 1:
        raise InputError(f"depth chunk must be >= 1, got {d}")
    dh = max(f for f in range(1, math.isqrt(d) + 1) if d % f == 0)
    return dh, d // dh


def slices_to_depth(x: Tensor, d: int) -> Tensor:
    """(B*D, H, W, C) -> (B*H*W, D, C): one sequence along depth per spatial position."""
    bd, h, w, c = x.shape
    if d < 1 or bd % d:
        raise InputError(f"SD-Trans needs a batch of whole {d}-slice chunks; got {bd} slices "
                         f"(set the chunk with set_depth_chunk or pad the volume)")
    return x.reshape(bd // d, d, h, w, c).permute(0, 2, 3, 1, 4).reshape(-1, d, c)


def depth_to_slices(x: Tensor, d: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`slices_to_depth`: (B*H*W, D, C) (or any (..., D, C) reshapeable) -> (B*D, H, W, C)."""
    c = x.shape[-1]
    return x.reshape(-1, h, w, d, c).permute(0, 3, 1, 2, 4).reshape(-1, h, w, c)


def sam_depth_attention(attn: nn.Module, xn: Tensor, d: int) -> Tensor:
    """Shared SAM attention along depth on normalised tokens ``xn`` (B*D, H, W, C) -> (B*H*W, D, C)."""
    seq = slices_to_depth(xn, d)
    dh, dw = near_square(d)
    return attn(seq.reshape(-1, dh, dw, seq.shape[-1])).reshape(seq.shape)


def tinyvit_depth_bias(attn: nn.Module, dh: int, dw: int) -> Tensor:
    """(heads, D, D) attention bias for a ``dh x dw`` depth grid from TinyViT's (heads, w*w) offset table."""
    w = int(attn.window)
    ys, xs = torch.meshgrid(torch.arange(dh), torch.arange(dw), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = (ys[:, None] - ys[None, :]).abs().clamp(max=w - 1)
    dx = (xs[:, None] - xs[None, :]).abs().clamp(max=w - 1)
    idx = (dy * w + dx).to(attn.attention_biases.device)
    return attn.attention_biases[:, idx]


def tinyvit_depth_attention(attn: nn.Module, x: Tensor, d: int) -> Tensor:
    """Shared TinyViT attention along depth on un-normalised tokens x (B*D, H, W, C) -> (B*H*W, D, C).

    Mirrors ``tiny_vit.WindowAttention.forward`` (its own LayerNorm, per-head [q, k, v] layout) with the
    depth-grid bias instead of the window bias.
    """
    seq = slices_to_depth(x, d)
    b, n, c = seq.shape
    qkv = attn.qkv(attn.norm(seq)).view(b, n, attn.num_heads, 3 * attn.head_dim).transpose(1, 2)
    q, k, v = qkv.split(attn.head_dim, dim=-1)
    bias = tinyvit_depth_bias(attn, *near_square(d)).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))
