"""Segment masks in and out of a vtkMRMLSegmentationNode on a volume's voxel grid (MRML classes only, no Qt).

A segmentation keeps each segment's binary labelmap in *layers*: one vtkOrientedImageData can hold several
non-overlapping segments, each with its own label value. ``VoxelGrid`` reads any segment (or all segments at
once, one resample per layer) inside a region of the volume grid, and replaces a segment's voxels inside a
region exactly, leaving every other voxel of that segment and every other segment untouched.

Regions are numpy slices ``(k, j, i)`` of the volume array; VTK extents are ``(i0, i1, j0, j1, k0, k1)``
inclusive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..engine.atomic import atomic_path
from ..errors import InputError
from .volumes import image_to_array, matrix_to_numpy, node_to_world_matrix, numpy_to_matrix

BINARY_LABELMAP = "Binary labelmap"
Region = tuple[slice, slice, slice]


def ensure_segmentation_support() -> None:
    """Register the labelmap <-> surface converter rules if nobody has (Slicer's Segmentations module does this
    at startup; a bare MRML library, e.g. the slicer-core wheel, does not). Without them a segmentation
    cannot even create an empty binary labelmap."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


# ---- regions ---------------------------------------------------------------------------------------------------
def region_to_extent(region: Region) -> tuple[int, int, int, int, int, int]:
    (k, j, i) = region
    return (i.start, i.stop - 1, j.start, j.stop - 1, k.start, k.stop - 1)


def extent_to_region(extent: Sequence[int]) -> Region | None:
    i0, i1, j0, j1, k0, k1 = (int(v) for v in extent)
    if i1 < i0 or j1 < j0 or k1 < k0:
        return None
    return (slice(k0, k1 + 1), slice(j0, j1 + 1), slice(i0, i1 + 1))


def region_shape(region: Region) -> tuple[int, int, int]:
    return tuple(s.stop - s.start for s in region)  # type: ignore[return-value]


def union_region(a: Region | None, b: Region | None) -> Region | None:
    if a is None or b is None:
        return a or b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


def intersect_region(a: Region, b: Region) -> Region | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.stop <= s.start for s in out) else out  # type: ignore[return-value]


