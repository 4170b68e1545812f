"""Volumetric automatic models (AutoProSAM, distilled UNet students): the bundle, its files, its inference.

A :class:`VolumetricAutoModel` maps a whole volume to a label map: the volume goes to [0, 1] through its intensity
policy (``volume_to_display_range`` / 255, one mapping for the whole volume), the network runs over it with
Gaussian-blended sliding windows (``engine.sliding``), argmax over the K classes, class k -> its label value.

Files, as for adapters and 2D heads: ``<stem>.safetensors`` (tensors) + ``<stem>.json`` (model card, format
``medsam-adapter/auto-volumetric``). AutoProSAM checkpoints hold only the trained tensors; the card names the base
model (registry name + sha256) whose frozen encoder completes them. Students hold all their tensors (no base).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError, WeightsError
from .auto_classes import AutoClass, ClassOutputs, card_orientation
from .auto_heads import auto_model_paths, read_model_card, write_model_files

CARD_FORMAT = "medsam-adapter/auto-volumetric"
CARD_VERSION = 1
ARCHS = ("autoprosam", "unet", "unet2d")
ProgressCallback = Callable[[int, int], None]


def build_network(arch: str, num_classes: int, options: dict[str, Any], base_model: nn.Module | None = None
                  ) -> nn.Module:
    """The network of ``arch``: AutoProSAM needs the (frozen) ``base_model``; students are self-contained."""
    if arch == "autoprosam":
        from .autoprosam import AutoProSAMConfig, build_autoprosam

        if base_model is None:
            raise InputError("an AutoProSAM network needs its base model")
        return build_autoprosam(base_model, num_classes, AutoProSAMConfig.from_dict(options))
    from .students import build_student

    return build_student(arch, num_classes, **options)


def saved_tensors(network: nn.Module) -> dict[str, Tensor]:
    """What a checkpoint holds: AutoProSAM's trained tensors only, a student's whole state."""
    own = getattr(network, "trainable_state_dict", None)
    return own() if callable(own) else network.state_dict()


def load_saved_tensors(network: nn.Module, tensors: dict[str, Tensor]) -> None:
    own = getattr(network, "load_trainable", None)
    if callable(own):
        own(tensors)
    else:
        network.load_state_dict(tensors, strict=True)


@dataclass
class VolumetricAutoModel(ClassOutputs):
    """A trained volumetric network + what is needed to apply it (see the module docstring).

    ``classes`` in network order (output k+1 is ``classes[k]``); ``options`` rebuild the network
    (``AutoProSAMConfig`` fields or the student's UNet settings); ``base_model`` / ``base_sha256`` are None for
    students.
    """

    network: nn.Module
    arch: str
    classes: list[AutoClass]
    patch_size: tuple[int, int, int]
    intensity: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None
    base_sha256: str | None = None
    card: dict[str, Any] = field(default_factory=dict)
    overlap: float = 0.25
    sw_batch_size: int = 1
    orientation: str | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(f"unknown volumetric architecture {self.arch!r}; known: {', '.join(ARCHS)}")
        self.patch_size = tuple(int(v) for v in self.patch_size)  # type: ignore[assignment]
        self.check_label_values()

    @property
    def num_classes(self) -> int:
        return len(self.classes) + 1

    def input_array(self, volume: Any) -> np.ndarray:
        """(D, H, W) float32 in [0, 1]: the intensity policy's display range / 255, whole volume at once."""
        from ..engine.preprocessing import volume_to_display_range

        if getattr(volume, "is_rgb", False):
            raise InputError("volumetric automatic models take grey volumes, not colour pictures")
        return volume_to_display_range(volume.array, self.intensity) / np.float32(255.0)

    def logits(self, volume: Any, progress: ProgressCallback | None = None, bf16: bool = True) -> Tensor:
        """(K, D, H, W) float32 logits of the whole volume (sliding windows, Gaussian blending)."""
        from ..engine.sliding import sliding_window_logits

        return sliding_window_logits(self.network, self.input_array(volume), self.patch_size, self.overlap,
                                     self.sw_batch_size, bf16, progress)

    def to_labels(self, logits: Tensor) -> np.ndarray:
        """(K, D, H, W) logits -> (D, H, W) label map (argmax, class k -> ``classes[k-1].label_value``;
        single-component classes keep their largest component)."""
        return self.label_map(logits.argmax(0).numpy())

    def predict_volume(self, volume: Any, progress: ProgressCallback | None = None) -> np.ndarray:
        """Label map (k, j, i) of ``volume``; ``progress(done, total)`` per sliding window."""
        return self.to_labels(self.logits(volume, progress))


# ---------------------------------------------------------------------------------------------- files
def save_volumetric_model(path: str | os.PathLike, model: VolumetricAutoModel, training: dict[str, Any] | None = None,
                          metrics: dict[str, Any] | None = None, dtype: str = "float32") -> Path:
    """Write ``<stem>.safetensors`` + ``<stem>.json`` atomically (tensors first); returns the tensors path."""
    from .. import __version__

    if dtype not in ("float32", "float16"):
        raise InputError(f"dtype must be float32 or float16, got {dtype!r}")
    half = dtype == "float16"
    tensors = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in saved_tensors(model.network).items()}
    net = model.network
    card: dict[str, Any] = {
        "format": CARD_FORMAT, "format_version": CARD_VERSION, "medsam_adapter_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": "automatic (prompt-free) volumetric segmentation",
        "arch": model.arch, "options": model.options, "patch_size": list(model.patch_size),
        "num_classes": model.num_classes, "intensity": model.intensity, "orientation": model.orientation,
        "inference": {"sliding_window": "gaussian", "overlap": model.overlap},
        "base_model": None if model.base_model is None else {"name": model.base_model, "sha256": model.base_sha256},
        "parameters": {"total": sum(p.numel() for p in net.parameters()),
                       "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
                       "saved": sum(t.numel() for t in tensors.values())},
        "classes": [c.to_dict() for c in model.classes], "training": training or {}, "metrics": metrics or {},
    }
    tensors_path, model.card = write_model_files(path, tensors, card, {"format": CARD_FORMAT, "arch": model.arch},
                                                 dtype)
    return tensors_path


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The model card beside ``path`` (any format); missing or unreadable -> WeightsError."""
    return read_model_card(path)[0]


def is_volumetric(path: str | os.PathLike) -> bool:
    return read_card(path).get("format") == CARD_FORMAT


def load_volumetric_model(path: str | os.PathLike, device: str | torch.device = "cpu",
                          base_model: nn.Module | None = None, weights: str | os.PathLike | None = None
                          ) -> VolumetricAutoModel:
    """Read a volumetric model (tensors sha256-checked against the card) in eval mode on ``device``.

    AutoProSAM: ``base_model`` (else the card's base model from the registry, ``weights`` overriding the file)
    must be the one the card names (registry name + sha256).
    """
    from .checkpoints import read_checked_tensors

    card = read_card(path)
    if card.get("format") != CARD_FORMAT:
        raise WeightsError(f"{auto_model_paths(path)[1]} is not a volumetric automatic model card")
    if int(card.get("format_version", 0)) > CARD_VERSION:
        raise WeightsError(f"{auto_model_paths(path)[1]} was written by a newer medsam-adapter")
    tensors_path = auto_model_paths(path)[0]
    saved = read_checked_tensors(tensors_path, card, "volumetric model")
    base = card.get("base_model")
    if card.get("arch") == "autoprosam":
        base_model = _checked_base(base, base_model, weights)
    try:
        classes = [AutoClass.from_dict(c) for c in card["classes"]]
        network = build_network(card["arch"], int(card["num_classes"]), dict(card.get("options") or {}), base_model)
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"model card {auto_model_paths(path)[1]} is incomplete: {exc}") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in saved.items()}
    try:
        load_saved_tensors(network, state)
    except (RuntimeError, InputError) as exc:
        raise WeightsError(f"tensors in {tensors_path} do not fit the card's {card['arch']} network: "
                           f"{str(exc).splitlines()[0]}") from exc
    network.requires_grad_(False)
    return VolumetricAutoModel(network.to(device).eval(), card["arch"], classes, tuple(card["patch_size"]),
                               str(card.get("intensity", "auto")), dict(card.get("options") or {}),
                               base["name"] if base else None, base["sha256"] if base else None, card,
                               float(card.get("inference", {}).get("overlap", 0.25)),
                               orientation=card_orientation(card))


def _checked_base(base: dict[str, Any] | None, model: nn.Module | None, weights: Any) -> nn.Module:
    from .checkpoints import base_identity

    if not base:
        raise WeightsError("an AutoProSAM card must name its base model")
    if model is None:
        from .loading import open_model

        model = open_model(base["name"], weights=weights, adapter="none")
    if base_identity(model) != (base["name"], base["sha256"]):
        name, sha = base_identity(model)
        raise WeightsError(f"this AutoProSAM model was trained on base model '{base['name']}' (sha256 "
                           f"{base['sha256']}) but the model given is '{name}' (sha256 {sha})")
    return model


def classes_for(labels: dict[int, str], single_component: Sequence[str | int] = (),
                training_labels: Sequence[np.ndarray] = ()) -> list[AutoClass]:
    """``AutoClass`` per {label value: name}, with colour and SNOMED CT terminology looked up by name.

    ``single_component``: names or values of the classes that are one connected object, or ``["all"]``.
    ``training_labels``: the training cases' label maps (slice axis 0), to record which classes a box prompt can
    redraw (``engine.refine.box_promptable``; rings cannot).
    """
    from ..engine.refine import box_promptable

    from ..engine.terminology import color_for, terminology_for
    from ..engine.volume import default_color

    wanted = {str(v).strip().lower() for v in single_component}
    unknown = wanted - {"all"} - {n.lower() for n in labels.values()} - {str(v) for v in labels}
    if unknown:
        raise InputError(f"single-component classes {sorted(unknown)} are not among the classes "
                         f"{[labels[v] for v in sorted(labels)]}")

    def single(value: int, name: str) -> bool:
        return bool({"all", name.lower(), str(value)} & wanted)

    boxable = box_promptable(training_labels, list(labels)) if len(training_labels) else {}
    return [AutoClass(name, int(value), tuple(color_for(name) or default_color(value)), terminology_for(name),
                      single(int(value), name), boxable.get(int(value))) for value, name in sorted(labels.items())]


def patch_multiple(arch: str, options: dict[str, Any]) -> tuple[int, int, int]:
    """(D, H, W) multiples a patch of ``arch`` must have."""
    if arch == "autoprosam":
        from .autoprosam import PATCH_MULTIPLE

        return (PATCH_MULTIPLE,) * 3
    from .students import DEFAULT_CHANNELS, student_multiple

    return student_multiple(arch, options.get("channels", DEFAULT_CHANNELS))


def check_patch(arch: str, options: dict[str, Any], patch: Sequence[int]) -> tuple[int, int, int]:
    multiple = patch_multiple(arch, options)
    patch = tuple(int(v) for v in patch)
    if len(patch) != 3 or any(p < m or p % m for p, m in zip(patch, multiple)):
        raise InputError(f"patch size {patch} must be 3 positive multiples of {multiple} (D, H, W) for {arch}")
    return patch  # type: ignore[return-value]
