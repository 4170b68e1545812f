"""Locate, then zoom: an in-plane region of interest for prompt-free heads on small structures.

The encoder sees every plane shrunk to its input size (LiteMedSAM: 256 px, 64 x 64 tokens): a 512 x 512 CT
plane loses half its resolution, and a small organ or lesion a few tokens wide loses its border. Cascaded
pipelines therefore segment coarsely, then again on a crop around what they found. With ``roi_margin`` set in
its card, a 2D head runs twice (``engine.auto.AutoSegmenter``):

1. on the whole planes, to locate the structures;
2. on one in-plane box around everything pass 1 found on any plane (the same box on every plane, so 2.5D
   neighbours stay aligned), grown by ``margin`` x its size on each side and made square, cut out of the volume
   exactly (no resampling; the crop's origin is moved so its geometry stays true). The encoder then sees the
   structures at up to their native resolution. Outside the box pass 1 is kept (it found nothing there).

The box is never smaller than the encoder's input (``min_side``): a crop enlarged beyond its own pixels brings
no new detail, only blur the encoder was not trained on. Measured on ACDC cine-MRI (planes of ~216 x 256, already
at the encoder's size), crops around the ground truth enlarged ~2.5x scored *lower* than the whole planes (mean
Dice 0.718 vs 0.778, README), so on such images the box covers the plane and the second pass is skipped.

The head is trained for both scales: besides the whole planes it sees crops of its training cases around their
ground truth with random margins and shifts (``training.augment.roi_copies``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InputError
from .volume import Volume


@dataclasses.dataclass(frozen=True)
class PlaneBox:
    """Half-open in-plane box ``[j0, j1) x [i0, i1)`` of a (k, j, i) grid, the same on every plane."""

    j0: int
    j1: int
    i0: int
    i1: int

    def __post_init__(self) -> None:
        if not (0 <= self.j0 < self.j1 and 0 <= self.i0 < self.i1):
            raise InputError(f"empty or negative box {self}")

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.j0, self.j1), slice(self.i0, self.i1)

    def covers(self, plane_shape: tuple[int, int]) -> bool:
        return (self.j0, self.i0) == (0, 0) and (self.j1, self.i1) == tuple(plane_shape)


def _span(low: float, high: float, side: float, size: int) -> tuple[int, int]:
    """Integer interval of length ``side`` centred on [low, high], shifted (not cut) to stay inside [0, size)."""
    side = int(round(min(side, size)))
    start = int(round((low + high) / 2 - side / 2))
    start = min(max(start, 0), size - side)
    return start, start + side


def box_around(mask: np.ndarray, margin: float, min_side: int, shift: tuple[float, float] = (0.0, 0.0)
               ) -> PlaneBox | None:
    """Square in-plane box around every True voxel of ``mask`` (k, j, i) on any plane; None when it is empty.

    The side is the larger extent of the found region times ``1 + 2 * margin`` (at least ``min_side``, the
    encoder's input size, at most the plane); ``shift`` moves the centre by that fraction of the side (row, column), as training's random crops do.
    Near an edge the box is shifted inward rather than cut, so it stays square while the plane allows.
    """
    if margin < 0:
        raise InputError(f"the ROI margin must be >= 0, got {margin}")
    mask = np.asarray(mask, bool)
    if mask.ndim != 3:
        raise InputError(f"expected a (k, j, i) mask, got shape {mask.shape}")
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    if rows.size == 0:
        return None
    height, width = mask.shape[1:]
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(float(max(bottom - top, right - left)) * (1.0 + 2.0 * margin), float(min_side))
    dj, di = shift[0] * side, shift[1] * side
    j0, j1 = _span(top + dj, bottom + dj, side, height)
    i0, i1 = _span(left + di, right + di, side, width)
    return PlaneBox(j0, j1, i0, i1)


def crop_volume(volume: Volume, box: PlaneBox) -> Volume:
    """The voxels of ``box`` on every plane as a new volume whose geometry places them where they were."""
    if box.j1 > volume.shape[1] or box.i1 > volume.shape[2]:
        raise InputError(f"box {box} exceeds the plane {volume.shape[1:]}")
    rows, cols = box.slices
    array = np.ascontiguousarray(volume.array[:, rows, cols])
    origin = volume.geometry.ijk_to_lps(np.array([box.i0, box.j0, 0], np.float64))
    geometry = dataclasses.replace(volume.geometry, origin=tuple(float(v) for v in origin))
    return Volume(array, geometry, volume.source, volume.is_rgb)
