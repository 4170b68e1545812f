"""Which parameters each training recipe unfreezes, and a parameter-count report.

Recipes (names refer to ``PromptableSam`` attributes; ``peft_*`` tensors come from surgery):

==========  ==============================================================================================
medsa       encoder adapters (space + MLP) + the *whole* mask decoder (incl. its HyP / decoder adapters)
            + prompt point embeddings. The whole decoder follows the released Med-SA code (always trains
            it); the paper's decoder adapters are included because the decoder is trainable anyway.
medsa-3d    medsa + the SD-Trans depth adapters.
lora        encoder LoRA (A, B) + the whole mask decoder + prompt point embeddings (Med-SA ``sam_lora``).
decoder     decoder adapters + HyP-Adpt + the decoder's output tokens (``iou_token``, ``mask_tokens``,
            1,280 values) + prompt point embeddings. Small enough to train per task on a laptop.
==========  ==============================================================================================

"Prompt point embeddings" = ``prompt_encoder.point_embeddings.*`` and ``prompt_encoder.not_a_point_embed``
(5 x 256 = 1,280 values): trained in every recipe (a deviation from Med-SA, which freezes the prompt encoder)
because LiteMedSAM was trained with boxes only, so its point / label embeddings never learned clicks.
Everything else, including all BatchNorm / LayerNorm parameters of the base model, stays frozen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from ...errors import InputError
from .adapters import is_peft_name

RECIPES = ("medsa", "medsa-3d", "lora", "decoder")
PROMPT_EMBEDDINGS = ("prompt_encoder.point_embeddings.", "prompt_encoder.not_a_point_embed.")
OUTPUT_TOKENS = ("mask_decoder.iou_token.", "mask_decoder.mask_tokens.")


def _peft_kind(name: str) -> str | None:
    """The ``peft_*`` component of a name (``peft_space``, ``peft_lora_A``...), None for base tensors."""
    return next((p for p in name.split(".") if p.startswith("peft_")), None)


def _encoder_peft(kinds: tuple[str, ...]) -> Callable[[str], bool]:
    return lambda n: n.startswith("image_encoder.") and (_peft_kind(n) or "").startswith(kinds)


def _decoder_peft(n: str) -> bool:
    return n.startswith("mask_decoder.") and is_peft_name(n)


_RULES: dict[str, tuple[Callable[[str], bool], ...]] = {
    "medsa": (_encoder_peft(("peft_space", "peft_mlp")), lambda n: n.startswith("mask_decoder.")),
    "medsa-3d": (_encoder_peft(("peft_space", "peft_mlp", "peft_depth")), lambda n: n.startswith("mask_decoder.")),
    "lora": (_encoder_peft(("peft_lora",)), lambda n: n.startswith("mask_decoder.")),
    "decoder": (_decoder_peft, lambda n: n.startswith(OUTPUT_TOKENS)),
}
#: The surgery each recipe needs (a parameter matching it must exist), for a clear error instead of a no-op.
_REQUIRED: dict[str, Callable[[str], bool]] = {
    "medsa": _encoder_peft(("peft_space",)),
    "medsa-3d": _encoder_peft(("peft_depth",)),
    "lora": _encoder_peft(("peft_lora",)),
    "decoder": _decoder_peft,
}


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise InputError(f"unknown PEFT recipe '{recipe}'; known: {', '.join(RECIPES)}")
    return recipe


def trainable_names(model: nn.Module, recipe: str) -> list[str]:
    """Parameter names ``recipe`` trains on ``model``; InputError when the recipe's surgery is missing."""
    rules = _RULES[check_recipe(recipe)] + (lambda n: n.startswith(PROMPT_EMBEDDINGS),)
    names = [n for n, _ in model.named_parameters()]
    if not any(map(_REQUIRED[recipe], names)):
        raise InputError(f"recipe '{recipe}' needs its surgery first: "
                         f"apply_peft(model, PeftConfig(recipe='{recipe}', ...))")
    return [n for n in names if any(rule(n) for rule in rules)]


@dataclasses.dataclass(frozen=True)
class ParameterReport:
    """Parameter counts: ``per_module`` maps ``<top module>/<base|peft>`` to (total, trainable)."""

    recipe: str
    total: int
    trainable: int
    per_module: dict[str, tuple[int, int]]

    def __str__(self) -> str:
        pct = 100.0 * self.trainable / max(self.total, 1)
        rows = [f"recipe '{self.recipe}': {self.trainable:,} of {self.total:,} parameters trainable ({pct:.2f}%)",
                f"{'module':<28}{'total':>14}{'trainable':>14}"]
        rows += [f"{k:<28}{t:>14,}{r:>14,}" for k, (t, r) in sorted(self.per_module.items())]
        return "\n".join(rows)


def parameter_report(model: nn.Module, recipe: str = "") -> ParameterReport:
    """Counts from the current ``requires_grad`` flags (shared parameters counted once)."""
    per: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        key = f"{name.split('.')[0]}/{'peft' if is_peft_name(name) else 'base'}"
        counts = per.setdefault(key, [0, 0])
        counts[0] += p.numel()
        counts[1] += p.numel() if p.requires_grad else 0
    total = sum(c[0] for c in per.values())
    trainable = sum(c[1] for c in per.values())
    return ParameterReport(recipe, total, trainable, {k: (c[0], c[1]) for k, c in per.items()})


def configure_trainable(model: nn.Module, recipe: str) -> ParameterReport:
    """Freeze every parameter, then unfreeze what ``recipe`` trains (see the module docstring)."""
    chosen = set(trainable_names(model, recipe))
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return parameter_report(model, recipe)


def set_peft_train_mode(model: nn.Module) -> nn.Module:
    """``model.train()`` but frozen BatchNorm layers stay in eval mode (their running stats are base weights)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
    return model
