"""Automatic segmentation of a volume with a trained prompt-free head, and the hand-over to interactive refinement.

    labels, segments = run_auto(volume, "Resources/Models/acdc_heart_autosam")
    write_auto_segmentation(labels, volume.geometry, "out.seg.nrrd", segments)
    ids = auto_then_refine(session, (labels, segments))   # one session segment per class; clicks fix one organ

``run_auto`` / :class:`AutoSegmenter` take either kind of automatic model: a 2D head (the base model named in its
card, sha256 checked, embeds the axial planes through the embedding cache, so a following interactive session on
the same volume and model reuses them; ``AutoModel.predict_volume`` predicts slice by slice) or a volumetric model
(AutoProSAM / distilled UNet: Gaussian sliding windows, ``VolumetricAutoModel.predict_volume``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import InputError, WeightsError
from .terminology import slicer_terminology_tag, terminology_for
from .volume import Volume

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class AutoSegment:
    """One class of an automatic result: how it is written and shown."""

    name: str
    label_value: int
    color: tuple[float, float, float]
    terminology: dict[str, Any] | None = None
    voxel_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label_value": self.label_value, "color": list(self.color),
                "terminology": self.terminology, "voxel_count": self.voxel_count, **self.extra}


def segments_for(labels: np.ndarray, classes: Sequence[Any]) -> list[AutoSegment]:
    """``AutoSegment`` per class (``AutoClass`` or anything with name / label_value / color / terminology)."""
    from .volume import default_color

    out = []
    for c in classes:
        value = int(c.label_value)
        colour = tuple(float(v) for v in (c.color or default_color(value)))[:3]
        term = c.terminology if c.terminology is not None else terminology_for(c.name)
        out.append(AutoSegment(c.name, value, colour, term, int(np.count_nonzero(labels == value))))  # type: ignore
    return out


class AutoSegmenter:
    """An automatic model of either kind, loaded once, applied to any number of volumes.

    - 2D head (AutoSAM, card ``medsam-adapter/auto-head``): the card's base model embeds the axial planes through
      the embedding cache (so a following interactive session reuses them), the head predicts slice by slice.
    - volumetric (AutoProSAM or a distilled UNet, card ``medsam-adapter/auto-volumetric``): Gaussian-blended
      sliding windows over the whole volume.

    ``base_model``: an already open base model (e.g. the session's); by default the card's base model is loaded
    (``weights`` overrides the file). Its identity (registry name + sha256) must match the card. ``cache``: an
    ``EmbeddingCache`` for 2D heads (default: a new one on the default disk cache folder). ``turn_search``: try
    the four quarter turns of each plane and keep the one the model is surest of (:meth:`logits`; four times the
    work); None: as the model card says (``turn_search``, default off). ``last_turns`` says which turn won.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", *, base_model: Any = None,
                 weights: str | os.PathLike | None = None, cache: Any = None, turn_search: bool | None = None
                 ) -> None:
        from ..models.auto_classes import card_turn_search
        from ..models.volumetric import is_volumetric, load_volumetric_model

        from .cache import EmbeddingCache

        self.path = Path(path)
        self.device = device
        self.cache = cache if cache is not None else EmbeddingCache()  # also for a box refiner's session
        self.volumetric = None
        self.head = None
        if is_volumetric(path):
            self.volumetric = load_volumetric_model(path, device, base_model=base_model, weights=weights)
            self.kind, self.classes = self.volumetric.arch, self.volumetric.classes
            self.intensity, self.orientation = self.volumetric.intensity, self.volumetric.orientation
        else:
            self._open_head(base_model, weights)
        self.turn_search = card_turn_search(self.outputs.card) if turn_search is None else bool(turn_search)
        self.last_turns: int | None = None  # quarter turns of the last volume's planes (with turn_search)

    def _open_head(self, base_model: Any, weights: Any) -> None:
        from ..models.auto_heads import load_auto_model
        from ..models.checkpoints import base_identity

        self.head = load_auto_model(self.path, device=self.device)
        if base_model is None:
            from ..models.loading import open_model

            base_model = open_model(self.head.base_model, weights=weights, device=self.device, adapter="none")
        name, sha = base_identity(base_model)
        if (name, sha) != (self.head.base_model, self.head.base_sha256):
            raise WeightsError(f"automatic model {self.path.name} was trained on base model "
                               f"'{self.head.base_model}' (sha256 {self.head.base_sha256}) but the model given is "
                               f"'{name}' (sha256 {sha})")
        self.base_model = base_model
        self.kind, self.classes, self.intensity = f"autosam-{self.head.head_type}", self.head.classes, self.head.intensity
        self.orientation = self.head.orientation

    def describe(self) -> dict[str, Any]:
        """What a distilled student's card records about its teacher."""
        card = self.volumetric.card if self.volumetric is not None else self.head.card
        return {"path": str(self.path), "kind": self.kind, "tensors_sha256": card.get("tensors", {}).get("sha256"),
                "classes": [c.name for c in self.classes], "intensity": self.intensity}

    def _embedder(self, volume: Volume, progress: ProgressCallback | None) -> Any:
        from .embedder import VolumeEmbedder
        from .preprocessing import IntensityPolicy

        if volume.is_rgb:
            raise InputError("automatic segmentation of colour pictures is not supported by this head (grey only)")
        embedder = VolumeEmbedder(volume, self.base_model, self.cache, IntensityPolicy.parse(self.intensity))
        count = volume.shape[0]
        embedder.embed_indices(0, list(range(count)), (lambda d, _t: progress(d, 2 * count)) if progress else None)
        return embedder

    def _embedded(self, volume: Volume, progress: ProgressCallback | None) -> tuple[Any, ProgressCallback | None]:
        """(embedder, head progress): embedding reports the first half of the total, the head the second."""
        count = volume.shape[0]
        embedder = self._embedder(volume, progress)
        return embedder, (lambda d, _t: progress(count + d, 2 * count)) if progress else None

    def _in_model_orientation(self, volume: Volume, run: Callable[[Volume], Any]) -> Any:
        """``run`` on the volume as the model was trained to see it (its card's ``orientation``: an exact axis
        permutation / flip, no resampling), the (..., k, j, i) result mapped back onto the volume's own grid."""
        return _through(volume, volume.reorientation(self.orientation), run)

    def logits(self, volume: Volume, progress: ProgressCallback | None = None) -> Any:
        """(K, k, j, i) float32 logits of the whole volume (a torch tensor on the CPU), on the volume's own grid.

        With ``turn_search`` the model sees the planes as stored and turned by 90, 180 and 270 degrees, and the
        turn whose structures it is surest of (:func:`class_confidence`) wins: a model trained on hearts
        seen one way finds a heart stored a quarter turn away (ACDC's files lost their in-plane orientation)."""
        return self._in_model_orientation(volume, lambda work: self._best_turn(work, progress))

    def _best_turn(self, work: Volume, progress: ProgressCallback | None) -> Any:
        from .geometry import Reorientation

        turns = range(4) if self.turn_search and not work.is_rgb else range(1)
        best: tuple[float, int, Any] | None = None
        for turn in turns:
            step = (lambda d, t, n=turn: progress(n * t + d, len(turns) * t)) if progress else None
            logits = _through(work, Reorientation.quarter_turns(work.geometry, work.shape, turn),
                              lambda turned: self._model_logits(turned, step))
            score = class_confidence(logits) if len(turns) > 1 else 0.0
            if best is None or score > best[0]:
                best = (score, turn, logits)
            del logits
        assert best is not None
        self.last_turns = best[1]
        return best[2]

    def _model_logits(self, work: Volume, progress: ProgressCallback | None) -> Any:
        """(K, k, j, i) logits of a volume already in the model's orientation."""
        if self.volumetric is not None:
            return self.volumetric.logits(work, progress)

        def paste(whole: Any, box: Any, crop: Any) -> Any:
            whole[(slice(None), slice(None), *box.slices)] = crop
            return whole

        return self._zoomed(work, progress, lambda v, p: self.head.volume_logits(v, *self._embedded(v, p)),
                            lambda whole: self.head.label_map(whole.argmax(0).numpy()), paste)

    def predict(self, volume: Volume, progress: ProgressCallback | None = None, *, refiner: Any = None,
                refine_progress: ProgressCallback | None = None) -> np.ndarray:
        """Label map (k, j, i) with the classes' label values, on the volume's own grid (a CT stored as RAS or
        LPS, or transposed, gets the same result). ``refiner``: a promptable model (``open_box_refiner``) that
        redraws every class from boxes, in a session of its own on ``volume`` (:meth:`predict_refined`)."""
        if refiner is not None:
            session = self.refine_session(volume, refiner)
            try:
                return self.predict_refined(volume, session, progress=progress, refine_progress=refine_progress)
            finally:
                session.close()
        if self.turn_search:
            return self.outputs.label_map(self.logits(volume, progress).argmax(0).numpy())
        self.last_turns = 0
        if self.volumetric is not None:
            return self._in_model_orientation(volume, lambda work: self.volumetric.predict_volume(work, progress))

        def paste(whole: np.ndarray, box: Any, crop: np.ndarray) -> np.ndarray:
            # pass 1 found nothing outside the box (it was drawn around everything it kept)
            out = np.zeros_like(whole)
            out[(slice(None), *box.slices)] = crop
            return out

        return self._in_model_orientation(volume, lambda work: self._zoomed(
            work, progress, lambda v, p: self.head.predict_volume(v, *self._embedded(v, p)), lambda whole: whole,
            paste))

    def _zoomed(self, volume: Volume, progress: ProgressCallback | None, run: Callable[[Volume, Any], Any],
                found: Callable[[Any], np.ndarray], paste: Callable[[Any, Any, Any], Any]) -> Any:
        """``run`` on the whole volume; with the card's ``roi_margin``, ``run`` again on the box around what the
        first pass ``found`` (label map) and ``paste`` it in (``engine/roi.py``). Progress: each pass a half."""
        from .roi import box_around, crop_volume

        margin = self.head.roi_margin
        if margin is None:
            return run(volume, progress)
        whole = run(volume, (lambda d, t: progress(d, 2 * t)) if progress else None)
        box = box_around(found(whole) > 0, margin, self.base_model.image_size)
        if box is not None and not box.covers(volume.shape[1:]):
            zoomed = run(crop_volume(volume, box), (lambda d, t: progress(t + d, 2 * t)) if progress else None)
            whole = paste(whole, box, zoomed)
        elif progress:
            progress(1, 1)
        return whole

    @property
    def outputs(self) -> Any:
        """The loaded model's ``ClassOutputs`` (label values, single-component cleaning)."""
        return self.volumetric if self.volumetric is not None else self.head

    def slice_axis(self, volume: Volume) -> int:
        """The axis of ``volume``'s own array that the model slices along (its orientation's first axis)."""
        mapping = volume.reorientation(self.orientation)
        return 0 if mapping is None else int(mapping.source_axes[0])

    def predict_refined(self, volume: Volume, predictor: Any, policy: Any = None,
                        progress: ProgressCallback | None = None,
                        refine_progress: ProgressCallback | None = None) -> np.ndarray:
        """Label map like :meth:`predict`, then every class redrawn plane by plane by ``predictor`` (an
        ``InteractiveSession`` on this volume, e.g. :meth:`refine_session`) from boxes around the automatic masks
        (``engine/refine.py``)."""
        import torch

        from .refine import BoxRefinement, refine_with_boxes

        logits = self.logits(volume, progress)
        probabilities = np.empty(tuple(logits.shape), np.float16)  # half the memory of the logits, enough to rank
        for index in range(logits.shape[1]):
            probabilities[:, index] = torch.softmax(logits[:, index].float(), 0).numpy()
        del logits
        classes = self.outputs.class_indices(self.outputs.label_map(probabilities.argmax(0)))
        refined = refine_with_boxes(probabilities, classes, predictor, self.slice_axis(volume),
                                    policy or BoxRefinement(), refine_progress, [c.box_prompt for c in self.classes])
        return self.outputs.label_map(refined)

    def refine_session(self, volume: Volume, refiner: Any) -> Any:
        """An interactive session of the promptable model ``refiner`` (``open_box_refiner``) on ``volume``, with
        this model's intensity policy and embedding cache (a base-model refiner reuses the head's embeddings).
        No zoom on small objects: refinement boxes are loose (component box + margin), like propagation's, where an
        answer leaking out of the box says little about a lost object (README "Zoom in on small objects")."""
        from .preprocessing import IntensityPolicy
        from .session import InteractiveSession

        return InteractiveSession(volume, refiner, self.cache, IntensityPolicy.parse(self.intensity))

    def segment(self, volume: Volume, progress: ProgressCallback | None = None, *, refiner: Any = None,
                refine_progress: ProgressCallback | None = None) -> tuple[np.ndarray, list[AutoSegment]]:
        """(label map, segments) of :meth:`predict` (with ``refiner``: box-refined)."""
        labels = self.predict(volume, progress, refiner=refiner, refine_progress=refine_progress)
        return labels, segments_for(labels, self.classes)


