"""Voxel <-> physical conversions and slice indexing: the one place that knows the index conventions.

Conventions (docs/ARCHITECTURE.md, "Index conventions"):

* ``Volume.array`` is indexed ``[k, j, i]``; voxel points are written ``(i, j, k)``.
* physical LPS = origin + direction @ (spacing * ijk); direction columns are the i, j, k axis directions (ITK).
* RAS (Slicer) = LPS with x and y negated.
* a slice axis is a numpy axis (0 = k, 1 = j, 2 = i); ``slice_plane`` rows/cols are
  axis 0 -> (j, i), axis 1 -> (k, i), axis 2 -> (k, j).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from ..errors import InputError, PromptError

View = Literal["axial", "coronal", "sagittal"]

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
# Unit normals of the standard views in LPS.
_VIEW_NORMALS_LPS = {
    "axial": np.array([0.0, 0.0, 1.0]),  # S
    "coronal": np.array([0.0, 1.0, 0.0]),  # P / A
    "sagittal": np.array([1.0, 0.0, 0.0]),  # L / R
}
# For slice axis a (numpy axis): index of the (i, j, k) column that is the slice index, and those for rows, cols.
_SLICE_IJK = {0: (2, 1, 0), 1: (1, 2, 0), 2: (0, 2, 1)}
_AXIS_NAMES = {0: "k", 1: "j", 2: "i"}


def _as_points(points: Any) -> tuple[np.ndarray, bool]:
    """(N, 3) float array from (3,) or (N, 3) input; the flag says a single point was given."""
    arr = np.asarray(points, dtype=np.float64)
    single = arr.ndim == 1
    arr = np.atleast_2d(arr)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"points must have shape (N, 3) or (3,), got {np.shape(points)}")
    return arr, single


def _restore(arr: np.ndarray, single: bool) -> np.ndarray:
    return arr[0] if single else arr


@dataclass(frozen=True)
class Geometry:
    """Voxel grid placement of a 3D image: spacing (i, j, k), origin LPS, direction (3x3, columns = axes, LPS).

    Stored as tuples so a Geometry is hashable and comparable (usable in cache keys); ``np.asarray`` on any field
    gives the array form.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        spacing = np.asarray(self.spacing, dtype=np.float64).reshape(-1)
        origin = np.asarray(self.origin, dtype=np.float64).reshape(-1)
        direction = np.asarray(self.direction, dtype=np.float64)
        if spacing.shape != (3,) or origin.shape != (3,) or direction.size != 9:
            raise InputError(
                f"geometry needs 3 spacings, 3 origin values and a 3x3 direction; got spacing {spacing.shape}, "
                f"origin {origin.shape}, direction {direction.shape}"
            )
        direction = direction.reshape(3, 3)
        if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise InputError(f"voxel spacing must be positive and finite, got {tuple(spacing)}")
        if not np.all(np.isfinite(origin)) or not np.all(np.isfinite(direction)):
            raise InputError("image origin / direction contain non-finite values")
        if abs(np.linalg.det(direction)) < 1e-6:
            raise InputError(f"image direction matrix is singular: {direction.tolist()}")
        object.__setattr__(self, "spacing", tuple(float(v) for v in spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in origin))
        object.__setattr__(self, "direction", tuple(tuple(float(v) for v in row) for row in direction))

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def identity(cls) -> "Geometry":
        """Spacing 1, origin 0, identity direction: what a 2D picture without geometry gets."""
        return cls()

    @classmethod
    def from_sitk(cls, image: Any) -> "Geometry":
        """Geometry of a 2D or 3D SimpleITK image (a 2D image becomes a one-slice 3D grid, k spacing 1)."""
        dim = image.GetDimension()
        if dim == 3:
            return cls(image.GetSpacing(), image.GetOrigin(), np.reshape(image.GetDirection(), (3, 3)))
        if dim == 2:
            direction = np.eye(3)
            direction[:2, :2] = np.reshape(image.GetDirection(), (2, 2))
            return cls((*image.GetSpacing(), 1.0), (*image.GetOrigin(), 0.0), direction)
        raise InputError(f"expected a 2D or 3D image, got {dim}D")

    @classmethod
    def from_ijk_to_ras_matrix(cls, matrix: Any) -> "Geometry":
        """Inverse of ``ijk_to_ras_matrix``: split Slicer's IJKToRAS 4x4 into spacing, origin and direction."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (4, 4):
            raise InputError(f"IJK-to-RAS matrix must be 4x4, got {m.shape}")
        lps = _LPS_TO_RAS[:, None] * m[:3, :3]
        spacing = np.linalg.norm(lps, axis=0)
        if np.any(spacing <= 0):
            raise InputError("IJK-to-RAS matrix has a zero column (zero spacing)")
        return cls(spacing, _LPS_TO_RAS * m[:3, 3], lps / spacing)

    def apply_to_sitk(self, image: Any) -> Any:
        """Set this geometry on a 3D SimpleITK image (in place) and return it."""
        if image.GetDimension() != 3:
            raise InputError(f"apply_to_sitk expects a 3D image, got {image.GetDimension()}D")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(np.asarray(self.direction).reshape(-1)))
        return image

    # ---- matrices -----------------------------------------------------------------------------------------
    def ijk_to_lps_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix taking (i, j, k, 1) to (L, P, S, 1)."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.direction) * np.asarray(self.spacing)[None, :]
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras_matrix(self) -> np.ndarray:
        """4x4 IJK-to-RAS matrix, as ``vtkMRMLVolumeNode.SetIJKToRASMatrix`` expects."""
        m = self.ijk_to_lps_matrix()
        m[:3, :] *= _LPS_TO_RAS[:, None]
        return m

    # ---- point conversions --------------------------------------------------------------------------------
    def ijk_to_lps(self, points: Any) -> np.ndarray:
        """(N, 3) or (3,) continuous voxel indices (i, j, k) -> LPS millimetres."""
        ijk, single = _as_points(points)
        m = self.ijk_to_lps_matrix()
        return _restore(ijk @ m[:3, :3].T + m[:3, 3], single)

    def lps_to_ijk(self, points: Any) -> np.ndarray:
        """LPS millimetres -> continuous voxel indices (i, j, k); no rounding, no bounds check."""
        lps, single = _as_points(points)
        m = self.ijk_to_lps_matrix()
        return _restore(np.linalg.solve(m[:3, :3], (lps - m[:3, 3]).T).T, single)

    def ijk_to_ras(self, points: Any) -> np.ndarray:
        return lps_to_ras(self.ijk_to_lps(points))

    def ras_to_ijk(self, points: Any) -> np.ndarray:
        return self.lps_to_ijk(ras_to_lps(points))

    # ---- comparisons --------------------------------------------------------------------------------------
    def mismatch(self, other: "Geometry", rtol: float = 1e-4) -> str | None:
        """Describe the first difference from ``other`` beyond ``rtol`` (relative), or None when they agree.

        Origins are compared relative to the larger of their magnitude and the voxel size, directions absolutely.
        """
        s0, s1 = np.asarray(self.spacing), np.asarray(other.spacing)
        if not np.allclose(s0, s1, rtol=rtol, atol=0):
            return f"spacing {tuple(s0)} vs {tuple(s1)}"
        o0, o1 = np.asarray(self.origin), np.asarray(other.origin)
        scale = max(np.abs(o0).max(), np.abs(o1).max(), s0.max(), 1e-12)
        if np.abs(o0 - o1).max() > rtol * scale:
            return f"origin {tuple(o0)} vs {tuple(o1)}"
        d0, d1 = np.asarray(self.direction), np.asarray(other.direction)
        if np.abs(d0 - d1).max() > rtol:
            return f"direction {d0.round(6).tolist()} vs {d1.round(6).tolist()}"
        return None

    def plane_spacing(self, axis: int) -> tuple[float, float]:
        """(row, col) pixel size in mm of ``slice_plane(array, axis, .)``."""
        _, r, c = _SLICE_IJK[_check_axis(axis)]
        return self.spacing[r], self.spacing[c]


# ---- module-level helpers ---------------------------------------------------------------------------------
def lps_to_ras(points: Any) -> np.ndarray:
    """LPS <-> RAS differ by the sign of x and y."""
    return np.asarray(points, dtype=np.float64) * _LPS_TO_RAS


def ras_to_lps(points: Any) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) * _LPS_TO_RAS


def _check_axis(axis: int) -> int:
    if axis not in (0, 1, 2):
        raise InputError(f"slice axis must be 0 (k), 1 (j) or 2 (i), got {axis!r}")
    return int(axis)


def axis_for_view(geometry: Geometry, view: View) -> int:
    """Numpy slice axis whose voxel direction is closest to the view normal (axial S, coronal A/P, sagittal L/R).

    Works for volumes stored in any orientation (e.g. a sagittally acquired MR whose k axis points L).
    """
    if view not in _VIEW_NORMALS_LPS:
        raise InputError(f"view must be one of {sorted(_VIEW_NORMALS_LPS)}, got {view!r}")
    cosines = np.abs(_VIEW_NORMALS_LPS[view] @ np.asarray(geometry.direction))  # per (i, j, k) column
    # Reversed to (k, j, i) = numpy axis order; argmax then breaks ties towards the lower numpy axis.
    return int(np.argmax(cosines[::-1]))


def slice_plane(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """2D view (no copy) of slice ``index`` along numpy ``axis``; trailing channel dims (RGB) are kept."""
    _check_index(array.shape, axis, index)
    return array[(slice(None),) * axis + (int(index),)]


def insert_plane(array: np.ndarray, axis: int, index: int, plane: np.ndarray) -> None:
    """Write a 2D result back into ``array`` at slice ``index`` along ``axis`` (in place)."""
    view = slice_plane(array, axis, index)
    plane = np.asarray(plane)
    if plane.shape != view.shape:
        raise InputError(f"plane shape {plane.shape} does not match slice shape {view.shape} (axis {axis})")
    view[...] = plane


def _check_index(shape: Sequence[int], axis: int, index: int) -> None:
    axis = _check_axis(axis)
    n = shape[axis]
    if not (0 <= int(index) < n) or int(index) != index:
        raise PromptError(f"slice index {index} is outside 0..{n - 1} along axis {axis} ({_AXIS_NAMES[axis]})")


def slice_component(axis: int) -> int:
    """Which (i, j, k) component is constant on slices along numpy ``axis`` (axis 0 -> k = component 2)."""
    return _SLICE_IJK[_check_axis(axis)][0]


def ijk_to_slice_rc(ijk: Any, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) points (i, j, k) -> (slice index (N,), (row, col) (N, 2)) for slices along ``axis``; keeps dtype."""
    pts = np.atleast_2d(np.asarray(ijk))
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points must have shape (N, 3), got {np.shape(ijk)}")
    s, r, c = _SLICE_IJK[_check_axis(axis)]
    return pts[:, s].copy(), pts[:, [r, c]].copy()


