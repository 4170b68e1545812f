"""Mouse gestures on a slice view -> MedSAM prompts, as pure functions (numpy only, no VTK, no trame).

The MedSAM tool in the page follows the Slicer effect: left click = positive point, Shift/Ctrl + left click or
right click = negative point (or every click negative while the page's "-" toggle is on), left drag = box.
View coordinates are VTK display pixels (origin bottom-left), mapped to world RAS with the slice node's XYToRAS
matrix, exactly as ``scene.volumes.xy_to_ras`` does for the Slicer effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from ..errors import InputError

#: a press and release further apart than this (pixels, either direction) is a box, not a click
DRAG_PIXELS = 5

Button = Literal["left", "right"]


@dataclass(frozen=True)
class Press:
    """Where a button went down, and whether a negative modifier was held."""

    xy: tuple[float, float]
    button: Button = "left"
    negative_modifier: bool = False


@dataclass(frozen=True)
class Gesture:
    """A finished gesture: a click (``label`` 1 positive / 0 negative at ``points[0]``) or a box (two corners)."""

    kind: Literal["click", "box"]
    points: tuple[tuple[float, float], ...]
    label: int = 1


def classify(press: Press, release_xy: Sequence[float], negative_mode: bool = False,
             drag_pixels: int = DRAG_PIXELS) -> Gesture:
    """A press and its release -> a click or a box (a right-button drag is still a negative click)."""
    end = (float(release_xy[0]), float(release_xy[1]))
    moved = max(abs(end[0] - press.xy[0]), abs(end[1] - press.xy[1]))
    if press.button == "left" and moved >= drag_pixels:
        return Gesture("box", (press.xy, end))
    negative = press.button == "right" or press.negative_modifier or negative_mode
    return Gesture("click", (press.xy,), 0 if negative else 1)


def xy_to_ras(xy_to_ras_matrix: np.ndarray | Sequence[Sequence[float]], xy: Sequence[float]) -> np.ndarray:
    """World RAS of a slice-view pixel (x, y), given the slice node's 4x4 XYToRAS matrix."""
    matrix = _matrix(xy_to_ras_matrix)
    return (matrix @ np.array([float(xy[0]), float(xy[1]), 0.0, 1.0]))[:3]


def ras_to_xy(xy_to_ras_matrix: np.ndarray | Sequence[Sequence[float]], ras: Sequence[float]) -> np.ndarray:
    """The slice-view pixel (x, y) showing a world RAS point (projected onto the slice plane)."""
    matrix = _matrix(xy_to_ras_matrix)
    xyz = np.linalg.solve(matrix, np.array([*map(float, ras[:3]), 1.0]))
    return xyz[:2]


def display_to_page(xy: Sequence[float], view_size: Sequence[int], element_box: Sequence[float]) -> tuple[float, float]:
    """A display pixel (origin bottom-left, in render-window pixels) -> page coordinates of the view element.

    ``element_box`` is the element's (left, top, width, height) in CSS pixels; the render window may be larger
    than the element by the device pixel ratio.
    """
    left, top, width, height = (float(v) for v in element_box)
    sx, sy = width / float(view_size[0]), height / float(view_size[1])
    return left + float(xy[0]) * sx, top + height - float(xy[1]) * sy


def slice_normal(xy_to_ras_matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Unit normal (RAS) of the slice plane: the third column of XYToRAS (same as of SliceToRAS)."""
    normal = _matrix(xy_to_ras_matrix)[:3, 2]
    length = float(np.linalg.norm(normal))
    if not np.isfinite(length) or length == 0:
        raise InputError("the slice view has a degenerate orientation")
    return normal / length


def _matrix(value: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    matrix = np.asarray(value, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise InputError(f"expected a 4x4 matrix, got shape {matrix.shape}")
    return matrix