def _through(volume: Volume, mapping: Any, run: Callable[[Volume], Any]) -> Any:
    """``run`` on ``volume`` moved onto the grid of ``mapping`` (a ``geometry.Reorientation``; None or the
    identity: the volume as it is), the (..., k, j, i) result (torch or numpy) mapped back onto the volume's grid."""
    if mapping is None or mapping.is_identity:
        return run(volume)
    back = mapping.undo(run(volume.remapped(mapping)))
    return back.contiguous() if hasattr(back, "contiguous") else np.ascontiguousarray(back)  # torch / numpy


def class_confidence(logits: Any) -> float:
    """How sure a model is of each structure, averaged over its classes: per class, the mean probability of the
    voxels it wins; a class that wins no voxel counts 0. Averaging over voxels instead would reward a view in which
    the hard class (an RV) vanishes and only easy voxels remain. Plane by plane, so a large CT needs no second
    (K, volume) array."""
    import torch

    classes = int(logits.shape[0])
    total, count = torch.zeros(classes, dtype=torch.float64), torch.zeros(classes, dtype=torch.float64)
    for index in range(logits.shape[1]):
        top, winner = torch.softmax(logits[:, index].float(), 0).max(0)
        total.index_add_(0, winner.flatten(), top.flatten().double())
        count.index_add_(0, winner.flatten(), torch.ones(winner.numel(), dtype=torch.float64))
    sure = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return float(sure[1:].mean()) if classes > 1 else 0.0