def slice_rc_to_ijk(rc: Any, axis: int, index: Any) -> np.ndarray:
    """Inverse of ``ijk_to_slice_rc``: (N, 2) (row, col) on slice ``index`` (scalar or (N,)) -> (N, 3) (i, j, k)."""
    rc = np.atleast_2d(np.asarray(rc))
    if rc.ndim != 2 or rc.shape[1] != 2:
        raise InputError(f"slice points must have shape (N, 2), got {rc.shape}")
    s, r, c = _SLICE_IJK[_check_axis(axis)]
    dtype = np.result_type(rc.dtype, np.asarray(index).dtype)
    out = np.empty((rc.shape[0], 3), dtype=dtype)
    out[:, s] = index
    out[:, r] = rc[:, 0]
    out[:, c] = rc[:, 1]
    return out


def round_to_voxel(ijk: Any, shape: Sequence[int]) -> np.ndarray:
    """Nearest voxel (int64 i, j, k) of continuous points; PromptError if a point lies outside the volume.

    ``shape`` is the array shape (k, j, i). A voxel covers [n - 0.5, n + 0.5) around its centre index n.
    """
    pts, single = _as_points(ijk)
    finite = np.all(np.isfinite(pts), axis=1)
    idx = np.floor(np.where(finite[:, None], pts, -1.0) + 0.5).astype(np.int64)
    size_ijk = np.array([shape[2], shape[1], shape[0]], dtype=np.int64)
    bad = np.any((idx < 0) | (idx >= size_ijk), axis=1)
    if np.any(bad):
        p = pts[np.argmax(bad)]
        extent = ", ".join(f"{n} 0..{m - 1}" for n, m in zip("ijk", size_ijk))
        raise PromptError(
            f"point (i, j, k) = ({p[0]:.2f}, {p[1]:.2f}, {p[2]:.2f}) is outside the volume "
            f"(voxel extent {extent}); place prompts inside the image"
        )
    return _restore(idx, single)


