"""The scene bridge: one volume node + one segmentation node driven by an engine ``InteractiveSession``.

Shells (Slicer module, Segment Editor effect, web viewer) hand over world-RAS clicks, boxes and ROI / markups
nodes; the bridge converts them to voxel prompts with the engine geometry, runs the session and writes the
result into the segmentation node as binary labelmap segments. It imports MRML classes only (``slicer.vtkMRML*``,
present both inside 3D Slicer and in the ``slicer-core`` wheel), never Qt, and never a global scene.

Segment ids are the segmentation node's ids. The engine keeps one mask per segment; the node is the truth:
whenever a segment changed outside the bridge (Paint, Slicer's own undo, ...) its engine mask is re-read before
the next prompt.

Overlap policies (what a prompt result may do to voxels of *other* segments):

* ``"overwrite"``  the new mask is written as is; other segments lose the voxels it now covers.
* ``"keep_others"`` (default) the new mask leaves out voxels of other segments; nothing else changes.
* ``"only_empty"`` only voxels that belong to no segment are added; nothing is removed from any segment,
  this one included (a negative click cannot erase here; use ``keep_others`` to refine by erasing).

A prompt only changes the slices it ran on (one plane for a click, the propagated slices for propagation);
every other voxel keeps its value. No policy ever removes a segment. ``undo()`` / ``redo()`` step through
prompts (any segment, most recent first) and restore every touched segment's labelmap exactly, other segments
that ``overwrite`` cut into included, together with the clicks accumulated on that slice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Sequence

import numpy as np

from ..engine import geometry as geo
from ..engine.cache import EmbeddingCache
from ..engine.preprocessing import IntensityPolicy
from ..engine.prompts import SlicePrompts
from ..engine.session import DEFAULT_COLORS, InteractiveSession, Propagation, PropagationPolicy
from ..engine.volume import Volume
from ..errors import InputError, PromptError
from .labelmaps import (Region, Terminology, VoxelGrid, bounding_region, ensure_segmentation_support, relative,
                        segment_ids_of, set_segment_properties)
from .markups import prompts_from_markups, roi_corners_ras
from .volumes import choose_axis, ijk_to_world_matrix, volume_from_node

log = logging.getLogger(__name__)

OverlapPolicy = Literal["overwrite", "keep_others", "only_empty"]
OVERLAP_POLICIES: tuple[str, ...] = ("overwrite", "keep_others", "only_empty")
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SlicePromptState:
    """Everything prompted so far on one slice of one segment, in continuous voxel indices (i, j, k)."""

    points_ijk: tuple[tuple[float, float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box_ijk: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None

    @property
    def empty(self) -> bool:
        return not self.points_ijk and self.box_ijk is None


PromptKey = tuple[str, int, int]  # (segment id, axis, slice index)


@dataclass
class _SegmentChange:
    segment_id: str
    region: Region
    before: np.ndarray
    after: np.ndarray


@dataclass
class _Edit:
    label: str
    changes: list[_SegmentChange]
    prompt_key: PromptKey | None = None
    prompts_before: SlicePromptState | None = None
    prompts_after: SlicePromptState | None = None


@dataclass(frozen=True)
class EditResult:
    """What one prompt did: the slices it ran on and the segments whose voxels changed."""

    segment_id: str
    axis: int
    slices: tuple[int, ...]
    changed_segments: tuple[str, ...]
    iou: float | None = None
    text: str | None = None  # the segment name the model took as a text prompt
    zoom: float = 1.0  # magnification of the focus window the clicks were answered on (1: the whole slice)
    stops: tuple[str, ...] = ()  # propagation: where and why each direction stopped ("slice 15: ...")


def _with_stops(result: EditResult, outcome: Propagation) -> EditResult:
    """The edit, with where and why its propagation stopped for the shells' status lines."""
    return replace(result, stops=tuple(str(stop) for stop in outcome.stops))


@dataclass
class _Binding:
    engine_id: str
    seen: int  # the node's modified time when the engine mask last equalled (or came from) the node