def run_auto(
    volume: Volume,
    auto_model_path: str | os.PathLike,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    *,
    base_model: Any = None,
    weights: str | os.PathLike | None = None,
    cache: Any = None,
) -> tuple[np.ndarray, list[AutoSegment]]:
    """(label map (k, j, i), one ``AutoSegment`` per class) of ``volume`` with the automatic model at
    ``auto_model_path`` (``<stem>``, ``.safetensors`` or ``.json``; a 2D head or a volumetric model).

    See :class:`AutoSegmenter` for ``base_model``, ``weights`` and ``cache``. ``progress(done, total)``: 2D heads
    report embedding (first half of the total) then prediction; volumetric models report sliding windows.
    """
    segmenter = AutoSegmenter(auto_model_path, device, base_model=base_model, weights=weights, cache=cache)
    return segmenter.segment(volume, progress)


DEFAULT_PROMPTABLE_MODEL = "litemedsam"


def open_box_refiner(segmenter: AutoSegmenter, adapter: str = "none", device: str = "cpu",
                     weights: str | os.PathLike | None = None) -> Any:
    """The promptable model that redraws an automatic result from boxes: the automatic model's base model (a
    student without one: LiteMedSAM) with ``adapter``: ``none`` (the plain base model: its embeddings are the ones
    a 2D head already computed, so refinement costs only decoder passes, and its boxes scored best), ``default``
    (the shipped click adapter) or an adapter file."""
    from ..models.loading import open_model

    name = getattr(segmenter.outputs, "base_model", None) or DEFAULT_PROMPTABLE_MODEL
    if adapter == "none" and segmenter.head is not None and weights is None:
        return segmenter.base_model
    return open_model(name, weights=weights, adapter=None if adapter == "default" else adapter, device=device)