# ---- orientation (exact axis permutations / flips, no resampling) ---------------------------------------------
# Letter of each signed LPS axis: the patient direction an index axis points towards (SimpleITK's
# DICOMOrientImageFilter convention: an identity direction is "LPS"; a NIfTI with an identity affine reads "RAS").
_ORIENTATION_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}
_LETTER_AXES = {letter: axis_sign for axis_sign, letter in _ORIENTATION_LETTERS.items()}


def orientation_code(geometry: Geometry) -> str:
    """Three letters: the patient direction (L/R, P/A, S/I) closest to each of the i, j, k index axes.

    Oblique grids get the assignment of index axes to patient axes with the largest summed |cosine| (each patient
    axis used once), so every grid has a valid code.
    """
    from itertools import permutations

    direction = np.asarray(geometry.direction)  # columns = i, j, k directions in LPS
    best = max(permutations(range(3)), key=lambda p: sum(abs(direction[p[c], c]) for c in range(3)))
    return "".join(_ORIENTATION_LETTERS[(best[c], 1 if direction[best[c], c] >= 0 else -1)] for c in range(3))


def check_orientation_code(code: str) -> str:
    """Upper-case ``code``; InputError unless it names each patient axis (L/R, P/A, S/I) exactly once."""
    text = str(code).upper()
    axes = sorted(_LETTER_AXES[c][0] for c in text if c in _LETTER_AXES)
    if len(text) != 3 or axes != [0, 1, 2]:
        raise InputError(f"orientation code must be 3 letters naming L/R, P/A and S/I once each (e.g. LPS, RAS), "
                         f"got {code!r}")
    return text


