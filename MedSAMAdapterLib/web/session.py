"""What the web viewer does, without trame: one scene, its volume and segmentation, the MedSAM tool's actions.

``WebSession`` wraps a ``scene.SceneController`` (the same object the Slicer module's Logic uses), so a click
in the browser runs the same bridge code (``SceneSegmenter.click_ras`` / ``box_ras``) as a click in Slicer's
Segment Editor. The trame app only turns widgets and mouse events into these calls and shows ``status()``;
tests drive this class directly on a bare MRML scene with a stand-in model.

Every user-fixable problem raises ``errors.MedSAMAdapterError``; the app shows its message in the page and
keeps running.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..engine.volume import read_volume, write_label_map
from ..errors import InputError, PromptError
from ..scene import SceneController, add_volume_node, save_segmentation
from ..scene.bridge import EditResult, SceneSegmenter
from ..scene.labelmaps import VoxelGrid, segment_ids_of
from .interaction import Gesture, slice_normal, xy_to_ras

SEGMENTATION_FORMATS = {"seg.nrrd": ".seg.nrrd", "nii.gz": ".nii.gz"}


@dataclass
class SegmentRow:
    """One line of the page's segment list."""

    id: str
    name: str
    color: str  # '#rrggbb'
    voxels: int

    def as_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "color": self.color, "voxels": self.voxels}


@dataclass
class ActionLog:
    """The outcome of the latest action, for the page and the status endpoint."""

    message: str = ""
    error: str = ""
    seconds: float = 0.0
    count: int = 0
    history: list[float] = field(default_factory=list)

    def ok(self, message: str, seconds: float) -> None:
        self.message, self.error, self.seconds = message, "", seconds
        self.count += 1
        self.history = (self.history + [seconds])[-50:]

    def fail(self, error: str) -> None:
        self.error = error


def rgb_to_hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(max(0.0, min(1.0, float(c))) * 255)):02x}" for c in rgb[:3])


