"""Adapter checkpoints: ``<stem>.safetensors`` (tensors) + ``<stem>.json`` (model card).

The safetensors file holds only the PEFT tensors plus the base tensors the recipe trains (e.g. the mask decoder
for ``medsa``), never the frozen base; the card says which base model (registry name + sha256) they belong to and the
:class:`~.peft.PeftConfig` that re-creates the surgery, so an adapter is never applied to the wrong base.
The card stores the sha256 of the tensors file; both files are written atomically, tensors first.
Removing an adapter from a running model = loading the base model again (``registry.load_model``).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from .. import __version__
from ..engine.atomic import atomic_path, write_text_atomic
from ..errors import InputError, MedSAMAdapterError, WeightsError
from .peft import PeftConfig, adapter_state_dict, apply_peft, load_adapter_state_dict, trainable_names
from .peft.policy import check_recipe

CARD_FORMAT = "medsam-adapter/peft-adapter"
CARD_VERSION = 1


def adapter_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(``<stem>.safetensors``, ``<stem>.json``) for ``path`` given with or without either suffix."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def file_digest(path: Path) -> str:
    """Not memoised (unlike ``registry.file_sha256``): adapter files are small and may be rewritten in place."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def base_identity(model: nn.Module) -> tuple[str, str]:
    """(registry name, sha256) of the base weights of ``model`` (before any surgery)."""
    from .registry import state_dict_sha256

    name = model.spec.name
    if getattr(model, "peft_config", None) is not None:
        return name, model.peft_base_sha256
    return name, getattr(model, "weights_sha256", None) or state_dict_sha256(model)


def save_adapter(path: str | os.PathLike, model: nn.Module, recipe: str, base_model_name: str | None = None,
                 base_sha256: str | None = None, config: dict | None = None, data: dict | None = None,
                 metrics: dict | None = None) -> Path:
    """Write the adapter of a model prepared with ``apply_peft`` and trained with ``recipe``; returns the tensors path.

    The file holds every tensor the *surgery's* recipe (``model.peft_config.recipe``) trains, a superset of what
    ``recipe`` trains in staged training (e.g. ``decoder`` after ``medsa``), so the model is always reproduced.
    ``base_*`` default to the model's registry name and the base sha256 recorded by ``apply_peft`` (a different
    value is refused: the card must describe the weights the adapter was trained on). ``config`` (training
    settings), ``data`` (data set description) and ``metrics`` go to the card as given (JSON-serialisable).
    """
    peft = getattr(model, "peft_config", None)
    if peft is None:
        raise InputError("the model has no PEFT surgery (apply_peft) so there is no adapter to save")
    name, sha = base_identity(model)
    if (base_model_name or name) != name or (base_sha256 or sha) != sha:
        raise InputError(f"base model '{base_model_name}' (sha256 {base_sha256}) given, but this model was adapted "
                         f"from '{name}' (sha256 {sha})")
    trained = set(trainable_names(model, check_recipe(recipe)))  # also checks the recipe fits the surgery
    tensors = {k: v.cpu().contiguous() for k, v in adapter_state_dict(model, peft.recipe).items()}
    card: dict[str, Any] = {
        "format": CARD_FORMAT, "format_version": CARD_VERSION, "medsam_adapter_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": {"name": name, "sha256": sha}, "recipe": peft.recipe, "trained_recipe": recipe,
        "peft": peft.to_dict(),
        "parameters": {"trainable": sum(p.numel() for n, p in model.named_parameters() if n in trained),
                       "saved": sum(t.numel() for t in tensors.values()),
                       "model_total": sum(p.numel() for p in model.parameters())},
        "config": config or {}, "data": data or {}, "metrics": metrics or {},
    }
    try:
        json.dumps(card, default=_json_default)  # fail before writing anything
    except (TypeError, ValueError) as exc:
        raise InputError(f"adapter card is not JSON-serialisable: {exc}") from exc
    tensors_path, card_path = adapter_paths(path)
    from safetensors.torch import save_file

    with atomic_path(tensors_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CARD_FORMAT, "recipe": peft.recipe, "base_model": name,
                                               "base_sha256": sha})
        card["tensors"] = {"file": tensors_path.name, "sha256": file_digest(tmp), "count": len(tensors)}
    write_text_atomic(card_path, json.dumps(card, indent=2, default=_json_default) + "\n")
    return tensors_path


