"""Clean-up of automatic label maps: keep only the largest 3D connected component of single-object classes.

A heart chamber or a liver is one connected object; a prompt-free head that sees one slice at a time leaves
small islands of a class where another structure looks alike (a "right ventricle" in the stomach). Removing every
component but the largest is the standard remedy (nnU-Net applies it when it helps on validation). It is wrong for
classes that are several objects (two lungs merged into one label, vertebrae), so it is a per-class choice stored
with the model (``AutoClass.single_component``).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage

# 26-connectivity in 3D (8 in 2D): diagonal neighbours belong to the same object.
_FULL_CONNECTIVITY = {2: np.ones((3, 3), bool), 3: np.ones((3, 3, 3), bool)}


def keep_largest_component(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """Copy of ``labels`` where, for each label value in ``values``, only its largest connected component is
    kept; the voxels removed become background (0). Other values are untouched."""
    out = np.array(labels, copy=True)
    structure = _FULL_CONNECTIVITY.get(out.ndim)
    for value in values:
        mask = out == int(value)
        if not mask.any():
            continue
        components, count = ndimage.label(mask, structure=structure)
        if count < 2:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(np.argmax(sizes)))] = 0
    return out


def single_component_values(classes: Iterable[object]) -> list[int]:
    """Label values of the classes (``AutoClass``-like) marked ``single_component``."""
    return [int(c.label_value) for c in classes if c.single_component]


def clean_label_map(labels: np.ndarray, classes: Iterable[object]) -> np.ndarray:
    """``labels`` with the single-component classes of ``classes`` reduced to their largest component."""
    values = single_component_values(classes)
    return keep_largest_component(labels, values) if values else labels
