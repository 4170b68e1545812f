"""One entry point for 'the model the user asked for': base weights plus an optional adapter.

CLI, evaluation, the Slicer logic and the web app all call ``open_model`` so they behave the same way.
"""

from __future__ import annotations

import os

from .promptable import PromptableSam
from .registry import load_model


def open_model(
    name: str,
    weights: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    device: str = "cpu",
) -> PromptableSam:
    """Frozen, eval-mode model ``name`` with ``adapter`` (a .safetensors + model card) attached if given."""
    model = load_model(name, weights=weights, device=device)
    if adapter is not None:
        from .checkpoints import attach_adapter

        model = attach_adapter(model, adapter).to(device)
    model.requires_grad_(False)
    return model.eval()
