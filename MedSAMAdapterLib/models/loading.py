"""One entry point for 'the model the user asked for': base weights plus an optional adapter.

CLI, evaluation, the Slicer logic and the web app all call ``open_model`` so they behave the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

from .promptable import PromptableSam
from .registry import get_spec, list_models, load_model

NO_ADAPTER = "none"


def resolve_adapter(name: str, adapter: str | os.PathLike | None) -> Path | None:
    """The adapter file ``open_model`` will attach: the explicit one, the shipped default, or None for 'none'."""
    if adapter is None:
        if name not in list_models():
            return None  # loading the unknown name fails next, with the list of known names
        default = get_spec(name).default_adapter_path
        return default if default is not None and default.exists() else None
    if str(adapter) == NO_ADAPTER:
        return None
    path = Path(adapter).expanduser()
    if not path.exists():
        raise InputError(f"adapter file {path} does not exist (use --adapter none for the plain base model)")
    return path


def open_model(
    name: str,
    weights: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    device: str = "cpu",
) -> PromptableSam:
    """Frozen, eval-mode model ``name`` with an adapter (a .safetensors + model card) attached.

    ``adapter=None`` takes the model's shipped default adapter when the registry names one (LiteMedSAM's click
    adapter, which makes point prompts work); ``adapter="none"`` gives the plain base model.
    """
    adapter = resolve_adapter(name, adapter)
    model = load_model(name, weights=weights, device=device)
    if adapter is not None:
        from .checkpoints import attach_adapter

        model = attach_adapter(model, adapter).to(device)
    model.requires_grad_(False)
    return model.eval()