def auto_then_refine(session: Any, auto_result: tuple[np.ndarray, Sequence[AutoSegment]],
                     include_empty: bool = True) -> dict[int, str]:
    """Create one session segment per class from an automatic result; returns {label value: segment id}.

    Each segment starts from its class mask (one undoable edit) and keeps the class's name, colour and label
    value, so prompts on one segment (clicks, boxes, propagation) correct that organ without touching the others.
    ``include_empty``: also create segments for classes the model did not find (to draw them by hand).
    """
    labels, segments = auto_result
    labels = np.asarray(labels)
    if labels.shape != tuple(session.volume.shape):
        raise InputError(f"automatic label map shape {labels.shape} differs from the session volume "
                         f"{tuple(session.volume.shape)}")
    used = {s.label_value for s in session.segments.values()}
    clash = sorted(used & {int(s.label_value) for s in segments})
    if clash:
        raise InputError(f"the session already has segments with label values {clash}; remove them first")
    ids: dict[int, str] = {}
    for seg in segments:
        mask = labels == seg.label_value
        if not include_empty and not mask.any():
            continue
        ids[int(seg.label_value)] = session.add_segment_from_mask(seg.name, mask, color=tuple(seg.color),
                                                                  label_value=int(seg.label_value))
    return ids


def segment_tags(segment: AutoSegment | Mapping[str, Any]) -> str:
    """``SegmentN_Tags`` value: status + the Slicer ``TerminologyEntry`` when the class has terminology."""
    term = segment.terminology if isinstance(segment, AutoSegment) else segment.get("terminology")
    if term is None:
        name = segment.name if isinstance(segment, AutoSegment) else segment.get("name", "")
        term = terminology_for(name)
    tags = "Segmentation.Status:inprogress|"
    if term:
        tags += f"TerminologyEntry:{slicer_terminology_tag(term)}|"
    return tags


