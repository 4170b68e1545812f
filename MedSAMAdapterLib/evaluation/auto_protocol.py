"""The ``auto`` evaluation protocol: an automatic model (optionally box-refined) segments each case unprompted, and
its classes are matched to the dataset's labels by structure name (or by value when no name matches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import InputError
from . import metrics as M
from .clicks import largest_slice


class AutoRun:
    """One case of the ``auto`` protocol: the volume, the automatic model that segments it and, for box
    refinement, the promptable model that redraws its result."""

    def __init__(self, volume: Any, segmenter: Any, refiner: Any = None) -> None:
        self.volume, self.segmenter, self.refiner = volume, segmenter, refiner

    @property
    def values_by_class_key(self) -> dict[str, int]:
        """{class key (``class_key``): label value} of the model's classes."""
        return {class_key(c.name): int(c.label_value) for c in self.segmenter.classes}

    def labels(self) -> np.ndarray:
        return np.asarray(self.segmenter.predict(self.volume, refiner=self.refiner))


def auto_session_factory(model_path: str | Path, device: str = "cpu", cache_on_disk: bool = False,
                         refine_boxes: str | None = None, turn_search: bool | None = None
                         ) -> Callable[[Any], AutoRun]:
    """Load the automatic model once (``engine.auto.AutoSegmenter``, with ``turn_search``; a memory-only embedding
    cache, or the disk cache with ``cache_on_disk``) and, with ``refine_boxes``, its box refiner; each case gets an
    :class:`AutoRun`."""
    from ..engine.auto import AutoSegmenter, open_box_refiner
    from ..engine.cache import EmbeddingCache

    if not Path(model_path).with_suffix(".json").exists() and not Path(f"{model_path}.json").exists():
        raise InputError(f"--protocol auto needs an automatic model file for --model (<stem>.safetensors + "
                         f"<stem>.json), got {model_path!r}")
    segmenter = AutoSegmenter(model_path, device, cache=EmbeddingCache(use_disk=cache_on_disk),
                              turn_search=turn_search)
    refiner = open_box_refiner(segmenter, refine_boxes, device) if refine_boxes is not None else None
    return lambda volume: AutoRun(volume, segmenter, refiner)


def class_key(name: str) -> str:
    """What two class names must share to be the same structure: the terminology's canonical name when there is
    one (``RV`` and ``heart_ventricle_right`` are both ``right_ventricle``), else the lower-case name."""
    from ..engine.terminology import terminology_for

    entry = terminology_for(name)
    return str(entry["name"]) if entry else name.strip().lower()


def match_classes(model_values: Mapping[str, int], labels: Mapping[str, int]) -> tuple[dict[str, int], dict[int, int],
                                                                                      str]:
    """Which dataset labels an automatic model is scored on: (scored {label name: dataset value}, {model value:
    dataset value}, "name" | "value").

    By structure name when any name matches (a model trained on another dataset, e.g. abdominal organs scored on
    different CT slices with other label numbers); otherwise by label value.
    """
    by_name = {name: value for name, value in labels.items() if class_key(name) in model_values}
    if by_name:
        return by_name, {model_values[class_key(n)]: v for n, v in by_name.items()}, "name"
    values = set(model_values.values())
    by_value = {name: value for name, value in labels.items() if value in values}
    return by_value, {v: v for v in by_value.values()}, "value"


def run_auto_case(run: Any, gt: np.ndarray, labels: Mapping[str, int], spacing, tol: float) -> dict[str, Any]:
    """Every class the model predicts is scored on every case, also where the ground truth lacks it (an empty
    prediction there scores 1, any false positive 0): automatic segmentation must also say 'not here'.
    Classes are matched to the dataset's labels by name, or by value when no name matches (``match_classes``)."""
    predicted = run.labels()
    scored, to_dataset, matched_by = match_classes(run.values_by_class_key, labels)
    prediction = np.zeros(np.shape(predicted), np.asarray(gt).dtype)
    for model_value, dataset_value in to_dataset.items():
        prediction[predicted == model_value] = dataset_value
    per_label = M.case_metrics(prediction, gt, scored, spacing, tol)
    overlay = largest_slice(gt > 0) if gt.any() else 0
    record = {"slice_index": {}, "metrics": {"auto": per_label}, "composed": {}, "overlay_index": overlay,
              "scored_labels": list(scored), "classes_matched_by": matched_by,
              "quarter_turns": getattr(run.segmenter, "last_turns", None)}
    return {"record": record, "prediction": prediction}