@dataclass(frozen=True)
class Reorientation:
    """Maps a (k, j, i) grid onto the grid whose index axes point along another orientation code, exactly.

    ``source_axes[a]``: the numpy axis of the source array that becomes numpy axis ``a``; ``flips[a]``: whether it
    is reversed. :meth:`apply` works on arrays (numpy or torch) whose last three axes are (k, j, i);
    :meth:`undo` maps results on the new grid back onto the source grid.
    """

    source_axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    geometry: Geometry  # of the reoriented grid (same physical voxels)

    @classmethod
    def to_code(cls, geometry: Geometry, shape: Sequence[int], code: str) -> "Reorientation":
        """The reorientation of a grid (``geometry``, array ``shape`` (k, j, i)) to orientation ``code``."""
        target = check_orientation_code(code)
        current = orientation_code(geometry)
        source_axes, flips = [], []
        for letter in target[::-1]:  # numpy axis order: k, j, i
            axis, sign = _LETTER_AXES[letter]
            component = next(c for c in range(3) if _LETTER_AXES[current[c]][0] == axis)
            source_axes.append(2 - component)
            flips.append(_LETTER_AXES[current[component]][1] != sign)
        return cls.of_axes(geometry, shape, tuple(source_axes), tuple(flips))  # type: ignore[arg-type]

    @classmethod
    def quarter_turns(cls, geometry: Geometry, shape: Sequence[int], turns: int) -> "Reorientation":
        """Each (j, i) plane turned by ``turns`` x 90 degrees (as ``np.rot90(array, turns, axes=(1, 2))``), the
        geometry following, so the same physical voxels are indexed differently. For images whose stored in-plane
        orientation says little (cardiac short-axis MRI), a model can try each turn."""
        turns %= 4
        source_axes = (0, 1, 2) if turns % 2 == 0 else (0, 2, 1)
        flips = {0: (False, False, False), 1: (False, True, False), 2: (False, True, True),
                 3: (False, False, True)}[turns]
        return cls.of_axes(geometry, shape, source_axes, flips)

    @classmethod
    def of_axes(cls, geometry: Geometry, shape: Sequence[int], source_axes: tuple[int, int, int],
                flips: tuple[bool, bool, bool]) -> "Reorientation":
        """The permutation ``source_axes`` / ``flips`` of a grid (``geometry``, array ``shape``), with the geometry
        of the new grid (same physical voxels)."""
        first_voxel = np.zeros(3)  # (i, j, k) of the source voxel that becomes voxel 0 of the new grid
        for source, flipped in zip(source_axes, flips):
            if flipped:
                first_voxel[2 - source] = shape[source] - 1
        # New index component n (i, j, k) is numpy axis 2 - n: its direction is the source component's, maybe negated.
        columns = [2 - source_axes[2 - n] for n in range(3)]
        signs = np.array([-1.0 if flips[2 - n] else 1.0 for n in range(3)])
        new_geometry = Geometry(spacing=tuple(np.asarray(geometry.spacing)[columns]),
                                origin=tuple(geometry.ijk_to_lps(first_voxel)),
                                direction=np.asarray(geometry.direction)[:, columns] * signs)
        return cls(source_axes, flips, new_geometry)

    @property
    def is_identity(self) -> bool:
        return self.source_axes == (0, 1, 2) and not any(self.flips)

    def apply(self, array: Any) -> Any:
        """``array`` (..., k, j, i) on the source grid -> the same values on the reoriented grid."""
        lead = array.ndim - 3
        order = list(range(lead)) + [lead + a for a in self.source_axes]
        flipped = [lead + a for a, f in enumerate(self.flips) if f]
        return _flip(_permute(array, order), flipped)

    def undo(self, array: Any) -> Any:
        """``array`` (..., k, j, i) on the reoriented grid -> the same values on the source grid."""
        lead = array.ndim - 3
        unflipped = _flip(array, [lead + a for a, f in enumerate(self.flips) if f])
        inverse = [self.source_axes.index(a) for a in range(3)]
        return _permute(unflipped, list(range(lead)) + [lead + a for a in inverse])


def _permute(array: Any, order: list[int]) -> Any:
    if order == sorted(order):
        return array
    return array.permute(*order) if hasattr(array, "permute") else np.transpose(array, order)


def _flip(array: Any, axes: list[int]) -> Any:
    if not axes:
        return array
    return array.flip(axes) if hasattr(array, "permute") else np.flip(array, axes)