def relative(inner: Region, outer: Region) -> Region:
    """``inner`` expressed in the coordinates of an array covering ``outer``."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))  # type: ignore[return-value]


def bounding_region(mask: np.ndarray, offset: Region | None = None) -> Region | None:
    """Tight region of the True voxels of ``mask`` (shifted by ``offset``'s start), None when empty."""
    hits = np.argwhere(mask)
    if hits.size == 0:
        return None
    lo, hi = hits.min(0), hits.max(0) + 1
    starts = [s.start for s in offset] if offset is not None else [0, 0, 0]
    return tuple(slice(int(a) + o, int(b) + o) for a, b, o in zip(lo, hi, starts))  # type: ignore[return-value]


# ---- the volume grid inside a segmentation ----------------------------------------------------------------------
class VoxelGrid:
    """The voxel lattice of a volume, expressed in a segmentation node's own coordinates.

    ``ijk_to_world``: voxel -> world RAS (see ``volumes.ijk_to_world_matrix``). Segment labelmaps live in the
    segmentation node's frame, so the grid carries ``ijk_to_node = inverse(node_to_world) @ ijk_to_world``.
    """

    def __init__(self, shape: Sequence[int], ijk_to_world: np.ndarray, segmentation_node: Any) -> None:
        self.shape = tuple(int(v) for v in shape)  # (k, j, i)
        self.segmentation_node = segmentation_node
        self.ijk_to_world = np.asarray(ijk_to_world, dtype=np.float64)
        self.refresh_transform()

    @property
    def full(self) -> Region:
        return tuple(slice(0, n) for n in self.shape)  # type: ignore[return-value]

    def refresh_transform(self) -> None:
        """Recompute the grid in the segmentation's frame (call after its parent transform changed)."""
        to_world = node_to_world_matrix(self.segmentation_node)
        self.ijk_to_node = np.linalg.solve(to_world, self.ijk_to_world)
        self._matrix = numpy_to_matrix(self.ijk_to_node)

    # --- vtkOrientedImageData on the grid ------------------------------------------------------------------------
    def image(self, region: Region, values: np.ndarray | None = None) -> Any:
        """A vtkOrientedImageData covering ``region`` of the grid (uint8 ``values`` if given, else geometry only)."""
        image = slicer.vtkOrientedImageData()
        image.SetExtent(*region_to_extent(region))
        image.SetImageToWorldMatrix(self._matrix)
        if values is not None:
            data = np.ascontiguousarray(values, dtype=np.uint8)
            if data.shape != region_shape(region):
                raise InputError(f"values of shape {data.shape} do not fill region of shape {region_shape(region)}")
            image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(data.reshape(-1), deep=True))
        return image

    def matches(self, layer: Any) -> bool:
        m = vtk.vtkMatrix4x4()
        layer.GetImageToWorldMatrix(m)
        return bool(np.allclose(matrix_to_numpy(m), self.ijk_to_node, rtol=0, atol=1e-6))

    def layer_region(self, layer: Any) -> Region | None:
        """The part of the grid a layer's extent covers (a bounding region; None when the layer is empty)."""
        own = extent_to_region(layer.GetExtent())
        if own is None:
            return None
        if not self.matches(layer):  # another lattice: map the extent's corners onto this grid
            m = vtk.vtkMatrix4x4()
            layer.GetImageToWorldMatrix(m)
            layer_to_grid = np.linalg.solve(self.ijk_to_node, matrix_to_numpy(m))
            (k, j, i) = own
            corners = np.array([[a, b, c, 1.0] for a in (i.start - 0.5, i.stop - 0.5)
                                for b in (j.start - 0.5, j.stop - 0.5) for c in (k.start - 0.5, k.stop - 0.5)])
            ijk = (corners @ layer_to_grid.T)[:, :3]
            lo = np.floor(ijk.min(0) + 0.5).astype(int) - 1
            hi = np.ceil(ijk.max(0) - 0.5).astype(int) + 2
            own = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        return intersect_region(own, self.full)

    def layer_values(self, layer: Any, region: Region) -> np.ndarray | None:
        """Label values of a layer on ``region`` of the grid (nearest neighbour), None when they do not meet."""
        covered = self.layer_region(layer)
        if covered is None or intersect_region(covered, region) is None:
            return None
        if self.matches(layer):
            part = intersect_region(extent_to_region(layer.GetExtent()), region)  # type: ignore[arg-type]
            if part is None:
                return None
            out = np.zeros(region_shape(region), dtype=np.int64)
            src = image_to_array(layer)
            out[relative(part, region)] = src[relative(part, extent_to_region(layer.GetExtent()))]  # type: ignore[arg-type]
            return out
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            layer, self.image(region), resampled, False, False)
        got = extent_to_region(resampled.GetExtent())
        if got is None or resampled.GetPointData().GetScalars() is None:
            return None
        out = np.zeros(region_shape(region), dtype=np.int64)
        part = intersect_region(got, region)
        if part is not None:
            out[relative(part, region)] = image_to_array(resampled)[relative(part, got)]
        return out

    # --- segments ------------------------------------------------------------------------------------------------
    def _segment(self, segment_id: str) -> Any:
        segment = self.segmentation_node.GetSegmentation().GetSegment(segment_id)
        if segment is None:
            raise InputError(f"segment {segment_id!r} is not in segmentation '{self.segmentation_node.GetName()}'")
        return segment

    def _layer(self, segment_id: str) -> Any:
        return self._segment(segment_id).GetRepresentation(BINARY_LABELMAP)

    def segment_region(self, segment_id: str) -> Region | None:
        """A region of the grid that contains all voxels of the segment (its layer's extent), None if empty."""
        layer = self._layer(segment_id)
        return None if layer is None else self.layer_region(layer)

    def read(self, segment_id: str, region: Region | None = None) -> np.ndarray:
        """Bool mask of one segment on ``region`` (default: the whole grid)."""
        region = region or self.full
        segment = self._segment(segment_id)
        layer = segment.GetRepresentation(BINARY_LABELMAP)
        values = None if layer is None else self.layer_values(layer, region)
        if values is None:
            return np.zeros(region_shape(region), dtype=bool)
        return values == segment.GetLabelValue()

    def read_all(self, region: Region, segment_ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Bool masks of many segments on ``region``, resampling each shared layer once; empty ones left out."""
        segmentation = self.segmentation_node.GetSegmentation()
        ids = list(segment_ids) if segment_ids is not None else segment_ids_of(self.segmentation_node)
        by_layer: dict[str, tuple[Any, list[str]]] = {}
        for sid in ids:
            segment = segmentation.GetSegment(sid)
            layer = segment.GetRepresentation(BINARY_LABELMAP) if segment is not None else None
            if layer is None:
                continue
            key = layer.GetAddressAsString("vtkOrientedImageData")
            by_layer.setdefault(key, (layer, []))[1].append(sid)
        masks: dict[str, np.ndarray] = {}
        for layer, sids in by_layer.values():
            values = self.layer_values(layer, region)
            if values is None:
                continue
            for sid in sids:
                mask = values == segmentation.GetSegment(sid).GetLabelValue()
                if mask.any():
                    masks[sid] = mask
        return masks

    def write(self, segment_id: str, region: Region, values: np.ndarray) -> None:
        """Make the segment's voxels in ``region`` equal ``values`` (bool); all its other voxels stay as they are.

        The segment is replaced as a whole (MODE_REPLACE) by its new content over the bounding box of its old
        extent and ``region``. Segments sharing its layer are never overwritten: where the new voxels would
        overlap them, Slicer moves this segment to a layer of its own.
        """
        self._segment(segment_id)
        values = np.asarray(values, dtype=bool)
        if values.shape != region_shape(region):
            raise InputError(f"values of shape {values.shape} do not fill region of shape {region_shape(region)}")
        box = union_region(self.segment_region(segment_id), region)
        content = self.read(segment_id, box)
        content[relative(region, box)] = values  # type: ignore[arg-type]
        tight = bounding_region(content, box)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if tight is None:  # empty: replace by one background voxel
            first = tuple(slice(s.start, s.start + 1) for s in region)
            image = self.image(first, np.zeros((1, 1, 1), np.uint8))  # type: ignore[arg-type]
        else:
            image = self.image(tight, content[relative(tight, box)])  # type: ignore[arg-type]
        if not logic.SetBinaryLabelmapToSegment(image, self.segmentation_node, segment_id, logic.MODE_REPLACE):
            raise InputError(f"could not write segment {segment_id!r} into '{self.segmentation_node.GetName()}'")

    def modified_time(self, segment_id: str) -> int:
        """Changes whenever the segment's voxels (or anything in its layer) or its label value change."""
        segment = self._segment(segment_id)
        layer = segment.GetRepresentation(BINARY_LABELMAP)
        return max(segment.GetMTime(), layer.GetMTime() if layer is not None else 0)


def segment_ids_of(segmentation_node: Any) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


# ---- names, colours, terminology --------------------------------------------------------------------------------
Code = tuple[str, str, str]  # (coding scheme designator, code value, code meaning), e.g. ("SCT", "10200004", "Liver")


@dataclass(frozen=True)
class Terminology:
    """A DICOM-style terminology entry as Slicer stores it on a segment (``vtkSegment.SetTerminology``).

    Serialised as Slicer does: ``context~category~type~typeModifier~regionContext~region~regionModifier``
    with each code written ``scheme^value^meaning`` (``^^`` when absent).
    """

    category: Code
    type: Code
    type_modifier: Code | None = None
    region: Code | None = None
    region_modifier: Code | None = None
    context: str = "Segmentation category and type - 3D Slicer General Anatomy list"
    region_context: str = "Anatomic codes - DICOM master list"

    def serialize(self) -> str:
        def code(c: Code | None) -> str:
            return "^".join(c) if c else "^^"

        return "~".join([self.context, code(self.category), code(self.type), code(self.type_modifier),
                         self.region_context, code(self.region), code(self.region_modifier)])

    @classmethod
    def parse(cls, text: str) -> "Terminology":
        parts = text.split("~")
        if len(parts) != 7:
            raise InputError(f"terminology entry must have 7 '~'-separated fields, got {len(parts)}: {text!r}")

        def code(field: str) -> Code | None:
            items = field.split("^")
            if len(items) != 3:
                raise InputError(f"terminology code must be scheme^value^meaning, got {field!r}")
            return None if not any(items) else (items[0], items[1], items[2])

        category, type_ = code(parts[1]), code(parts[2])
        if category is None or type_ is None:
            raise InputError(f"terminology entry needs a category and a type: {text!r}")
        return cls(category, type_, code(parts[3]), code(parts[5]), code(parts[6]), parts[0], parts[4])


def set_segment_properties(segmentation_node: Any, segment_id: str, name: str | None = None,
                           color: Sequence[float] | None = None,
                           terminology: "Terminology | str | None" = None) -> None:
    """Name, colour (r, g, b in 0..1) and terminology tag of a segment; None leaves a property unchanged."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segment {segment_id!r} is not in segmentation '{segmentation_node.GetName()}'")
    if name is not None:
        segment.SetName(str(name))
        segment.SetNameAutoGenerated(False)
    if color is not None:
        rgb = [float(v) for v in color]
        if len(rgb) != 3 or not all(0.0 <= v <= 1.0 for v in rgb):
            raise InputError(f"segment colour must be three values in 0..1, got {color!r}")
        segment.SetColor(rgb)
    if terminology is not None:
        text = terminology.serialize() if isinstance(terminology, Terminology) else str(terminology)
        Terminology.parse(text)  # refuse malformed strings before Slicer stores them
        segment.SetTerminology(text)


def import_label_map(grid: "VoxelGrid", labels: np.ndarray, names: "dict[int, str] | None" = None,
                     colors: "dict[int, Sequence[float]] | None" = None,
                     terminologies: "dict[int, Terminology | str] | None" = None,
                     values: "Sequence[int] | None" = None) -> dict[int, str]:
    """Add one new segment per label value of a (k, j, i) label map on ``grid`` (e.g. an automatic result).

    ``values``: the label values to create segments for (default: the non-zero values present); a listed value
    absent from ``labels`` gives an empty segment, to be drawn by hand. Existing segments are left alone.
    Returns {label value: new segment id}.
    """
    ensure_segmentation_support()  # a scene where no bridge ran yet has no labelmap representation
    from ..engine.volume import default_color

    labels = np.asarray(labels)
    if labels.shape != grid.shape:
        raise InputError(f"label map of shape {labels.shape} does not match the volume grid {grid.shape}")
    names, colors, terms = dict(names or {}), dict(colors or {}), dict(terminologies or {})
    wanted = sorted(int(v) for v in (values if values is not None else np.unique(labels)) if int(v) != 0)
    segmentation = grid.segmentation_node.GetSegmentation()
    created: dict[int, str] = {}
    for value in wanted:
        name = names.get(value, f"Segment_{value}")
        color = [float(c) for c in colors.get(value, default_color(value))][:3]
        segment_id = segmentation.AddEmptySegment("", name, color)
        set_segment_properties(grid.segmentation_node, segment_id, name=name, color=color,
                               terminology=terms.get(value))
        mask = labels == value
        box = bounding_region(mask)
        if box is not None:
            grid.write(segment_id, box, mask[box])  # type: ignore[index]
        created[value] = segment_id
    return created


# ---- .seg.nrrd -------------------------------------------------------------------------------------------------
def _storage_node(node: Any) -> Any:
    scene = node.GetScene()
    if scene is None:
        raise InputError(f"segmentation '{node.GetName()}' is not in a scene")
    storage = node.GetStorageNode()
    if storage is None or not storage.IsA("vtkMRMLSegmentationStorageNode"):
        storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        node.SetAndObserveStorageNodeID(storage.GetID())
    return storage


def save_segmentation(segmentation_node: Any, path: str | os.PathLike) -> Path:
    """Write the segmentation (all segments, names, colours, terminology) to a ``.seg.nrrd`` file, atomically."""
    target = Path(path)
    if not target.name.lower().endswith(".seg.nrrd"):
        raise InputError(f"{target.name}: a segmentation is saved as .seg.nrrd")
    storage = _storage_node(segmentation_node)
    with atomic_path(target) as tmp:
        storage.SetFileName(str(tmp))
        if not storage.WriteData(segmentation_node):
            raise InputError(f"could not write {target}")
    storage.SetFileName(str(target))
    return target


def load_segmentation(scene: Any, path: str | os.PathLike, name: str | None = None) -> Any:
    """Read a ``.seg.nrrd`` into a new vtkMRMLSegmentationNode of ``scene``."""
    ensure_segmentation_support()
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or source.name.split(".")[0])
    storage = _storage_node(node)
    storage.SetFileName(str(source))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError(f"{source.name}: cannot be read as a segmentation")
    return node
