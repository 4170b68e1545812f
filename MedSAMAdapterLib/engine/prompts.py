"""Prompts in engine terms: what the user asked for on one slice, validated before it reaches a model.

Shells (CLI, Slicer, web) convert clicks from RAS/LPS to voxel indices with ``engine.geometry`` and then to
slice rows/columns with ``VolumePrompts.on_slice``; everything below works in (row, col) of one 2D plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import PromptError
from . import geometry

BoxRC = tuple[float, float, float, float]  # (r0, c0, r1, c1), inclusive pixel bounds on the plane
CLICK_BRUSH = 0.3  # radius of the disk a click paints into the mask prompt, x sqrt(mask area) (chosen on unseen sets)


@dataclass(frozen=True)
class SlicePrompts:
    """Prompts on one 2D plane. ``point_labels``: 1 = positive (object), 0 = negative (background)."""

    points_rc: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box_rc: BoxRC | None = None
    use_previous_mask: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "points_rc", np.asarray(self.points_rc, np.float32).reshape(-1, 2))
        object.__setattr__(self, "point_labels", np.asarray(self.point_labels, np.int64).reshape(-1))
        if len(self.points_rc) != len(self.point_labels):
            raise PromptError(
                f"{len(self.points_rc)} points but {len(self.point_labels)} point labels: give one label per point"
            )

    @property
    def has_points(self) -> bool:
        return len(self.points_rc) > 0

    @property
    def positive_count(self) -> int:
        return int((self.point_labels == 1).sum())

    def validate(self, plane_shape: tuple[int, int], has_previous_mask: bool = False) -> None:
        """Raise PromptError for prompts a model cannot use; the message says what to change."""
        height, width = plane_shape
        if not self.has_points and self.box_rc is None and not (self.use_previous_mask and has_previous_mask):
            raise PromptError("no prompt given: add a positive click or a box")
        bad_labels = set(np.unique(self.point_labels).tolist()) - {0, 1}
        if bad_labels:
            raise PromptError(f"point labels must be 1 (positive) or 0 (negative), got {sorted(bad_labels)}")
        for (row, col) in self.points_rc:
            if not (-0.5 <= row <= height - 0.5 and -0.5 <= col <= width - 0.5):
                raise PromptError(
                    f"click at (row {row:.1f}, col {col:.1f}) is outside the {height}x{width} slice"
                )
        if self.box_rc is not None:
            self._validate_box(height, width)
        if self.box_rc is None and self.positive_count == 0 and not (self.use_previous_mask and has_previous_mask):
            raise PromptError(
                "only negative clicks were given: a negative click removes area from an object, so first mark "
                "the object with a positive click or a box"
            )

    def _validate_box(self, height: int, width: int) -> None:
        r0, c0, r1, c1 = self.box_rc  # type: ignore[misc]
        if not all(np.isfinite([r0, c0, r1, c1])):
            raise PromptError(f"box {self.box_rc} has non-finite corners")
        if r1 < r0 or c1 < c0:
            raise PromptError(f"box {self.box_rc} has its corners swapped: give (row0, col0, row1, col1) with row0<=row1")
        if r1 >= height or c1 >= width or r0 < 0 or c0 < 0:
            if r0 >= height or c0 >= width or r1 < 0 or c1 < 0:
                raise PromptError(f"box {self.box_rc} lies entirely outside the {height}x{width} slice")
        if (r1 - r0) < 1 or (c1 - c0) < 1:
            raise PromptError(
                f"box {self.box_rc} is degenerate (less than 2 pixels high or wide): drag a box around the object"
            )

    def clipped(self, plane_shape: tuple[int, int]) -> "SlicePrompts":
        """The same prompts with the box clipped to the plane (a box may overhang the image edge)."""
        if self.box_rc is None:
            return self
        height, width = plane_shape
        r0, c0, r1, c1 = self.box_rc
        box = (max(0.0, r0), max(0.0, c0), min(height - 1.0, r1), min(width - 1.0, c1))
        return SlicePrompts(self.points_rc, self.point_labels, box, self.use_previous_mask)


@dataclass(frozen=True)
class VolumePrompts:
    """Prompts given in voxel indices (i, j, k) of a volume; a 3D box is a 2D box plus a slice range.

    ``box_ijk`` is (min corner, max corner), both (i, j, k) inclusive. The slice axis decides which of the
    three index components is the slice number.
    """

    points_ijk: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float64))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box_ijk: tuple[np.ndarray, np.ndarray] | None = None

    def slice_index(self, axis: int) -> int:
        """The one slice all points (and the box centre) lie on; PromptError if points span several slices."""
        indices: set[int] = set()
        if len(self.points_ijk):
            slice_ids, _ = geometry.ijk_to_slice_rc(np.asarray(self.points_ijk, np.float64), axis)
            indices.update(int(round(float(v))) for v in slice_ids)
        if self.box_ijk is not None and not indices:
            lo, hi = self.box_range(axis)
            indices.add((lo + hi) // 2)
        if not indices:
            raise PromptError("no prompt given: add a positive click or a box")
        if len(indices) > 1:
            raise PromptError(
                f"clicks lie on different slices {sorted(indices)} along axis {axis}: give clicks of one slice at a time"
            )
        return indices.pop()

    def box_range(self, axis: int) -> tuple[int, int]:
        """First and last slice covered by the 3D box along ``axis``."""
        assert self.box_ijk is not None
        lo_idx, _ = geometry.ijk_to_slice_rc(np.asarray([self.box_ijk[0]], np.float64), axis)
        hi_idx, _ = geometry.ijk_to_slice_rc(np.asarray([self.box_ijk[1]], np.float64), axis)
        lo, hi = int(round(float(lo_idx[0]))), int(round(float(hi_idx[0])))
        return min(lo, hi), max(lo, hi)

    def on_slice(self, axis: int) -> tuple[int, SlicePrompts]:
        """Convert to (slice index, prompts in that plane's rows/columns)."""
        index = self.slice_index(axis)
        points_rc = np.zeros((0, 2), np.float32)
        if len(self.points_ijk):
            _, points_rc = geometry.ijk_to_slice_rc(np.asarray(self.points_ijk, np.float64), axis)
        box = None
        if self.box_ijk is not None:
            _, corners = geometry.ijk_to_slice_rc(np.asarray(self.box_ijk, np.float64), axis)
            (ra, ca), (rb, cb) = corners
            box = (min(ra, rb), min(ca, cb), max(ra, rb), max(ca, cb))
        return index, SlicePrompts(points_rc, self.point_labels, box)


def box_from_mask(mask: np.ndarray, margin: float = 0.0) -> BoxRC | None:
    """Tight (r0, c0, r1, c1) box of a 2D mask, grown by ``margin`` pixels; None for an empty mask."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return (
        float(rows.min()) - margin,
        float(cols.min()) - margin,
        float(rows.max()) + margin,
        float(cols.max()) + margin,
    )


def mask_prompt_with_clicks(mask: np.ndarray, points_rc: np.ndarray, point_labels: np.ndarray,
                            brush: float = CLICK_BRUSH) -> np.ndarray:
    """The mask a corrective prompt sends: the current mask with a disk around each click set to the click's label.

    The decoder weighs a +-8 mask prompt far above one click token, so a negative click inside the mask was often
    ignored (the prostate case I2CVB kept a wrong region through four negative clicks). Painted into the mask
    prompt, both inputs say the same. Radius: ``brush`` x sqrt(mask area) (0.53 x the radius of a round object),
    at least 2 px; a later click wins where disks overlap. The input mask is not modified.
    """
    out = np.array(mask, dtype=bool, copy=True)
    radius = max(2.0, brush * float(np.sqrt(max(int(out.sum()), 1))))
    rows, cols = np.ogrid[: out.shape[0], : out.shape[1]]
    for (row, col), label in zip(np.asarray(points_rc, np.float64).reshape(-1, 2), np.asarray(point_labels)):
        out[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = bool(label)
    return out
