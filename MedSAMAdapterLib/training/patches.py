"""Random 3D patches of whole volumes for volumetric training, foreground-oversampled (nnU-Net style).

Each case is held as its [0, 1] input array (the model's intensity mapping of the whole volume), its class map
(0 = background, 1..K-1) and, for distillation, the teacher's logits (K, D, H, W) in float16. Arrays smaller than
the patch are zero-padded at the end once (input 0, background, teacher logits favouring background).

A patch is drawn by: a case uniformly; with probability ``foreground_fraction`` a class present in the case
uniformly and a voxel of that class uniformly (the patch is centred on it, shifted to stay inside the volume),
else a uniformly random position. Sampling is a function of (seed, epoch, index) only, so a resumed run draws the
same patches as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError

MAX_LOCATIONS = 20000  # voxel positions remembered per class and case (nnU-Net keeps 10k)
TEACHER_PAD = 20.0  # padded voxels: teacher logit of background (softmax ~1)


@dataclass
class PatchCase:
    """One volume ready for patch sampling (arrays already padded to at least the patch size)."""

    case_id: str
    image: np.ndarray  # (D, H, W) float32 in [0, 1]
    classes: np.ndarray  # (D, H, W) uint8 class indices
    teacher: np.ndarray | None = None  # (K, D, H, W) float16 logits
    locations: dict[int, np.ndarray] | None = None  # class -> (n, 3) voxel indices


def pad_to_patch(case: PatchCase, patch: Sequence[int]) -> PatchCase:
    """Zero-pad the end of every axis shorter than the patch."""
    pads = [max(0, int(p) - s) for p, s in zip(patch, case.image.shape)]
    if not any(pads):
        return case
    width = [(0, p) for p in pads]
    teacher = case.teacher
    if teacher is not None:
        teacher = np.pad(teacher, [(0, 0)] + width)
        for axis, p in enumerate(pads):
            if p:
                index = [slice(None)] * 4
                index[axis + 1] = slice(teacher.shape[axis + 1] - p, None)
                teacher[tuple(index)] = 0
                teacher[(0, *index[1:])] = TEACHER_PAD
    return PatchCase(case.case_id, np.pad(case.image, width), np.pad(case.classes, width), teacher)


def class_locations(classes: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Up to ``MAX_LOCATIONS`` voxel indices per foreground class (a seeded subset of big classes)."""
    out = {}
    for k in np.unique(classes):
        if k == 0:
            continue
        where = np.argwhere(classes == k)
        if len(where) > MAX_LOCATIONS:
            where = where[rng.choice(len(where), MAX_LOCATIONS, replace=False)]
        out[int(k)] = where
    return out


class PatchSampler:
    """Draws (input, class, teacher) patches from ``cases`` (see the module docstring)."""

    def __init__(self, cases: Sequence[PatchCase], patch: Sequence[int], foreground_fraction: float = 0.5,
                 seed: int = 0) -> None:
        if not cases:
            raise InputError("no training cases to draw patches from")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise InputError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.patch = tuple(int(p) for p in patch)
        self.seed = int(seed)
        self.foreground_fraction = float(foreground_fraction)
        rng = np.random.default_rng([self.seed, 104729])
        self.cases = []
        for case in cases:
            padded = pad_to_patch(case, self.patch)
            padded.locations = class_locations(padded.classes, rng)
            self.cases.append(padded)

    def rng_for(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch), int(index)])

    def corner(self, case: PatchCase, rng: np.random.Generator) -> tuple[int, int, int]:
        """Start index of a patch: around a foreground voxel (oversampling) or anywhere."""
        limits = [s - p for s, p in zip(case.image.shape, self.patch)]
        if case.locations and rng.random() < self.foreground_fraction:
            classes = sorted(case.locations)
            voxels = case.locations[classes[int(rng.integers(len(classes)))]]
            centre = voxels[int(rng.integers(len(voxels)))]
            return tuple(int(np.clip(c - p // 2, 0, m)) for c, p, m in zip(centre, self.patch, limits))
        return tuple(int(rng.integers(m + 1)) for m in limits)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        case = self.cases[int(rng.integers(len(self.cases)))]
        z, y, x = self.corner(case, rng)
        d, h, w = self.patch
        window = (slice(z, z + d), slice(y, y + h), slice(x, x + w))
        teacher = None if case.teacher is None else case.teacher[(slice(None), *window)]
        return case.image[window], case.classes[window], teacher

    def batch(self, epoch: int, step: int, size: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """(B, 1, D, H, W) float32 inputs, (B, 1, D, H, W) int64 classes, (B, K, D, H, W) float32 teacher logits."""
        items = [self.sample(self.rng_for(epoch, step * size + i)) for i in range(size)]
        images = torch.from_numpy(np.stack([i[0] for i in items]))[:, None].float()
        classes = torch.from_numpy(np.stack([i[1] for i in items]))[:, None].long()
        teacher = None
        if items[0][2] is not None:
            teacher = torch.from_numpy(np.stack([i[2] for i in items])).float()
        return images, classes, teacher
