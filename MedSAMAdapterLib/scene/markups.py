"""Markups nodes as prompts: fiducial points -> labelled clicks, ROI boxes -> corners (world RAS, no Qt).

Point label convention (one markups node can hold both kinds of click):

* the control point's **description** decides when it names a label: ``+``, ``1``, ``pos``, ``positive``,
  ``include``, ``foreground``, ``object`` -> positive (1); ``-``, ``0``, ``neg``, ``negative``, ``exclude``,
  ``background``, ``bg`` -> negative (0) (case-insensitive, surrounding spaces ignored);
* otherwise its **selection** state decides: selected (Slicer's default for a new point) -> positive,
  unselected -> negative, so toggling the selection checkbox in the Markups table flips a point.

Points whose position is not defined (placeholders being placed, skipped points) are ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError, PromptError
from .volumes import matrix_to_numpy

POSITIVE_WORDS = frozenset({"+", "1", "pos", "positive", "include", "foreground", "fg", "object"})
NEGATIVE_WORDS = frozenset({"-", "0", "neg", "negative", "exclude", "background", "bg"})


def point_label(description: str | None, selected: bool) -> int:
    """1 (positive) or 0 (negative) for one control point, by the convention in the module docstring."""
    word = (description or "").strip().lower()
    if word in POSITIVE_WORDS:
        return 1
    if word in NEGATIVE_WORDS:
        return 0
    return 1 if selected else 0


def prompts_from_markups(fiducial_node: Any) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3) world RAS, labels (N,) int 1/0) of a point-list markups node; PromptError when it has none."""
    if fiducial_node is None:
        raise InputError("no markups node given")
    defined = fiducial_node.PositionDefined if hasattr(fiducial_node, "PositionDefined") else 2
    points, labels = [], []
    for n in range(fiducial_node.GetNumberOfControlPoints()):
        if fiducial_node.GetNthControlPointPositionStatus(n) != defined:
            continue
        ras = [0.0, 0.0, 0.0]
        fiducial_node.GetNthControlPointPositionWorld(n, ras)
        points.append(ras)
        labels.append(point_label(fiducial_node.GetNthControlPointDescription(n),
                                  bool(fiducial_node.GetNthControlPointSelected(n))))
    if not points:
        raise PromptError(f"markups '{fiducial_node.GetName()}' has no placed points")
    return np.asarray(points, dtype=np.float64), np.asarray(labels, dtype=np.int64)


def roi_corners_ras(roi_node: Any) -> np.ndarray:
    """The 8 corners (world RAS) of a markups ROI box, rotated ROIs included; PromptError for an unset ROI."""
    if roi_node is None:
        raise InputError("no ROI node given")
    if roi_node.GetNumberOfControlPoints() == 0:
        raise PromptError(f"ROI '{roi_node.GetName()}' is not placed yet")
    # side lengths in the ROI's own frame; ObjectToWorld adds its rotation, position and parent transforms
    size = np.asarray(roi_node.GetSize(), dtype=np.float64)
    half = size / 2.0
    if np.any(half <= 0):
        raise PromptError(f"ROI '{roi_node.GetName()}' has zero size {tuple(size)}; resize it around the object")
    object_to_world = matrix_to_numpy(roi_node.GetObjectToWorldMatrix())
    local = np.array([[sx, sy, sz, 1.0] for sx in (-half[0], half[0]) for sy in (-half[1], half[1])
                      for sz in (-half[2], half[2])])
    return (local @ object_to_world.T)[:, :3]