class SceneSegmenter:
    """Promptable segmentation of one volume node into one segmentation node (see the module docstring).

    ``scene`` must hold both nodes (ids or node objects). ``model`` is a ``PromptableSam`` (or any object with
    its ``encode`` / ``decode`` interface); ``session`` may be given instead of building one.
    """

    def __init__(
        self,
        scene: Any,
        volume_node: Any,
        segmentation_node: Any,
        model: Any = None,
        *,
        cache: EmbeddingCache | None = None,
        intensity: IntensityPolicy | str | None = None,
        overlap: OverlapPolicy = "keep_others",
        session: InteractiveSession | None = None,
        propagation: PropagationPolicy | None = None,
    ) -> None:
        ensure_segmentation_support()
        self.scene = scene
        self.volume_node = self._node(volume_node, "vtkMRMLVolumeNode", "volume")
        self.segmentation_node = self._node(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
        self.overlap = _check_policy(overlap)
        self.propagation = propagation
        self.volume: Volume = volume_from_node(self.volume_node)
        if session is None:
            if model is None:
                raise InputError("give a model (or a ready InteractiveSession)")
            policy = IntensityPolicy.parse(intensity) if intensity is not None else None
            session = InteractiveSession(self.volume, model, cache=cache, intensity=policy)
        elif session.volume.shape != self.volume.shape:
            raise InputError(f"session volume {session.volume.shape} does not match node '{self.volume_node.GetName()}'")
        self.session = session
        if self.segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
            # a fresh segmentation takes the volume's grid, so masks round-trip voxel for voxel
            self.segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(self.volume_node)
        if self.segmentation_node.GetDisplayNode() is None:
            self.segmentation_node.CreateDefaultDisplayNodes()
        self.grid = VoxelGrid(self.volume.shape, ijk_to_world_matrix(self.volume_node), self.segmentation_node)
        self._bindings: dict[str, _Binding] = {}
        self._prompts: dict[PromptKey, SlicePromptState] = {}
        self._last_slice: dict[str, tuple[int, int]] = {}
        self.last_segment: str | None = None  # the segment prompted most recently (for Propagate buttons)
        self._undo: list[_Edit] = []
        self._redo: list[_Edit] = []

    def _node(self, node: Any, class_name: str, what: str) -> Any:
        if isinstance(node, str):
            found = self.scene.GetNodeByID(node)
            if found is None:
                raise InputError(f"no node with id {node!r} in the scene")
            node = found
        if node is None or not node.IsA(class_name):
            raise InputError(f"select a {what} node (got {node.GetClassName() if node is not None else None})")
        if node.GetScene() is not self.scene:
            raise InputError(f"{what} '{node.GetName()}' is not in the given scene")
        return node

    # --- segments ------------------------------------------------------------------------------------------------
    def segment_ids(self) -> list[str]:
        return segment_ids_of(self.segmentation_node)

    def add_segment(self, name: str, color: Sequence[float] | None = None,
                    terminology: Terminology | str | None = None, segment_id: str | None = None) -> str:
        """A new empty segment in the node (Slicer picks the id unless ``segment_id`` is given); returns its id."""
        segmentation = self.segmentation_node.GetSegmentation()
        if segment_id and segmentation.GetSegment(segment_id) is not None:
            raise InputError(f"segment id {segment_id!r} already exists")
        rgb = list(color) if color is not None else list(DEFAULT_COLORS[segmentation.GetNumberOfSegments()
                                                                        % len(DEFAULT_COLORS)])
        new_id = segmentation.AddEmptySegment(segment_id or "", str(name), rgb)
        set_segment_properties(self.segmentation_node, new_id, name=name, color=rgb, terminology=terminology)
        return new_id

    def set_segment_properties(self, segment_id: str, name: str | None = None, color: Sequence[float] | None = None,
                               terminology: Terminology | str | None = None) -> None:
        set_segment_properties(self.segmentation_node, segment_id, name, color, terminology)

    def segment_mask(self, segment_id: str) -> np.ndarray:
        """The segment's voxels on the volume grid, bool (k, j, i), read from the node."""
        return self.grid.read(segment_id)

    # --- prompts -------------------------------------------------------------------------------------------------
    def click_ras(
        self,
        segment_id: str,
        ras_points: Sequence[Sequence[float]] | np.ndarray,
        labels: Sequence[int] | None = None,
        *,
        axis: int | None = None,
        normal: Sequence[float] | None = None,
        view: str | None = None,
        accumulate: bool = True,
        overlap: OverlapPolicy | None = None,
    ) -> EditResult:
        """Clicks (world RAS; label 1 positive, 0 negative; default all positive) on one slice of the volume.

        The slice axis comes from ``axis``, else the view ``normal`` (RAS), else ``view`` ('axial', ...). With
        ``accumulate`` the clicks join those already given on that slice (and its box), and all of them are sent
        to the model together, as SAM expects; otherwise they replace them.
        """
        points = np.atleast_2d(np.asarray(ras_points, dtype=np.float64))
        if points.size == 0:
            raise PromptError("no click given")
        if points.ndim != 2 or points.shape[1] != 3:
            raise InputError(f"RAS points must have shape (N, 3), got {np.shape(ras_points)}")
        labels_arr = np.ones(len(points), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
        if len(labels_arr) != len(points):
            raise PromptError(f"{len(points)} clicks but {len(labels_arr)} labels: give one label per click")
        axis = choose_axis(self.volume.geometry, axis, normal, view)
        ijk = self._to_ijk(points)
        index = self._single_slice(ijk, axis)
        key = (segment_id, axis, index)
        before = self._prompts.get(key, SlicePromptState())
        base = before if accumulate else SlicePromptState()
        after = replace(base, points_ijk=base.points_ijk + tuple(map(tuple, ijk.tolist())),
                        labels=base.labels + tuple(int(v) for v in labels_arr))
        return self._run_slice(segment_id, axis, index, before, after, refine=accumulate and not before.empty,
                               overlap=overlap, label="click")

    def box_ras(
        self,
        segment_id: str,
        corner_a: Sequence[float],
        corner_b: Sequence[float],
        *,
        axis: int | None = None,
        normal: Sequence[float] | None = None,
        view: str | None = None,
        overlap: OverlapPolicy | None = None,
    ) -> EditResult:
        """A 2D box from two opposite corners (world RAS) dragged on a slice view; starts that slice afresh
        (earlier clicks on it are dropped, later clicks refine the box result)."""
        axis = choose_axis(self.volume.geometry, axis, normal, view)
        corners = self._to_ijk(np.asarray([corner_a, corner_b], dtype=np.float64))
        centre = corners.mean(0)
        index = self._single_slice(centre[None], axis)
        corners[:, geo.slice_component(axis)] = index  # both corners on the slice the box was drawn on
        key = (segment_id, axis, index)
        before = self._prompts.get(key, SlicePromptState())
        after = SlicePromptState(box_ijk=(tuple(corners[0].tolist()), tuple(corners[1].tolist())))  # type: ignore[arg-type]
        return self._run_slice(segment_id, axis, index, before, after, refine=False, overlap=overlap, label="box")

    def roi(
        self,
        segment_id: str,
        roi_node: Any,
        *,
        axis: int | None = None,
        normal: Sequence[float] | None = None,
        view: str | None = None,
        overlap: OverlapPolicy | None = None,
    ) -> EditResult:
        """A 3D box from a markups ROI node: its box on the middle slice, then propagation inside its slice range."""
        axis = choose_axis(self.volume.geometry, axis, normal, view)
        corners_ijk = self.volume.geometry.ras_to_ijk(roi_corners_ras(roi_node))
        size_ijk = np.array(self.volume.shape[::-1], dtype=np.float64)
        lo = np.clip(np.floor(corners_ijk.min(0) + 0.5), 0, size_ijk - 1)
        hi = np.clip(np.ceil(corners_ijk.max(0) - 0.5), 0, size_ijk - 1)
        if np.any(corners_ijk.max(0) < -0.5) or np.any(corners_ijk.min(0) > size_ijk - 0.5):
            raise PromptError(f"ROI '{roi_node.GetName()}' lies outside the volume '{self.volume_node.GetName()}'")
        (first, last), (box_lo, box_hi) = geo.ijk_to_slice_rc(np.stack([lo, hi]), axis)
        box_rc = (float(box_lo[0]), float(box_lo[1]), float(box_hi[0]), float(box_hi[1]))
        first, last = int(first), int(last)
        if first == last:
            state = SlicePromptState(box_ijk=(tuple(lo.tolist()), tuple(hi.tolist())))  # type: ignore[arg-type]
            key = (segment_id, axis, first)
            return self._run_slice(segment_id, axis, first, self._prompts.get(key, SlicePromptState()), state,
                                   refine=False, overlap=overlap, label="roi")
        engine_id = self._engine_segment(segment_id)
        outcome = self.session.segment_box_3d(engine_id, axis, box_rc, first, last, policy=self.propagation)
        middle = (first + last) // 2
        mid_lo, mid_hi = lo.copy(), hi.copy()
        mid_lo[geo.slice_component(axis)] = mid_hi[geo.slice_component(axis)] = middle
        key = (segment_id, axis, middle)
        state = SlicePromptState(box_ijk=(tuple(mid_lo.tolist()), tuple(mid_hi.tolist())))  # type: ignore[arg-type]
        self._last_slice[segment_id] = (axis, middle)
        self.last_segment = segment_id
        return _with_stops(self._commit(segment_id, axis, outcome.written, overlap, "roi", key,
                                        self._prompts.get(key), state), outcome)

    def markups(
        self,
        segment_id: str,
        fiducial_node: Any,
        *,
        axis: int | None = None,
        normal: Sequence[float] | None = None,
        view: str | None = None,
        overlap: OverlapPolicy | None = None,
    ) -> EditResult:
        """All placed points of a point-list markups node as the clicks of one slice (labels: see ``markups``)."""
        points, labels = prompts_from_markups(fiducial_node)
        return self.click_ras(segment_id, points, labels, axis=axis, normal=normal, view=view, accumulate=False,
                              overlap=overlap)

    def propagate(
        self,
        segment_id: str,
        *,
        axis: int | None = None,
        start_index: int | None = None,
        direction: str = "both",
        overlap: OverlapPolicy | None = None,
        progress: ProgressCallback | None = None,
    ) -> EditResult:
        """Carry the segment from a slice to its neighbours until the object ends (one undo step).

        Defaults: the axis and slice last prompted for this segment.
        """
        if axis is None or start_index is None:
            last = self._last_slice.get(segment_id)
            if last is None:
                raise PromptError("prompt the object on a slice first, then propagate from there")
            axis = last[0] if axis is None else axis
            start_index = last[1] if start_index is None else start_index
        engine_id = self._engine_segment(segment_id)
        outcome = self.session.propagate(engine_id, int(axis), int(start_index), direction,
                                         policy=self.propagation, progress=progress)
        return _with_stops(self._commit(segment_id, int(axis), outcome.written, overlap, "propagate"), outcome)

    def clear_prompts(self, segment_id: str | None = None) -> None:
        """Forget accumulated clicks / boxes (of one segment, or all); the segment masks stay as they are."""
        self._prompts = {k: v for k, v in self._prompts.items() if segment_id is not None and k[0] != segment_id}

    def prompts_on(self, segment_id: str, axis: int, index: int) -> SlicePromptState:
        return self._prompts.get((segment_id, axis, index), SlicePromptState())

    # --- undo / redo ---------------------------------------------------------------------------------------------
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> bool:
        """Restore the labelmaps (and slice prompts) from before the latest prompt; False if nothing to undo."""
        if not self._undo:
            return False
        edit = self._undo.pop()
        self._restore(edit, redo=False)
        self._redo.append(edit)
        return True

    def redo(self) -> bool:
        if not self._redo:
            return False
        edit = self._redo.pop()
        self._restore(edit, redo=True)
        self._undo.append(edit)
        return True

    def _restore(self, edit: _Edit, redo: bool) -> None:
        existing = set(self.segment_ids())
        # segments that lose voxels first, so restoring never makes two segments overlap on the way
        order = sorted(edit.changes, key=lambda c: -int((c.before & ~c.after).any() if redo else
                                                         (c.after & ~c.before).any()))
        for change in order:
            if change.segment_id not in existing:
                log.warning("segment %s was deleted; its part of this undo step is skipped", change.segment_id)
                continue
            self.grid.write(change.segment_id, change.region, change.after if redo else change.before)
        if edit.prompt_key is not None:
            state = edit.prompts_after if redo else edit.prompts_before
            if state is None or state.empty:
                self._prompts.pop(edit.prompt_key, None)
            else:
                self._prompts[edit.prompt_key] = state

    # --- embeddings ----------------------------------------------------------------------------------------------
    def precompute(self, *, axis: int | None = None, center: int | None = None, normal: Sequence[float] | None = None,
                   view: str | None = None, progress: ProgressCallback | None = None):
        """Embed slice ``center`` now and the rest of the axis in a background thread, nearest first."""
        axis = choose_axis(self.volume.geometry, axis, normal, view)
        center = self.volume.shape[axis] // 2 if center is None else int(center)
        return self.session.precompute(axis, center, progress)

    def slice_index_of(self, ras: Sequence[float], axis: int) -> int:
        """The slice (along ``axis``) through the voxel nearest a world RAS point."""
        return self._single_slice(self._to_ijk(np.asarray([ras], dtype=np.float64)), axis)

    def close(self) -> None:
        self.session.close()

    # --- internals -----------------------------------------------------------------------------------------------
    def _to_ijk(self, ras: np.ndarray) -> np.ndarray:
        ijk = self.volume.geometry.ras_to_ijk(ras)
        geo.round_to_voxel(ijk, self.volume.shape)  # PromptError for a point outside the volume
        return ijk

    def _single_slice(self, ijk: np.ndarray, axis: int) -> int:
        indices, _ = geo.ijk_to_slice_rc(np.floor(ijk + 0.5).astype(np.int64), axis)
        unique = sorted(set(int(v) for v in indices))
        if len(unique) != 1:
            raise PromptError(f"clicks lie on different slices {unique} along axis {axis}: give one slice at a time")
        return unique[0]

    def _slice_prompts(self, state: SlicePromptState, axis: int, refine: bool) -> SlicePrompts:
        points_rc = np.zeros((0, 2), np.float32)
        if state.points_ijk:
            _, points_rc = geo.ijk_to_slice_rc(np.asarray(state.points_ijk, np.float64), axis)
        box = None
        if state.box_ijk is not None:
            _, corners = geo.ijk_to_slice_rc(np.asarray(state.box_ijk, np.float64), axis)
            (ra, ca), (rb, cb) = corners
            box = (float(min(ra, rb)), float(min(ca, cb)), float(max(ra, rb)), float(max(ca, cb)))
        return SlicePrompts(points_rc, np.asarray(state.labels, np.int64), box, use_previous_mask=refine)

    def _run_slice(self, segment_id: str, axis: int, index: int, before: SlicePromptState, after: SlicePromptState,
                   refine: bool, overlap: OverlapPolicy | None, label: str) -> EditResult:
        engine_id = self._engine_segment(segment_id)
        result = self.session.segment_slice(engine_id, axis, index, self._slice_prompts(after, axis, refine))
        self._last_slice[segment_id] = (axis, index)
        self.last_segment = segment_id
        key = (segment_id, axis, index)
        edit = self._commit(segment_id, axis, [index], overlap, label, key, before, after)
        return replace(edit, iou=result.iou, text=result.text, zoom=result.zoom)

    def _engine_segment(self, segment_id: str) -> str:
        """The engine segment mirroring ``segment_id``, (re)loaded from the node when the node changed."""
        segment = self.segmentation_node.GetSegmentation().GetSegment(segment_id)
        if segment is None:
            raise InputError(f"segment {segment_id!r} is not in segmentation '{self.segmentation_node.GetName()}'")
        name = segment.GetName() or segment_id  # renamed in Slicer: the engine segment (its text prompt) follows
        stamp = self.grid.modified_time(segment_id)
        binding = self._bindings.get(segment_id)
        if binding is not None and binding.seen == stamp and binding.engine_id in self.session.segments:
            self.session.segments[binding.engine_id].name = name
            return binding.engine_id
        mask = self.grid.read(segment_id)
        if binding is not None and binding.engine_id in self.session.segments:
            if np.array_equal(self.session.segments[binding.engine_id].mask, mask):
                binding.seen = stamp
                self.session.segments[binding.engine_id].name = name
                return binding.engine_id
            self.session.remove_segment(binding.engine_id)
        engine_id = self.session.add_segment_from_mask(name, mask) if mask.any() else self.session.add_segment(name)
        self._bindings[segment_id] = _Binding(engine_id, stamp)
        return engine_id

    def _commit(self, segment_id: str, axis: int, slices: Sequence[int], overlap: OverlapPolicy | None,
                label: str, prompt_key: PromptKey | None = None, prompts_before: SlicePromptState | None = None,
                prompts_after: SlicePromptState | None = None) -> EditResult:
        """Write the engine's result on ``slices`` into the node under the overlap policy, as one undo step."""
        policy = _check_policy(overlap or self.overlap)
        written = sorted(set(int(s) for s in slices))
        changes: list[_SegmentChange] = []
        binding = self._bindings[segment_id]
        try:
            if written:
                changes = self._apply_policy(segment_id, binding.engine_id, axis, written, policy)
        except Exception:
            binding.seen = -1  # engine and node may now disagree: re-read the node before the next prompt
            raise
        binding.seen = self.grid.modified_time(segment_id)  # the engine's mask is what we meant to write
        if changes or prompt_key is not None:
            self._undo.append(_Edit(label, changes, prompt_key, prompts_before, prompts_after))
            self._redo.clear()
        if prompt_key is not None:
            if prompts_after is None or prompts_after.empty:
                self._prompts.pop(prompt_key, None)
            else:
                self._prompts[prompt_key] = prompts_after
        return EditResult(segment_id, axis, tuple(written), tuple(dict.fromkeys(c.segment_id for c in changes)))

    def _apply_policy(self, segment_id: str, engine_id: str, axis: int, written: list[int],
                      policy: str) -> list[_SegmentChange]:
        region: Region = tuple(slice(written[0], written[-1] + 1) if a == axis else slice(0, n)  # type: ignore[assignment]
                               for a, n in enumerate(self.volume.shape))
        proposed = self.session.segments[engine_id].mask[region]
        editable = np.zeros(proposed.shape, bool)
        along = [i - written[0] for i in written]
        editable[(slice(None),) * axis + (along,)] = True  # only the slices the engine wrote, not gaps between
        target_before = self.grid.read(segment_id, region)
        others = {sid: m for sid, m in self.grid.read_all(region).items() if sid != segment_id}
        occupied = np.zeros(proposed.shape, bool)
        for mask in others.values():
            occupied |= mask
        target_after = target_before.copy()
        if policy == "overwrite":
            target_after[editable] = proposed[editable]
        elif policy == "keep_others":
            target_after[editable] = (proposed & ~occupied)[editable]
        else:  # only_empty
            target_after[editable] = (target_before | (proposed & ~occupied))[editable]
        new_masks = {segment_id: target_after}
        if policy == "overwrite":
            taken = target_after & editable
            for sid, mask in others.items():
                if (mask & taken).any():
                    new_masks[sid] = mask & ~taken
        befores = {segment_id: target_before, **others}
        changes = []
        for sid, after in new_masks.items():
            before = befores[sid]
            box = bounding_region(before != after, region)
            if box is None:
                continue
            local = relative(box, region)
            changes.append(_SegmentChange(sid, box, before[local].copy(), after[local].copy()))
        # others first: by the time the target grows into their voxels they have let go of them
        for change in sorted(changes, key=lambda c: c.segment_id == segment_id):
            self.grid.write(change.segment_id, change.region, change.after)
        return changes


def _check_policy(policy: str) -> str:
    if policy not in OVERLAP_POLICIES:
        raise InputError(f"overlap policy must be one of {', '.join(OVERLAP_POLICIES)}, got {policy!r}")
    return policy
