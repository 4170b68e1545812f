"""Scene bridge: MRML nodes (volumes, segmentations, markups, slice views) <-> engine types. No Qt.

Imports ``slicer`` for its MRML classes only (``slicer.vtkMRML*``, ``slicer.vtkSlicerSegmentationsModuleLogic``,
``slicer.vtkOrientedImageData``): inside 3D Slicer these come with the application, elsewhere from the
``slicer-core`` wheel (``pip install medsam-adapter[scene]``). Every function takes its scene or nodes as
arguments; nothing here reads ``slicer.mrmlScene``.

Modules: ``volumes`` (volume nodes, slice views, axes), ``labelmaps`` (segment masks in and out of a
segmentation node, names / colours / terminology, .seg.nrrd), ``markups`` (points and ROI boxes as prompts),
``bridge`` (``SceneSegmenter``: prompts -> session -> segments, overlap policies, undo), ``controller``
(``SceneController``: what the Slicer module's Logic does).
"""

from .bridge import OVERLAP_POLICIES, EditResult, OverlapPolicy, SceneSegmenter, SlicePromptState
from .controller import ModelSettings, SceneController
from .labelmaps import (Terminology, VoxelGrid, ensure_segmentation_support, import_label_map, load_segmentation,
                        save_segmentation, segment_ids_of, set_segment_properties)
from .markups import point_label, prompts_from_markups, roi_corners_ras
from .volumes import (add_volume_node, axis_for_normal, choose_axis, ijk_to_world_matrix, slice_normal,
                      volume_from_node, xy_to_ras)

__all__ = [
    "OVERLAP_POLICIES", "EditResult", "OverlapPolicy", "SceneSegmenter", "SlicePromptState", "ModelSettings",
    "SceneController", "Terminology", "VoxelGrid", "ensure_segmentation_support", "import_label_map",
    "load_segmentation", "save_segmentation", "segment_ids_of", "set_segment_properties", "point_label",
    "prompts_from_markups", "roi_corners_ras", "add_volume_node", "axis_for_normal", "choose_axis",
    "ijk_to_world_matrix", "slice_normal", "volume_from_node", "xy_to_ras",
]
