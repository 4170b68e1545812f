"""Volume nodes and slice views in engine terms: voxels, geometry, slice axes. MRML classes only, no Qt.

Coordinates: everything that comes from a view (clicks, slice normals, markups) is in Slicer *world* RAS.
A volume node's IJKToRAS matrix places its voxels in the node's own RAS frame; when the node sits under a
linear transform, world = transform-to-world @ IJKToRAS. ``volume_from_node`` bakes that into the
``Volume.geometry``, so ``volume.geometry.ras_to_ijk(world_ras)`` is right for any click.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..engine import geometry as geo
from ..engine.geometry import Geometry
from ..engine.volume import Volume
from ..errors import InputError

_VIEW_NAMES = {"axial": "axial", "red": "axial", "coronal": "coronal", "green": "coronal",
               "sagittal": "sagittal", "yellow": "sagittal"}


# ---- vtkMatrix4x4 <-> numpy ------------------------------------------------------------------------------------
def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def numpy_to_matrix(array: Any) -> vtk.vtkMatrix4x4:
    m = np.asarray(array, dtype=np.float64)
    if m.shape != (4, 4):
        raise InputError(f"expected a 4x4 matrix, got shape {m.shape}")
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(m[r, c]))
    return matrix


def node_to_world_matrix(node: Any) -> np.ndarray:
    """4x4 from a transformable node's own RAS to world RAS (identity when it has no parent transform).

    A non-linear parent transform (grid, B-spline) cannot be expressed on a voxel grid: InputError with advice.
    """
    parent = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if parent is None:
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(parent, None, matrix):
        raise InputError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}'; harden the transform "
            f"(Data module, right-click > Harden transform) before segmenting"
        )
    return matrix_to_numpy(matrix)


def ijk_to_world_matrix(volume_node: Any) -> np.ndarray:
    """4x4 taking voxel (i, j, k) of ``volume_node`` to world RAS (IJKToRAS, then any linear parent transform)."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = node_to_world_matrix(volume_node) @ matrix_to_numpy(ijk_to_ras)
    image = volume_node.GetImageData()
    if image is not None:  # image data whose extent does not start at 0: index 0 of the array is extent min
        i0, _, j0, _, k0, _ = image.GetExtent()
        if (i0, j0, k0) != (0, 0, 0):
            shift = np.eye(4)
            shift[:3, 3] = (i0, j0, k0)
            matrix = matrix @ shift
    return matrix


# ---- volume node -> engine Volume -----------------------------------------------------------------------------
def image_to_array(image: vtk.vtkImageData) -> np.ndarray:
    """(k, j, i[, c]) numpy view of a vtkImageData's scalars (no copy)."""
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None:
        raise InputError("the image has no voxel data")
    nx, ny, nz = image.GetDimensions()
    comps = image.GetNumberOfScalarComponents()
    arr = numpy_support.vtk_to_numpy(scalars)
    return arr.reshape((nz, ny, nx, comps) if comps > 1 else (nz, ny, nx))


def volume_from_node(volume_node: Any) -> Volume:
    """The node's voxels as an engine ``Volume``: array (k, j, i) float32 (a copy), geometry from IJKToRAS.

    Any voxel orientation works (flipped, oblique, permuted axes); a linear parent transform is included.
    3 or 4 components per voxel (colour) give an RGB volume (alpha dropped); other vector volumes are refused.
    """
    if volume_node is None:
        raise InputError("no volume selected")
    name = volume_node.GetName() or "volume"
    image = volume_node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"volume '{name}' has no image data (is it still loading?)")
    arr = image_to_array(image)
    is_rgb = arr.ndim == 4
    if is_rgb:
        if arr.shape[-1] not in (3, 4):
            raise InputError(
                f"volume '{name}' has {arr.shape[-1]} values per voxel; extract one component (Vector to Scalar "
                f"Volume module) and segment that"
            )
        arr = arr[..., :3]
    array = np.array(arr, dtype=np.float32, copy=True)  # never alias VTK memory: the node may change later
    geometry = Geometry.from_ijk_to_ras_matrix(ijk_to_world_matrix(volume_node))
    return Volume(array=array, geometry=geometry, source=name, is_rgb=is_rgb)


def add_volume_node(scene: Any, array: np.ndarray, ijk_to_ras: Any, name: str = "Volume") -> Any:
    """A new vtkMRMLScalarVolumeNode in ``scene`` holding ``array`` (k, j, i) with the given IJKToRAS matrix."""
    data = np.ascontiguousarray(array)
    if data.ndim != 3:
        raise InputError(f"volume array must be (k, j, i), got shape {data.shape}")
    image = vtk.vtkImageData()
    image.SetDimensions(data.shape[2], data.shape[1], data.shape[0])
    vtk_array = numpy_support.numpy_to_vtk(data.reshape(-1), deep=True)
    image.GetPointData().SetScalars(vtk_array)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(numpy_to_matrix(ijk_to_ras))
    node.SetAndObserveImageData(image)
    return node


# ---- slice views -> axis ---------------------------------------------------------------------------------------
def axis_for_normal(geometry: Geometry, normal_ras: Sequence[float]) -> int:
    """Numpy slice axis (0 = k, 1 = j, 2 = i) whose voxel direction is most aligned with a view normal in RAS.

    Sign does not matter. For a view that is oblique to the volume, the nearest voxel plane is used (the click
    is then segmented on the volume slice through the clicked voxel).
    """
    normal = np.asarray(normal_ras, dtype=np.float64).reshape(-1)
    length = np.linalg.norm(normal) if normal.shape == (3,) else 0.0
    if not np.isfinite(length) or length == 0:
        raise InputError(f"slice normal must be a non-zero 3-vector, got {normal_ras!r}")
    cosines = np.abs(geo.ras_to_lps(normal / length) @ np.asarray(geometry.direction))  # per (i, j, k) axis
    return int(np.argmax(cosines[::-1]))  # (k, j, i) order; ties go to the lower numpy axis


def choose_axis(geometry: Geometry, axis: int | None = None, normal: Sequence[float] | None = None,
                view: str | None = None) -> int:
    """The slice axis to segment on: explicit ``axis`` > slice ``normal`` (RAS) > ``view`` name > axial."""
    if axis is not None:
        if axis not in (0, 1, 2):
            raise InputError(f"slice axis must be 0 (k), 1 (j) or 2 (i), got {axis!r}")
        return int(axis)
    if normal is not None:
        return axis_for_normal(geometry, normal)
    if view is not None:
        key = str(view).strip().lower()
        if key not in _VIEW_NAMES:
            raise InputError(f"view must be axial, coronal or sagittal (or Red, Green, Yellow), got {view!r}")
        return geo.axis_for_view(geometry, _VIEW_NAMES[key])  # type: ignore[arg-type]
    return geo.axis_for_view(geometry, "axial")


def slice_normal(slice_node: Any) -> np.ndarray:
    """Unit normal (RAS) of a slice view: the third column of its SliceToRAS matrix."""
    normal = matrix_to_numpy(slice_node.GetSliceToRAS())[:3, 2]
    return normal / np.linalg.norm(normal)


def xy_to_ras(slice_node: Any, xy: Sequence[float]) -> np.ndarray:
    """World RAS of a pixel (x, y) of a slice view (origin bottom-left, as VTK interactors report events)."""
    x, y = (float(v) for v in xy[:2])
    return (matrix_to_numpy(slice_node.GetXYToRAS()) @ np.array([x, y, 0.0, 1.0]))[:3]