def hex_to_rgb(text: str) -> tuple[float, float, float]:
    value = (text or "").strip().lstrip("#")
    if len(value) == 8:  # #rrggbbaa from colour pickers
        value = value[:6]
    if len(value) != 6 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise InputError(f"colour {text!r}: expected #rrggbb")
    return tuple(int(value[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


class WebSession:
    """The viewer's scene state and actions (see module docstring). Single-threaded: call from the UI loop."""

    def __init__(self, scene: Any, controller: SceneController | None = None) -> None:
        self.scene = scene
        self.controller = controller or SceneController(scene)
        self.volume_node: Any = None
        self.segmentation_node: Any = None
        self.active_segment: str | None = None
        self.negative_mode = False
        self.log = ActionLog()
        self.embedding: Any = None  # engine BackgroundEmbedding of the current volume
        self.volume_changed: list[Callable[[Any], None]] = []  # the app re-points its views here

    # --- volumes -----------------------------------------------------------------------------------------------
    def load_volume(self, path: str | os.PathLike, name: str | None = None) -> Any:
        """Read an image file / DICOM folder into a new volume node with a fresh segmentation; makes it current."""
        volume = read_volume(path)
        volume.check_segmentable()
        array = volume.array.mean(axis=-1) if volume.is_rgb else volume.array  # the views show one channel
        label = name or _display_name(Path(path))
        node = add_volume_node(self.scene, np.ascontiguousarray(array, np.float32),
                               volume.geometry.ijk_to_ras_matrix(), label)
        self.set_volume(node)
        return node

    def set_volume(self, volume_node: Any) -> None:
        if self.embedding is not None:
            self.embedding.cancel()
            self.embedding = None
        if self.volume_node is not None:
            self.controller.forget(self.volume_node.GetID())  # its session, background embedder and undo history
        self.volume_node = volume_node
        self.segmentation_node = self.scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", f"{volume_node.GetName()} segmentation")
        self.segmentation_node.CreateDefaultDisplayNodes()
        self.segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        self.active_segment = None
        for callback in self.volume_changed:
            callback(volume_node)

    def segmenter(self) -> SceneSegmenter:
        if self.volume_node is None:
            raise InputError("load a volume first")
        return self.controller.segmenter(self.volume_node, self.segmentation_node)

    def precompute(self, view: str = "axial") -> Any:
        """Embed the middle slice now and the rest of the axis in the background (progress in ``status``)."""
        self.embedding = self.segmenter().precompute(view=view)
        return self.embedding

    def embedding_progress(self) -> dict:
        job = self.embedding
        if job is None:
            return {"done": 0, "total": 0, "running": False, "error": ""}
        error = f"embedding failed: {job.error}" if job.error is not None else ""
        return {"done": int(job.done), "total": int(job.total), "running": bool(job.running), "error": error}

    # --- segments ----------------------------------------------------------------------------------------------
    def add_segment(self, name: str | None = None, color: str | None = None) -> str:
        segmenter = self.segmenter()
        name = (name or "").strip() or f"Segment {len(segmenter.segment_ids()) + 1}"
        new_id = segmenter.add_segment(name, hex_to_rgb(color) if color else None)
        self.active_segment = new_id
        return new_id

    def select_segment(self, segment_id: str) -> None:
        if segment_id not in self.segment_ids():
            raise InputError(f"no segment {segment_id!r}")
        self.active_segment = segment_id

    def rename_segment(self, segment_id: str, name: str) -> None:
        if not name.strip():
            raise InputError("a segment needs a name")
        self.segmenter().set_segment_properties(segment_id, name=name.strip())

    def recolor_segment(self, segment_id: str, color: str) -> None:
        self.segmenter().set_segment_properties(segment_id, color=hex_to_rgb(color))

    def delete_segment(self, segment_id: str) -> None:
        segmentation = self.segmentation_node.GetSegmentation()
        if segmentation.GetSegment(segment_id) is None:
            raise InputError(f"no segment {segment_id!r}")
        segmentation.RemoveSegment(segment_id)
        if self.active_segment == segment_id:
            ids = self.segment_ids()
            self.active_segment = ids[-1] if ids else None

    def segment_ids(self) -> list[str]:
        return segment_ids_of(self.segmentation_node) if self.segmentation_node is not None else []

    def segment_rows(self) -> list[SegmentRow]:
        if self.segmentation_node is None or self.volume_node is None:
            return []
        segmentation = self.segmentation_node.GetSegmentation()
        grid = self._grid()
        rows = []
        for sid in self.segment_ids():
            segment = segmentation.GetSegment(sid)
            rows.append(SegmentRow(sid, segment.GetName(), rgb_to_hex(segment.GetColor()), int(grid.read(sid).sum())))
        return rows

    def _grid(self) -> VoxelGrid:
        return self.segmenter().grid

    def _target_segment(self) -> str:
        """The segment prompts go to: the selected one, else a new one (so the first click just works)."""
        if self.active_segment not in self.segment_ids():
            self.active_segment = None
        return self.active_segment or self.add_segment()

    # --- prompts -----------------------------------------------------------------------------------------------
    def gesture(self, xy_to_ras_matrix: np.ndarray, gesture: Gesture) -> EditResult:
        """A click or box from a slice view (its XYToRAS matrix) on the selected segment."""
        normal = slice_normal(xy_to_ras_matrix)
        ras = [xy_to_ras(xy_to_ras_matrix, xy) for xy in gesture.points]
        if gesture.kind == "box":
            return self._timed("box", lambda s, sid: s.box_ras(sid, ras[0], ras[1], normal=normal))
        return self._timed("click", lambda s, sid: s.click_ras(sid, [ras[0]], [gesture.label], normal=normal))

    def propagate(self) -> EditResult:
        def action(segmenter: SceneSegmenter, _segment_id: str) -> EditResult:
            if segmenter.last_segment is None:
                raise PromptError("click or drag a box on the object first, then propagate")
            return segmenter.propagate(segmenter.last_segment)  # from the slice it was last prompted on

        return self._timed("propagate", action, need_segment=False)

    def undo(self) -> bool:
        return bool(self._timed("undo", lambda s, _sid: s.undo(), need_segment=False))

    def redo(self) -> bool:
        return bool(self._timed("redo", lambda s, _sid: s.redo(), need_segment=False))

    def can_undo(self) -> bool:
        return self._bridge_flag("can_undo")

    def can_redo(self) -> bool:
        return self._bridge_flag("can_redo")

    def _bridge_flag(self, name: str) -> bool:
        return self.volume_node is not None and bool(getattr(self.segmenter(), name))

    def _timed(self, label: str, action: Callable[[SceneSegmenter, str], Any], need_segment: bool = True) -> Any:
        segmenter = self.segmenter()
        segment_id = self._target_segment() if need_segment else (self.active_segment or "")
        start = time.perf_counter()
        result = action(segmenter, segment_id)
        elapsed = time.perf_counter() - start
        slices = getattr(result, "slices", None)
        detail = f"{len(slices)} slice(s)" if slices is not None else ("done" if result else "nothing to do")
        text = getattr(result, "text", None)
        detail += f", text prompt '{text}'" if text else ""
        zoom = getattr(result, "zoom", 1.0)
        detail += f", zoomed x{zoom:.1f}" if zoom > 1.0 else ""
        stops = getattr(result, "stops", ())
        detail += f"; stopped at {'; '.join(stops)}" if stops else ""
        self.log.ok(f"{label}: {detail} in {elapsed * 1000:.0f} ms", elapsed)
        return result

    # --- automatic segmentation --------------------------------------------------------------------------------
    def auto_models(self) -> dict[str, Path]:
        return self.controller.auto_models()

    def auto_model_choices(self) -> list[str]:
        """Model names for the picker, those made for the loaded volume's kind of image first."""
        return self.controller.auto_models_for(self.volume_node)

    def auto_unavailable_reason(self) -> str:
        if self.auto_models():
            return ""
        folders = ", ".join(str(f) for f in self.controller.auto_model_folders())
        return ("no prompt-free model found: train one with `medsam-adapter train-auto DATASET --out RUN` and copy "
                f"RUN/auto_model.safetensors + .json into one of: {folders}")

    def run_auto(self, model: str, progress: Callable[[int, int], None] | None = None,
                 refine_boxes: bool = False, turn_search: bool | None = None) -> dict[int, str]:
        if self.volume_node is None:
            raise InputError("load a volume first")
        if model not in self.auto_models():
            raise InputError(f"unknown prompt-free model {model!r}; found: {sorted(self.auto_models()) or 'none'}")
        start = time.perf_counter()
        created = self.controller.run_auto(self.volume_node, self.segmentation_node, model, progress,
                                           refine_boxes=refine_boxes, turn_search=turn_search)
        self.log.ok(f"auto: {len(created)} segment(s) in {time.perf_counter() - start:.1f} s",
                    time.perf_counter() - start)
        return created

    # --- files -------------------------------------------------------------------------------------------------
    def save_segmentation(self, path: str | os.PathLike) -> Path:
        """Write all segments as ``.seg.nrrd`` (names, colours, terminology) or a NIfTI label map (1, 2, ...)."""
        target = Path(path)
        if not self.segment_ids():
            raise InputError("nothing to save: the segmentation has no segments yet")
        name = target.name.lower()
        if name.endswith(".seg.nrrd"):
            return save_segmentation(self.segmentation_node, target)
        if name.endswith((".nii.gz", ".nii")):
            labels, names, colors = self.label_map()
            return write_label_map(labels, self.segmenter().volume.geometry, target, names, colors)
        raise InputError(f"{target.name}: save as .seg.nrrd or .nii.gz")

    def label_map(self) -> tuple[np.ndarray, dict[int, str], dict[int, tuple[float, ...]]]:
        """Segments as one (k, j, i) label map, value = position in the list + 1 (later segments win)."""
        grid = self._grid()
        segmentation = self.segmentation_node.GetSegmentation()
        labels = np.zeros(grid.shape, np.uint16)
        names, colors = {}, {}
        for value, sid in enumerate(self.segment_ids(), start=1):
            labels[grid.read(sid)] = value
            segment = segmentation.GetSegment(sid)
            names[value], colors[value] = segment.GetName(), tuple(segment.GetColor())
        return labels, names, colors

    # --- status ------------------------------------------------------------------------------------------------
    def status(self) -> dict:
        """Everything the page shows, as JSON-able values (also served at ``/api/status`` for tests)."""
        return {
            "volume": self.volume_node.GetName() if self.volume_node is not None else None,
            "shape": list(self.segmenter().volume.shape) if self.volume_node is not None else None,
            "segments": [row.as_dict() for row in self.segment_rows()],
            "active_segment": self.active_segment,
            "negative_mode": self.negative_mode,
            "can_undo": self.can_undo(),
            "can_redo": self.can_redo(),
            "model": {"name": self.controller.settings.name, "adapter": self.controller.settings.adapter},
            "prompting": {"names_as_text": self.controller.names_as_text, "zoom": self.controller.focus is not None},
            "embedding": self.embedding_progress(),
            "last": {"message": self.log.message, "error": self.log.error, "seconds": self.log.seconds,
                     "count": self.log.count},
        }


def _display_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif",
                   ".tiff", ".bmp"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name or "volume"