def write_auto_segmentation(labels: np.ndarray, geometry: Any, path: str | os.PathLike,
                            classes: Sequence[AutoSegment]) -> Path:
    """Write an automatic result: ``.seg.nrrd`` with named, coloured segments whose tags carry the SNOMED CT
    terminology (Slicer shows it in the segment's terminology); other formats via ``volume.write_label_map``.

    ``volume.write_label_map`` cannot take tags yet, so the ``.seg.nrrd`` header is built here from
    ``volume.segmentation_metadata`` and the ``SegmentN_Tags`` fields are replaced (atomic write).
    """
    import SimpleITK as sitk

    from .atomic import atomic_path
    from .volume import segmentation_metadata, write_label_map

    path = Path(path)
    names = {int(c.label_value): c.name for c in classes}
    colors = {int(c.label_value): tuple(c.color) for c in classes}
    if not path.name.lower().endswith(".seg.nrrd"):
        return write_label_map(labels, geometry, path, names, colors)
    arr = np.asarray(labels)
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.dtype.kind not in "uib" or (arr.size and arr.min() < 0):
        raise InputError(f"label map must be (k, j, i) non-negative integers, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.uint8 if arr.max(initial=0) <= 255 else np.uint16)
    meta = segmentation_metadata(arr, names, colors)
    by_value = {int(c.label_value): c for c in classes}
    n = 0
    while f"Segment{n}_LabelValue" in meta:
        value = int(meta[f"Segment{n}_LabelValue"])
        if value in by_value:
            meta[f"Segment{n}_Tags"] = segment_tags(by_value[value])
        n += 1
    image = geometry.apply_to_sitk(sitk.GetImageFromArray(arr, isVector=False))
    for key, value in meta.items():
        image.SetMetaData(key, value)
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as exc:
            raise InputError(f"{path.name}: cannot be written ({str(exc).strip().splitlines()[-1]})") from None
    return path
