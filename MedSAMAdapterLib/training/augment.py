"""Augmented copies of training cases for heads trained on cached embeddings.

A head trained on a frozen encoder's cached embeddings cannot augment on the fly (every new image needs an
encoder pass), so few-shot runs see the same handful of planes every epoch and over-fit. Instead, each training
case gets ``count`` transformed copies *before* embedding; the copies are deterministic functions of (seed, case,
copy), so they are embedded once and then come out of the embedding cache in later runs like any other volume.

One random in-plane transform per copy, applied to every plane of the case so neighbouring planes stay aligned
(2.5D context): rotation, isotropic scale and a small shift (MONAI ``RandAffined``, bilinear image, nearest label),
then a random gamma on the intensities. No flips: they would swap left and right organs.

``roi_copies`` are the training side of the zoom pass (``engine/roi.py``): exact crops of a case around its
ground truth, with a random margin and shift, so the head learns the enlarged view it gets in pass 2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ..engine.roi import PlaneBox, box_around, crop_volume
from ..engine.volume import Volume
from ..errors import InputError
from .datasets import TrainingCase, make_case


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random transform (uniform): degrees, scale factor, shift as a fraction of the size, gamma."""

    rotate_degrees: float = 15.0
    scale: tuple[float, float] = (0.85, 1.2)
    shift_fraction: float = 0.08
    gamma: tuple[float, float] = (0.7, 1.5)


def augmented_copies(cases: Sequence[TrainingCase], count: int, seed: int = 0, intensity: str = "auto",
                     settings: AugmentSettings = AugmentSettings()) -> list[TrainingCase]:
    """``count`` transformed copies of each case (ids ``<case>_aug<n>``), in case order."""
    if count < 0:
        raise InputError(f"the number of augmented copies must be >= 0, got {count}")
    out = []
    for index, case in enumerate(cases):
        for copy in range(count):
            rng = np.random.default_rng([seed, index, copy])
            out.append(augment_case(case, rng, intensity, settings, f"{case.case_id}_aug{copy + 1}"))
    return out


def augment_case(case: TrainingCase, rng: np.random.Generator, intensity: str = "auto",
                 settings: AugmentSettings = AugmentSettings(), case_id: str | None = None) -> TrainingCase:
    """One transformed copy of ``case`` (grey images; the label map keeps its values)."""
    from monai.transforms import RandAffined

    if case.volume.is_rgb:
        raise InputError(f"case {case.case_id}: augmentation of colour pictures is not supported")
    image = case.volume.array
    floor = float(image.min())
    height, width = image.shape[1:]
    # Planes as channels of one 2D image: the same transform for all of them. Padding is the image minimum.
    transform = RandAffined(
        keys=("image", "label"), mode=("bilinear", "nearest"), prob=1.0, padding_mode="zeros",
        rotate_range=(math.radians(settings.rotate_degrees),),
        scale_range=((settings.scale[0] - 1.0, settings.scale[1] - 1.0),) * 2,
        translate_range=(settings.shift_fraction * height, settings.shift_fraction * width))
    transform.set_random_state(int(rng.integers(2**31 - 1)))
    moved = transform({"image": image - floor, "label": case.labels.astype(np.float32)})
    warped = np.asarray(moved["image"], np.float32)
    labels = np.rint(np.asarray(moved["label"])).astype(case.labels.dtype)
    warped = _random_gamma(warped, rng, settings.gamma) + floor
    volume = Volume(warped, case.volume.geometry, case.volume.source)
    return _derived(case, case_id or f"{case.case_id}_aug", volume, labels, intensity)


def _derived(case: TrainingCase, case_id: str, volume: Volume, labels: np.ndarray, intensity: str) -> TrainingCase:
    """A new case of ``case``'s dataset with its targets and names, on a transformed or cropped grid."""
    return make_case(case_id, volume, labels, case.label_values, case.dataset, intensity, case.label_names,
                     case.regions)


def _random_gamma(image: np.ndarray, rng: np.random.Generator, gamma_range: tuple[float, float]) -> np.ndarray:
    """``image`` (>= 0) rescaled to [0, 1], raised to a random gamma, scaled back to its range."""
    top = float(image.max())
    if top <= 0:
        return image
    gamma = float(np.exp(rng.uniform(np.log(gamma_range[0]), np.log(gamma_range[1]))))
    return (np.power(image / top, gamma) * top).astype(np.float32)


def foreground(case: TrainingCase) -> np.ndarray:
    """(k, j, i) mask of every training target of ``case``."""
    mask = np.zeros(case.labels.shape, bool)
    for value in case.label_values:
        mask |= case.target(case.labels, value)
    return mask


def crop_case(case: TrainingCase, box: PlaneBox, case_id: str, intensity: str = "auto") -> TrainingCase:
    """``case`` cut to ``box`` on every plane (image, labels and geometry)."""
    rows, cols = box.slices
    return _derived(case, case_id, crop_volume(case.volume, box), case.labels[:, rows, cols], intensity)


def roi_copies(cases: Sequence[TrainingCase], margin: float, min_side: int, seed: int = 0, intensity: str = "auto",
               jitter: bool = True) -> list[TrainingCase]:
    """One crop per case around its ground truth (ids ``<case>_roi``), at least ``min_side`` (the encoder's input
    size) wide; cases without foreground, or whose box is the whole plane, are skipped.

    ``jitter``: a random margin in [0.5, 1.5] x ``margin`` and a centre shift of up to 0.1 x the side (training,
    so the head tolerates a pass-1 box that is too tight, too loose or off-centre); without it the crop is the
    one inference draws around a perfect pass 1 (validation).
    """
    out = []
    for index, case in enumerate(cases):
        rng = np.random.default_rng([seed, index, 7919])
        scale, shift = (rng.uniform(0.5, 1.5), tuple(rng.uniform(-0.1, 0.1, 2))) if jitter else (1.0, (0.0, 0.0))
        box = box_around(foreground(case), margin * scale, min_side, shift)
        if box is not None and not box.covers(case.labels.shape[1:]):
            out.append(crop_case(case, box, f"{case.case_id}_roi", intensity))
    return out