def read_json_card(card_path: Path, what: str, pairing: str) -> dict[str, Any]:
    """A JSON model card as a dict; missing, unreadable or not an object -> WeightsError naming ``what``."""
    if not card_path.is_file():
        raise WeightsError(f"{what} card {card_path} not found: {pairing}; both are needed")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{what} card {card_path} is unreadable: {exc}") from exc
    if not isinstance(card, dict):
        raise WeightsError(f"{card_path} is not a model card")
    return card


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The model card of an adapter; missing, unreadable or foreign -> WeightsError."""
    card_path = adapter_paths(path)[1]
    card = read_json_card(card_path, "adapter model",
                          "an adapter is <name>.safetensors plus the <name>.json card written by save_adapter")
    if card.get("format") != CARD_FORMAT:
        raise WeightsError(f"{card_path} is not a medsam-adapter adapter card")
    if int(card.get("format_version", 0)) > CARD_VERSION:
        raise WeightsError(f"{card_path} was written by a newer medsam-adapter (card format "
                           f"{card['format_version']}); upgrade to load it")
    return card


def read_checked_tensors(tensors_path: Path, card: dict[str, Any], what: str) -> dict:
    """The tensors of a card's ``.safetensors`` file after checking it exists and matches the card's sha256
    (missing, corrupt, truncated or replaced -> WeightsError). Shared by adapters and automatic models."""
    from .registry import read_state_dict

    if not tensors_path.is_file():
        raise WeightsError(f"{what} tensors {tensors_path} not found (its card exists)")
    actual, expected = file_digest(tensors_path), card.get("tensors", {}).get("sha256")
    if actual != expected:
        raise WeightsError(f"{what} tensors {tensors_path} have sha256 {actual} but the card expects {expected} "
                           f"(corrupt, truncated or replaced file)")
    return read_state_dict(tensors_path)


def _read_tensors(path: str | os.PathLike, card: dict[str, Any]) -> dict:
    return read_checked_tensors(adapter_paths(path)[0], card, "adapter")


def _check_base(model: nn.Module, card: dict[str, Any], path: str | os.PathLike) -> tuple[str, str]:
    name, sha = base_identity(model)
    want = card.get("base_model", {})
    if (want.get("name"), want.get("sha256")) != (name, sha):
        raise WeightsError(f"adapter {adapter_paths(path)[0]} was trained on base model '{want.get('name')}' "
                           f"(sha256 {want.get('sha256')}) but the model given is '{name}' (sha256 {sha}); "
                           f"load the adapter onto the base model it was trained on")
    return name, sha


def attach_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply the card's surgery to ``model`` (a base model, or one already carrying the *same* surgery, e.g. to
    swap adapters in a running session) and load the tensors strictly. Returns ``model``.

    ``weights_sha256`` becomes sha256(base sha256 + ":" + adapter sha256), so embedding caches keyed on
    ``registry.model_fingerprint`` never mix adapters.
    """
    card = read_card(path)
    tensors = _read_tensors(path, card)
    _, base_sha = _check_base(model, card, path)
    try:
        config = PeftConfig.from_dict(card["peft"])
    except (KeyError, TypeError, MedSAMAdapterError) as exc:
        raise WeightsError(f"adapter card {adapter_paths(path)[1]} has an invalid recipe / PEFT config: {exc}") from exc
    current = getattr(model, "peft_config", None)
    if current is None:
        apply_peft(model, config)
    elif current != config:
        raise InputError(f"the model already carries a different adapter surgery ({current.recipe}); reload the "
                         f"base model (registry.load_model) and attach {adapter_paths(path)[0].name} to it")
    load_adapter_state_dict(model, tensors, config.recipe)
    model.weights_sha256 = hashlib.sha256(f"{base_sha}:{card['tensors']['sha256']}".encode()).hexdigest()
    model.adapter_card = card
    return model


def load_adapter(path: str | os.PathLike, model_or_name: nn.Module | str,
                 weights: str | os.PathLike | None = None, device: str = "cpu") -> nn.Module:
    """Base model (a ``PromptableSam``, or a registry name loaded with ``weights``) + adapter, in eval mode.

    The card is checked before the base model is loaded, so a bad adapter fails fast.
    """
    card = read_card(path)
    _read_tensors(path, card)
    if isinstance(model_or_name, str):
        from .registry import load_model

        model_or_name = load_model(model_or_name, weights=weights, device=device)
    return attach_adapter(model_or_name, path).eval()


def store_adapter_as(path: str | os.PathLike, out: str | os.PathLike, dtype: str = "float16") -> Path:
    """Copy an adapter (tensors + card) with floating tensors stored as ``dtype``, e.g. to ship a recipe that
    trains the whole mask decoder at half the size. Loading casts back to the model's dtype; the card records
    ``storage_dtype`` and the new tensors' sha256 (so embedding caches keyed on the adapter do not mix)."""
    import torch
    from safetensors.torch import save_file

    card = read_card(path)
    tensors = _read_tensors(path, card)
    target = getattr(torch, dtype, None)
    if not isinstance(target, torch.dtype) or not target.is_floating_point:
        raise InputError(f"storage dtype must be a floating torch dtype name (float16, bfloat16...), not {dtype!r}")
    cast = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    tensors_path, card_path = adapter_paths(out)
    with atomic_path(tensors_path) as tmp:
        save_file(cast, str(tmp), metadata={"format": CARD_FORMAT, "recipe": card["recipe"],
                                             "base_model": card["base_model"]["name"],
                                             "base_sha256": card["base_model"]["sha256"]})
        card = {**card, "storage_dtype": dtype,
                "tensors": {"file": tensors_path.name, "sha256": file_digest(tmp), "count": len(cast)}}
    write_text_atomic(card_path, json.dumps(card, indent=2, default=_json_default) + "\n")
    return tensors_path
