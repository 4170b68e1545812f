"""Interactive session: one volume, one promptable model, any number of segments.

Each segment is a binary mask on the volume's voxel grid. Every change (one prompt, one propagation) is one
``Edit`` that records the exact voxels before and after inside the changed bounding box, so undo/redo restore
the previous mask bit for bit, and never touch other segments.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..errors import InputError, PromptError
from . import geometry
from .appearance import ObjectAppearance
from .cache import EmbeddingCache
from .embedder import BackgroundEmbedding, ProgressCallback, VolumeEmbedder
from .focus import FocusPolicy, Window
from .preprocessing import IntensityPolicy, SliceTransform
from .prompts import SlicePrompts, VolumePrompts, box_from_mask, mask_prompt_with_clicks
from .volume import Volume

DEFAULT_COLORS = [
    (0.95, 0.35, 0.25), (0.30, 0.75, 0.35), (0.25, 0.55, 0.95), (0.95, 0.80, 0.20),
    (0.75, 0.35, 0.85), (0.20, 0.80, 0.80), (0.95, 0.55, 0.75), (0.60, 0.45, 0.30),
]


@dataclass(frozen=True)
class SliceResult:
    mask: np.ndarray  # bool (H, W) on the slice plane
    iou: float  # the model's own estimate of the mask quality
    axis: int
    index: int
    text: str | None = None  # the segment name the model took as a text prompt (None: not used or not known)
    zoom: float = 1.0  # magnification of the focus window the model answered on (1: the whole plane)


@dataclass(frozen=True)
class Stop:
    """Where one direction of propagation stopped: the first slice not written, and why."""

    index: int
    reason: str

    def __str__(self) -> str:
        return f"slice {self.index}: {self.reason}"


@dataclass(frozen=True)
class Propagation:
    """What one propagation wrote (slice indices, nearest first each way) and where each direction stopped."""

    written: list[int]
    stops: tuple[Stop, ...]


@dataclass
class Edit:
    """Voxels of one segment inside ``region`` before and after a change."""

    region: tuple[slice, slice, slice]
    before: np.ndarray
    after: np.ndarray


@dataclass
class Segment:
    name: str
    color: tuple[float, float, float]
    label_value: int
    mask: np.ndarray  # bool (k, j, i)
    undo_stack: list[Edit] = field(default_factory=list)
    redo_stack: list[Edit] = field(default_factory=list)


@dataclass(frozen=True)
class PropagationPolicy:
    """When propagation stops: the object has ended or the model jumped to something else.

    A box always yields some mask, so the end of an object is detected from the result, not from emptiness:
    too small, shrinking too abruptly, growing too abruptly (the box grows with the mask, so a mask that fills
    its box would otherwise spread slice after slice through the volume; masks under ``growth_floor_px`` may
    grow freely, as object ends do), low predicted IoU, too little overlap with the previous slice, or an answer
    that no longer looks like the object did on the start slice (``min_appearance_contrast``, engine/appearance.py:
    a model that slips onto a neighbour passes every other check, since each answer agrees with the one before;
    None turns it off).
    """

    min_area_px: int = 8
    min_area_ratio: float = 0.25
    max_area_growth: float = 1.75
    growth_floor_px: int = 64
    min_iou: float = 0.5
    min_overlap_dice: float = 0.35
    box_margin_px: float = 2.0
    box_margin_fraction: float = 0.1  # objects grow between slices: let the box grow with them
    min_appearance_contrast: float | None = 0.05
    max_slices: int | None = None


class InteractiveSession:
    """Thread-safe promptable segmentation of one volume (see module docstring)."""

    def __init__(
        self,
        volume: Volume,
        model: torch.nn.Module,
        cache: EmbeddingCache | None = None,
        intensity: IntensityPolicy | None = None,
        names_as_text: bool = True,
        focus: FocusPolicy | None = None,
    ) -> None:
        self.volume = volume
        self.model = model
        # A segment's name is its text prompt when the adapter knows it ("optic cup" vs "optic disc" for one click)
        self.names_as_text = names_as_text
        # Corrective clicks on a small object are answered on a window around it (engine/focus.py); None: never
        self.focus = focus
        self._focus_windows: dict[tuple[str, int, int], Window] = {}
        self.embedder = VolumeEmbedder(volume, model, cache, intensity)
        self.segments: dict[str, Segment] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self.background: BackgroundEmbedding | None = None

    # --- segments ------------------------------------------------------------------------------------
    def add_segment(
        self, name: str, color: tuple[float, float, float] | None = None, label_value: int | None = None
    ) -> str:
        with self._lock:
            number = next(self._ids)
            segment_id = f"segment_{number}"
            used = {s.label_value for s in self.segments.values()}
            value = label_value if label_value is not None else next(v for v in itertools.count(1) if v not in used)
            color = color or DEFAULT_COLORS[(number - 1) % len(DEFAULT_COLORS)]
            self.segments[segment_id] = Segment(name, color, value, np.zeros(self.volume.shape, bool))
            return segment_id

    def add_segment_from_mask(self, name: str, mask: np.ndarray, **kwargs) -> str:
        """Start a segment from an existing mask (an auto result, a loaded label map); undoable to empty."""
        if mask.shape != self.volume.shape:
            raise InputError(f"mask shape {mask.shape} differs from the volume shape {self.volume.shape}")
        segment_id = self.add_segment(name, **kwargs)
        self._apply(segment_id, mask.astype(bool))
        return segment_id

    def remove_segment(self, segment_id: str) -> None:
        with self._lock:
            self._segment(segment_id)
            del self.segments[segment_id]

    def segment_mask(self, segment_id: str) -> np.ndarray:
        return self._segment(segment_id).mask.copy()

    def label_volume(self) -> np.ndarray:
        """All segments as one label map on the volume grid; later segments win where segments overlap."""
        dtype = np.uint8 if all(s.label_value < 256 for s in self.segments.values()) else np.uint16
        labels = np.zeros(self.volume.shape, dtype)
        for segment in self.segments.values():
            labels[segment.mask] = segment.label_value
        return labels

    # --- prompting -----------------------------------------------------------------------------------
    def segment_slice(self, segment_id: str, axis: int, index: int, prompts: SlicePrompts) -> SliceResult:
        """Run the model on one slice and replace the segment's mask on that slice with the result."""
        with self._lock:
            segment = self._segment(segment_id)
            previous = geometry.slice_plane(segment.mask, axis, index)
            window = self._click_window(segment_id, axis, index, prompts, previous)
            result = self._predict(axis, index, prompts, previous, self.text_prompt(segment_id), window,
                                   zoom_box=True)
            self._write_plane(segment_id, axis, index, result.mask)
            return result

    def predict_slice(self, axis: int, index: int, prompts: SlicePrompts) -> SliceResult:
        """The model's mask for ``prompts`` on one slice, without touching any segment (no previous mask)."""
        with self._lock:
            return self._predict(axis, index, prompts, None, zoom_box=True)

    def segment_prompts(self, segment_id: str, prompts: VolumePrompts, axis: int) -> SliceResult:
        """Prompts in voxel indices (from RAS/LPS via ``geometry``) on the slice they lie on."""
        index, slice_prompts = prompts.on_slice(axis)
        return self.segment_slice(segment_id, axis, index, slice_prompts)

    def segment_box_3d(
        self, segment_id: str, axis: int, box_rc: tuple[float, float, float, float], first: int, last: int,
        policy: PropagationPolicy | None = None,
    ) -> Propagation:
        """A 3D box: segment the middle slice with the box, then propagate inside the slice range only (the
        middle slice first in ``written``)."""
        if not 0 <= first <= last < self.embedder.slice_count(axis):
            raise PromptError(f"slice range {first}..{last} is outside the volume along axis {axis}")
        middle = (first + last) // 2
        self.segment_slice(segment_id, axis, middle, SlicePrompts(box_rc=box_rc))
        outcome = self.propagate(segment_id, axis, middle, policy=policy, limits=(first, last))
        return Propagation([middle] + outcome.written, outcome.stops)

    def propagate(
        self,
        segment_id: str,
        axis: int,
        start_index: int,
        direction: str = "both",
        policy: PropagationPolicy | None = None,
        limits: tuple[int, int] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Propagation:
        """Prompt each next slice with the box of the previous result until the object ends (one undo step); the
        slices written, and where and why each direction stopped."""
        policy = policy or PropagationPolicy()
        if direction not in ("both", "forward", "backward"):
            raise InputError(f"direction must be both, forward or backward, not {direction!r}")
        with self._lock:
            segment = self._segment(segment_id)
            start_plane = geometry.slice_plane(segment.mask, axis, start_index)
            if not start_plane.any():
                raise PromptError(f"segment '{segment.name}' is empty on slice {start_index}: prompt it there first")
            lo, hi = limits or (0, self.embedder.slice_count(axis) - 1)
            steps = {"forward": [1], "backward": [-1], "both": [1, -1]}[direction]
            proposed = segment.mask.copy()
            appearance = self._appearance(axis, start_index, start_plane, policy)
            written: list[int] = []
            stops: list[Stop] = []
            for step in steps:
                slices, stop = self._propagate_one_way(segment_id, axis, start_index, step, (lo, hi), policy,
                                                       proposed, appearance, progress)
                written += slices
                stops += [stop] if stop is not None else []
            if written:
                region = tuple(slice(min(written), max(written) + 1) if a == axis else slice(None) for a in range(3))
                self._apply(segment_id, proposed[region], region)
            return Propagation(written, tuple(stops))

    def _appearance(self, axis: int, index: int, mask: np.ndarray,
                    policy: PropagationPolicy) -> ObjectAppearance | None:
        if policy.min_appearance_contrast is None:
            return None
        return ObjectAppearance.learn(self.embedder.embedding(axis, index), self.embedder.transform(axis, index), mask)

    def _propagate_one_way(
        self, segment_id, axis, start, step, limits, policy, proposed, appearance, progress
    ) -> tuple[list[int], Stop | None]:
        """The slices written going one way, and why it stopped (None: the range or the slice limit ended)."""
        previous = geometry.slice_plane(proposed, axis, start).copy()
        written: list[int] = []
        index = start + step
        while limits[0] <= index <= limits[1]:
            if policy.max_slices is not None and len(written) >= policy.max_slices:
                break
            box = _grown_box(previous, policy)
            prompts = SlicePrompts(box_rc=box).clipped(previous.shape)
            # No box zoom: a box grown from the previous slice is loose, so an answer leaking out of it is no sign
            # of a lost object, and zoomed propagation measured no better (README "Zoom in on small objects")
            embedding = self.embedder.embedding(axis, index)  # fetched once: the decoder and the appearance check
            result = self._predict(axis, index, prompts, None, self.text_prompt(segment_id), embedding=embedding)
            reason = _stop_reason(previous, result, policy)
            if reason is None and appearance is not None and policy.min_appearance_contrast is not None:
                transform = self.embedder.transform(axis, index)
                if appearance.contrast(embedding, transform, result.mask) < policy.min_appearance_contrast:
                    reason = "the answer no longer looks like the object"
            if reason is not None:
                return written, Stop(index, reason)
            geometry.insert_plane(proposed, axis, index, result.mask)
            written.append(index)
            if progress:
                progress(len(written), limits[1] - limits[0] + 1)
            previous = result.mask
            index += step
        return written, None

    def text_prompt(self, segment_id: str) -> str | None:
        """The segment's name when it is used as a text prompt (``names_as_text`` and the model knows it)."""
        from ..models.peft.text import understood

        name = self._segment(segment_id).name
        return name if self.names_as_text and understood(self.model, name) else None

    def _click_window(self, segment_id: str, axis: int, index: int, prompts: SlicePrompts,
                      previous: np.ndarray) -> Window | None:
        """The zoom window for corrective clicks on this segment's slice (None: the whole plane).

        Clicks zoom only when they refine an existing mask (the first click has no extent yet); their window is
        remembered per segment and slice so the next clicks can reuse it. A box starts the object afresh (its own
        window, if any, is chosen in ``_predict``).
        """
        key = (segment_id, axis, index)
        corrective = prompts.box_rc is None and prompts.has_points and prompts.use_previous_mask
        window = None
        if self.focus is not None and corrective and previous.any():
            window = self.focus.window(previous, prompts.points_rc, self._focus_windows.get(key))
        if window is None:
            self._focus_windows.pop(key, None)
        else:
            self._focus_windows[key] = window
        return window

    def _predict(self, axis: int, index: int, prompts: SlicePrompts, previous: np.ndarray | None,
                 text: str | None = None, window: Window | None = None, zoom_box: bool = False,
                 embedding: torch.Tensor | None = None) -> SliceResult:
        """The model's answer on the plane, or on ``window`` (corrective clicks). With ``zoom_box`` and a focus
        policy, a box on a small object is answered on the whole plane first and again on its window only when
        that answer lost the object (propagation leaves it off: its grown boxes are loose). ``embedding``: the
        plane's, when the caller already holds it."""
        plane = self.embedder.transform(axis, index)
        plane_shape = plane.original_hw
        has_previous = previous is not None and bool(previous.any())
        prompts.validate(plane_shape, has_previous_mask=has_previous)
        prompts = prompts.clipped(plane_shape)
        if window is None:
            if embedding is None:
                embedding = self.embedder.embedding(axis, index)
            mask, iou = self._decode(embedding, plane, prompts,
                                     previous if has_previous else None, text)
            if not zoom_box or self.focus is None or prompts.box_rc is None:
                return SliceResult(mask, iou, axis, index, text)
            window = self.focus.box_window(prompts.box_rc, prompts.points_rc, plane_shape)
            if window is None or not self.focus.doubts_box_answer(mask, prompts.box_rc):
                return SliceResult(mask, iou, axis, index, text)
        # Answered on the focus window, then pasted into the plane: into the mask being refined (it stays as it
        # was outside the window), or into an empty plane for a fresh prompt such as a box
        mask, iou = self._decode(self.embedder.window_embedding(axis, index, window),
                                 self.embedder.transform(axis, index, window), window.crop_prompts(prompts),
                                 previous[window.slices] if has_previous else None, text)  # type: ignore[index]
        refined = prompts.use_previous_mask and has_previous
        base = previous if refined else np.zeros(plane_shape, bool)
        zoom = max(plane_shape) / max(window.shape)
        return SliceResult(window.paste(base, mask), iou, axis, index, text, zoom)

    def _decode(self, embedding: torch.Tensor, transform: SliceTransform, prompts: SlicePrompts,
                previous: np.ndarray | None,
                text: str | None) -> tuple[np.ndarray, float]:
        """One decoder call on a plane or a focus window: (mask on it, the model's own IoU estimate)."""
        device = embedding.device
        points = labels = box = mask_logits = None
        if prompts.has_points:
            points = torch.as_tensor(transform.to_model_xy(prompts.points_rc), dtype=torch.float32, device=device)[None]
            labels = torch.as_tensor(prompts.point_labels, device=device)[None]
        if prompts.box_rc is not None:
            box = torch.as_tensor(transform.box_rc_to_model(*prompts.box_rc), dtype=torch.float32, device=device)[None]
        if prompts.use_previous_mask and previous is not None:
            # The mask as it stands (whoever drew it), not the model's last logits: raw logits fed back made
            # corrective clicks carve holes (prostate Dice@5 0.63 against 0.80, README "Mask feedback"). The
            # clicks are painted into it, so the mask prompt does not contradict them.
            painted = mask_prompt_with_clicks(previous, prompts.points_rc, prompts.point_labels)
            mask_logits = transform.mask_to_model_logits(painted).to(device)
        # One click is ambiguous (part or whole?): ask for three masks and keep the best-scored one.
        multimask = prompts.box_rc is None and len(prompts.points_rc) == 1 and mask_logits is None
        with torch.inference_mode():
            low_res, iou = self.model.decode(embedding, points, labels, box, mask_logits, multimask, text)
        best = int(torch.argmax(iou[0])) if multimask else 0
        mask = transform.logits_to_slice(low_res[:, best : best + 1])[0, 0].cpu().numpy() > 0
        return mask, float(iou[0, best])

    # --- undo / redo ---------------------------------------------------------------------------------
    def undo(self, segment_id: str) -> bool:
        return self._step(segment_id, redo=False)

    def redo(self, segment_id: str) -> bool:
        return self._step(segment_id, redo=True)

    def _step(self, segment_id: str, redo: bool) -> bool:
        with self._lock:
            segment = self._segment(segment_id)
            source, target = (segment.redo_stack, segment.undo_stack) if redo else (segment.undo_stack, segment.redo_stack)
            if not source:
                return False
            edit = source.pop()
            segment.mask[edit.region] = edit.after if redo else edit.before
            target.append(edit)
            return True

    # --- background embedding ------------------------------------------------------------------------
    def precompute(self, axis: int, center: int, progress: ProgressCallback | None = None) -> BackgroundEmbedding:
        """Embed ``center`` now and the rest of the axis in the background, nearest first."""
        if self.background is not None and self.background.running:
            self.background.cancel()
        self.embedder.embedding(axis, center)
        self.background = self.embedder.start_background(axis, center, progress)
        return self.background

    def close(self) -> None:
        if self.background is not None:
            self.background.cancel()
            self.background.wait(timeout=30)

    # --- internals -----------------------------------------------------------------------------------
    def _segment(self, segment_id: str) -> Segment:
        try:
            return self.segments[segment_id]
        except KeyError:
            raise InputError(f"no segment {segment_id!r}; existing: {sorted(self.segments)}") from None

    def _write_plane(self, segment_id: str, axis: int, index: int, plane: np.ndarray) -> None:
        region = tuple(slice(index, index + 1) if a == axis else slice(None) for a in range(3))
        self._apply(segment_id, np.expand_dims(plane, axis), region)

    def _apply(self, segment_id: str, after: np.ndarray, region: tuple[slice, ...] | None = None) -> None:
        """Make ``after`` the segment's voxels in ``region`` as one undoable edit (none if nothing changed).

        Only the region is compared (one plane for a click), so the cost of an edit does not grow with the
        volume; the edit keeps just the bounding box of the voxels that really changed.
        """
        segment = self._segment(segment_id)
        region = region or (slice(None),) * 3
        current = segment.mask[region]
        changed = np.argwhere(after != current)
        if changed.size == 0:
            return
        offsets = [r.indices(n)[0] for r, n in zip(region, segment.mask.shape)]
        lo, hi = changed.min(0), changed.max(0) + 1
        local = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        box = tuple(slice(int(a) + o, int(b) + o) for a, b, o in zip(lo, hi, offsets))
        edit = Edit(box, segment.mask[box].copy(), np.array(after[local], bool))  # type: ignore[arg-type]
        segment.mask[box] = edit.after  # type: ignore[index]
        segment.undo_stack.append(edit)
        segment.redo_stack.clear()


def _grown_box(mask: np.ndarray, policy: PropagationPolicy) -> tuple[float, float, float, float]:
    r0, c0, r1, c1 = box_from_mask(mask)  # type: ignore[misc]
    grow_r = max(policy.box_margin_px, policy.box_margin_fraction * (r1 - r0 + 1))
    grow_c = max(policy.box_margin_px, policy.box_margin_fraction * (c1 - c0 + 1))
    return (r0 - grow_r, c0 - grow_c, r1 + grow_r, c1 + grow_c)


def _stop_reason(previous: np.ndarray, result: SliceResult, policy: PropagationPolicy) -> str | None:
    """Why the answer on the next slice ends propagation (None: it continues); the appearance check is separate."""
    area, previous_area = int(result.mask.sum()), int(previous.sum())
    if area < policy.min_area_px or area < policy.min_area_ratio * previous_area:
        return "the object ended (the mask shrank)"
    if previous_area >= policy.growth_floor_px and area > policy.max_area_growth * previous_area:
        return "the mask ballooned"
    if result.iou < policy.min_iou:
        return "the model was unsure (low predicted IoU)"
    overlap = 2.0 * np.logical_and(previous, result.mask).sum() / max(area + previous_area, 1)
    return None if overlap >= policy.min_overlap_dice else "the mask jumped away from the previous slice"


SessionFactory = Callable[[Volume], InteractiveSession]
