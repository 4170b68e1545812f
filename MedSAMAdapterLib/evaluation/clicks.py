"""Simulated user prompts on one 2D plane: clicks and boxes derived from the ground truth.

Clicks follow the usual interactive-segmentation protocol (RITM, SAM): click where a user would, at the point
of the region farthest from its border, first on the object, then on the largest remaining error. Pixels are
addressed ``(row, col)`` of the plane; ties go to the first pixel in row-major order so runs are reproducible.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError

BoxRC = tuple[int, int, int, int]


def interior_point(region: np.ndarray) -> tuple[int, int]:
    """The pixel of ``region`` farthest from its boundary; the image border counts as boundary."""
    region = _as_plane(region)
    if not region.any():
        raise InputError("cannot place a click on an empty region")
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(row), int(col)


def first_click(gt2d: np.ndarray) -> tuple[int, int]:
    """A positive click at the centre (distance-transform maximum) of the object."""
    return interior_point(gt2d)


def next_click(gt2d: np.ndarray, pred2d: np.ndarray) -> tuple[int, int, bool] | None:
    """Click in the largest error region: positive in a missed part, negative in a false detection.

    False negatives and false positives are labelled separately (4-connected); the largest component wins, a
    false negative on a tie. Returns None when the prediction equals the ground truth.
    """
    gt, pred = _as_plane(gt2d), _as_plane(pred2d)
    if gt.shape != pred.shape:
        raise InputError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    best: tuple[int, np.ndarray, bool] | None = None
    for errors, positive in ((gt & ~pred, True), (pred & ~gt, False)):
        components, count = ndimage.label(errors)
        if count == 0:
            continue
        areas = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(areas))
        if best is None or areas[largest] > best[0]:
            best = (int(areas[largest]), components == largest + 1, positive)
    if best is None:
        return None
    row, col = interior_point(best[1])
    return row, col, best[2]


def tight_box(gt2d: np.ndarray) -> BoxRC:
    """Inclusive (r0, c0, r1, c1) bounds of the object: the box a careful user would draw."""
    rows, cols = np.nonzero(_as_plane(gt2d))
    if rows.size == 0:
        raise InputError("cannot draw a box around an empty mask")
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())


def jittered_box(gt2d: np.ndarray, rng: np.random.Generator, max_shift_frac: float = 0.1) -> BoxRC:
    """A tight box with each side moved by up to ``max_shift_frac`` of the box size, clipped to the image.

    Models are trained on such boxes (users never draw tight ones), so this measures robustness to sloppiness.
    """
    if not 0.0 <= max_shift_frac < 0.5:
        raise InputError(f"max_shift_frac must be in [0, 0.5), got {max_shift_frac}")
    plane = _as_plane(gt2d)
    r0, c0, r1, c1 = tight_box(plane)
    height, width = r1 - r0 + 1, c1 - c0 + 1
    dr0, dr1 = rng.uniform(-1.0, 1.0, 2) * max_shift_frac * height
    dc0, dc1 = rng.uniform(-1.0, 1.0, 2) * max_shift_frac * width
    rows, cols = plane.shape
    nr0, nr1 = sorted((_clip(r0 + dr0, rows), _clip(r1 + dr1, rows)))
    nc0, nc1 = sorted((_clip(c0 + dc0, cols), _clip(c1 + dc1, cols)))
    return nr0, nc0, nr1, nc1


def _clip(value: float, size: int) -> int:
    return int(min(max(round(value), 0), size - 1))


def _as_plane(mask: np.ndarray) -> np.ndarray:
    plane = np.asarray(mask)
    if plane.ndim != 2:
        raise InputError(f"expected a 2D (rows, cols) mask, got shape {plane.shape}")
    return plane != 0


def largest_slice(mask: np.ndarray, axis: int = 0) -> int:
    """Index of the slice with the most foreground; the first one on ties."""
    other = tuple(a for a in range(mask.ndim) if a != axis)
    return int(np.argmax(np.count_nonzero(mask, axis=other)))
