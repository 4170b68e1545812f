"""The classes of an automatic model and what every automatic-model bundle (2D head, volumetric) does with them:
label values, the class-index <-> label-map lookups, single-component clean-up, the trained-on orientation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, WeightsError


@dataclass
class AutoClass:
    """One foreground class: its name, label value in written label maps, colour (0..1 RGB), terminology.

    ``single_component``: the class is one connected object, so predictions keep only its largest 3D component
    (``engine.postprocess``). ``box_prompt``: whether a box around the class is a prompt for it (False for rings
    such as a myocardium; measured on the training labels, ``engine.refine.box_promptable``; None: unknown, box
    refinement then judges the predicted masks).
    """

    name: str
    label_value: int
    color: tuple[float, float, float] | None = None
    terminology: dict[str, Any] | None = None
    single_component: bool = False
    box_prompt: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "label_value": int(self.label_value),
               "color": None if self.color is None else [round(float(c), 4) for c in self.color],
               "terminology": self.terminology, "single_component": bool(self.single_component)}
        if self.box_prompt is not None:
            out["box_prompt"] = bool(self.box_prompt)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AutoClass":
        color = data.get("color")
        box = data.get("box_prompt")
        return cls(str(data["name"]), int(data["label_value"]), None if color is None else tuple(color)[:3],
                   data.get("terminology"), bool(data.get("single_component", False)),
                   None if box is None else bool(box))


def value_lut(label_values: Sequence[int]) -> np.ndarray:
    """Lookup table class index -> label value (index 0 = background 0), in the smallest dtype that fits."""
    return np.asarray([0, *label_values], dtype=np.uint16 if max(label_values) > 255 else np.uint8)


def card_orientation(card: dict[str, Any]) -> str | None:
    """The orientation code a model card says its model was trained on (None: older cards, 2D data)."""
    from ..engine.geometry import check_orientation_code

    code = card.get("orientation")
    try:
        return None if code is None else check_orientation_code(code)
    except InputError as exc:
        raise WeightsError(f"model card orientation: {exc}") from exc


def card_turn_search(card: dict[str, Any]) -> bool:
    """Whether a model card asks inference to try the four quarter turns of each plane (``turn_search``: for
    images whose stored in-plane orientation is unreliable, e.g. cardiac short-axis MRI; default False)."""
    value = card.get("turn_search", False)
    if not isinstance(value, bool):
        raise WeightsError(f"model card turn_search must be true or false, got {value!r}")
    return value


class ClassOutputs:
    """What every automatic-model bundle (2D head, volumetric) does with its ``classes``: the foreground classes in
    output order (output k+1 is ``classes[k]``). ``orientation`` (on each bundle): the orientation code of the
    grids it was trained on; inference brings volumes onto it (``AutoSegmenter``)."""

    classes: list[AutoClass]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def label_values(self) -> list[int]:
        return [c.label_value for c in self.classes]

    def check_label_values(self) -> None:
        values = self.label_values
        if not values or len(set(values)) != len(values) or min(values) < 1:
            raise InputError(f"label values must be distinct and >= 1, got {values}")

    def label_map(self, class_indices: np.ndarray) -> np.ndarray:
        """Class-index map -> label map with the classes' label values, single-component classes cleaned."""
        from ..engine.postprocess import clean_label_map

        return clean_label_map(value_lut(self.label_values)[class_indices], self.classes)

    def class_indices(self, label_map: np.ndarray) -> np.ndarray:
        """Label map with the classes' label values -> class-index map (the inverse of :meth:`label_map`'s lookup)."""
        inverse = np.zeros(max(self.label_values) + 1, np.int64)
        inverse[self.label_values] = np.arange(1, len(self.label_values) + 1)
        return inverse[label_map]
