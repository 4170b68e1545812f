"""LoRA on the encoder's attention ``qkv`` (q and v, not k, by default) and MLP linears (Med-SA ``sam_lora``).

:class:`LoRALinear` adopts the wrapped Linear's ``weight`` / ``bias`` Parameters under the same names, so base
keys (``blocks.0.attn.qkv.weight``) are unchanged; LoRA tensors are ``...qkv.peft_lora_A`` / ``peft_lora_B``.
Each enabled part p of the output (q rows, v rows, or all rows of an MLP linear) has its own rank-r pair:
``y = x W^T + b``, then ``y[rows_p] += (alpha / r) * x A_p^T B_p^T``; disabled rows (k) get nothing.
A is Kaiming-uniform, B zero, so LoRA starts as an exact identity (as loralib's MergedLinear).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError
from ..tiny_vit import TinyViTBlock, WindowAttention
from .adapters import MEDSA_BLOCKS, sam_block_class

LORA_TARGETS = ("qkv_q", "qkv_k", "qkv_v", "proj", "mlp")


class LoRALinear(nn.Module):
    """A Linear plus low-rank updates on selected output rows; forward = base + scale * low-rank delta."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 1.0,
                 parts: Sequence[Tensor] | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise InputError(f"LoRA rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # same Parameter objects -> same state-dict keys
        parts = list(parts) if parts else [torch.arange(self.out_features)]
        if len({len(p) for p in parts}) != 1:
            raise InputError("LoRA parts must have equal sizes")
        self.rank, self.scale = rank, alpha / rank
        self.register_buffer("lora_rows", torch.cat(parts).to(base.weight.device), persistent=False)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.peft_lora_A = nn.Parameter(torch.empty(len(parts), rank, self.in_features, **kw))
        self.peft_lora_B = nn.Parameter(torch.zeros(len(parts), len(parts[0]), rank, **kw))
        for a in self.peft_lora_A.data:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        low = torch.einsum("...i,pri->...pr", x, self.peft_lora_A)
        delta = torch.einsum("...pr,por->...po", low, self.peft_lora_B).flatten(-2)
        return out.index_add(-1, self.lora_rows, delta, alpha=self.scale)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale:g}, "
                f"rows={self.lora_rows.numel()}")


def qkv_rows(attn: nn.Module, dim: int) -> dict[str, Tensor]:
    """Output rows of the fused qkv Linear for q, k and v.

    SAM ``Attention`` reshapes to (3, heads, head_dim): rows [q | k | v]. TinyViT ``WindowAttention`` reshapes
    to (heads, 3 * head_dim): per head [q_h, k_h, v_h].
    """
    if isinstance(attn, WindowAttention):
        heads, hd = attn.num_heads, attn.head_dim
        base = torch.arange(heads)[:, None] * 3 * hd + torch.arange(hd)[None, :]
        return {n: (base + i * hd).flatten() for i, n in enumerate("qkv")}
    return {n: torch.arange(i * dim, (i + 1) * dim) for i, n in enumerate("qkv")}


def _mlp_linears(mlp: nn.Module) -> list[str]:
    names = [n for n in ("lin1", "lin2", "fc1", "fc2") if isinstance(getattr(mlp, n, None), nn.Linear)]
    if not names:
        raise InputError(f"cannot find the MLP linears of {type(mlp).__name__} for LoRA")
    return names


def _lora_block(block: nn.Module, rank: int, alpha: float, targets: set[str]) -> None:
    attn = block.attn
    qkv = attn.qkv
    if not isinstance(qkv, nn.Linear):
        raise InputError(f"{type(block).__name__} already has LoRA (or an unknown qkv layer)")
    rows = qkv_rows(attn, qkv.in_features)
    parts = [rows[n] for n in "qkv" if f"qkv_{n}" in targets]
    if parts:
        attn.qkv = LoRALinear(qkv, rank, alpha, parts)
    if "proj" in targets:
        attn.proj = LoRALinear(attn.proj, rank, alpha)
    if "mlp" in targets:
        for name in _mlp_linears(block.mlp):
            setattr(block.mlp, name, LoRALinear(getattr(block.mlp, name), rank, alpha))


def apply_lora(model: nn.Module, rank: int = 4, alpha: float = 1.0,
               targets: Sequence[str] = ("qkv_q", "qkv_v", "mlp")) -> nn.Module:
    """LoRA on every attention block of the image encoder (SAM ViT blocks, TinyViT stages 1+); returns ``model``.

    Works before or after :func:`~.surgery.apply_medsa` (its blocks keep ``attn`` / ``mlp``).
    """
    unknown = set(targets) - set(LORA_TARGETS)
    if unknown or not targets:
        raise InputError(f"LoRA targets must be a non-empty subset of {LORA_TARGETS}; got {tuple(targets)}")
    root = getattr(model, "image_encoder", model)
    kinds = (sam_block_class(), TinyViTBlock, *MEDSA_BLOCKS)
    blocks = [m for m in root.modules() if isinstance(m, kinds)]
    if not blocks:
        raise InputError(f"no SAM ViT or TinyViT attention blocks found in {type(root).__name__}")
    for block in blocks:
        _lora_block(block, rank, alpha, set(targets))
    return model
