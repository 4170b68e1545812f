"""Pieces every training loop shares: progress events, device choice, optimiser parameter groups, the learning-rate
schedule, NaN-aware helpers and the resume-state file (atomic write, RNG capture).

Used by ``trainer`` (promptable PEFT fine-tuning), ``auto_train`` (2D prompt-free heads), ``autoprosam_train``
(volumetric AutoProSAM) and ``distill`` (student networks), so a schedule or an event means the same everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..engine.atomic import atomic_path
from ..errors import InputError


@dataclasses.dataclass
class TrainEvent:
    """A progress report. ``kind``: ``setup``, ``embed`` (done/total planes), ``step``, ``validation``,
    ``epoch`` (after the state is saved; ``metrics`` = the history entry), ``early_stop``, ``done``."""

    kind: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float | None = None
    lr: float | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    done: int = 0
    total: int = 0
    message: str = ""


ProgressCallback = Callable[[TrainEvent], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when visible, else CPU; an explicit CUDA device without a GPU is an ``InputError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for but no CUDA GPU is visible to torch")
    return torch.device(name)


def dice_np(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two binary arrays; both empty -> 1 (``evaluation.metrics`` convention)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, gt).sum()) / total


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters: no weight decay on biases, norms, embeddings and tokens."""
    decay, plain = [], []
    for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or any(k in name for k in ("norm", "embed", "token", "bias"))
        (plain if no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_lambda(warmup: int, total: int, floor: float) -> Callable[[int], float]:
    """Per-step factor for ``LambdaLR``: linear warm-up over ``warmup`` steps, then cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def finite_or_none(value: Any) -> Any:
    """NaN / inf floats (also inside dicts and lists) -> None, so the value is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def nanmean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    arr = np.asarray(list(values), np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# ---------------------------------------------------------------------------------------------- resume state
def rng_state() -> dict[str, Any]:
    """torch CPU (and CUDA) RNG states, for a resume that continues exactly."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file: an interrupted write never replaces the last good state."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, state_format: str, config: dict[str, Any], fixed: Iterable[str]) -> dict[str, Any]:
    """Read a resume state written by ``save_state``; refuses a foreign file or one whose ``fixed`` settings
    differ from ``config`` (they change what the saved tensors mean)."""
    if not path.is_file():
        raise InputError(f"nothing to resume: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise InputError(f"cannot read the training state {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != state_format:
        raise InputError(f"{path} is not a medsam-adapter training state")
    saved = state["config"]
    changed = [k for k in fixed if saved.get(k) != config.get(k)]
    if changed:
        raise InputError(f"cannot resume {path}: settings changed since it was saved: "
                         + ", ".join(f"{k} {saved.get(k)!r} -> {config.get(k)!r}" for k in changed))
    return state


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each encoder attention block in the backward pass (less memory, ~30 % more compute).

    Wraps the ``forward`` of every TinyViT / SAM ViT / Med-SA block instance (the model's files and state dict
    are untouched); only active while gradients are being recorded. Returns the number of blocks wrapped.
    """
    from torch.utils.checkpoint import checkpoint

    from ..models.peft.adapters import MEDSA_BLOCKS, sam_block_class
    from ..models.tiny_vit import TinyViTBlock

    kinds = (*MEDSA_BLOCKS, TinyViTBlock, sam_block_class())
    count = 0
    for module in model.image_encoder.modules():
        if isinstance(module, kinds) and not getattr(module, "_medsam_checkpointed", False):
            original = module.forward

            def forward(x: torch.Tensor, _f: Callable[[torch.Tensor], torch.Tensor] = original) -> torch.Tensor:
                if torch.is_grad_enabled():
                    return checkpoint(_f, x, use_reentrant=False)
                return _f(x)

            module.forward = forward
            module._medsam_checkpointed = True
            count += 1
    return count
