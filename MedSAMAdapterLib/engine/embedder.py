"""Per-volume slice embedding: preprocessing + encoder + cache, with a background precompute worker.

The slice the user is looking at is embedded first (on the caller's thread); the rest of the volume is
embedded by a worker thread, nearest slices first, so the next slices a user scrolls to are ready soonest.
The worker holds the encoder lock for one small batch at a time, so a foreground request waits at most one batch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import geometry
from .cache import EmbeddingCache, EmbeddingKey, array_fingerprint
from .focus import Window
from .preprocessing import IntensityPolicy, SliceTransform, prepare_slice, volume_to_display_range
from .volume import Volume

ProgressCallback = Callable[[int, int], None]  # (done, total)


def nearest_first(center: int, count: int) -> list[int]:
    """Slice indices ordered by distance from ``center``: c, c+1, c-1, c+2, c-2, ..."""
    order = [center]
    for step in range(1, count):
        for candidate in (center + step, center - step):
            if 0 <= candidate < count:
                order.append(candidate)
    return order[:count]


def encoder_is_frozen(model: torch.nn.Module) -> bool:
    """Cached embeddings are only valid for an encoder whose weights cannot change under us."""
    return not any(p.requires_grad for p in model.image_encoder.parameters())


class VolumeEmbedder:
    """Serves (embedding, SliceTransform) for any slice of one volume, along any of the three axes."""

    def __init__(
        self,
        volume: Volume,
        model: torch.nn.Module,
        cache: EmbeddingCache | None = None,
        intensity: IntensityPolicy | None = None,
        batch_size: int = 2,
    ) -> None:
        from ..models.registry import model_fingerprint

        volume.check_segmentable()
        self.volume = volume
        self.model = model.eval()
        self.cache = cache
        self.intensity = intensity or IntensityPolicy.parse("auto")
        self.batch_size = batch_size
        self.display = volume_to_display_range(volume.array, self.intensity)
        self.volume_hash = array_fingerprint(volume.array)
        self.model_fingerprint = model_fingerprint(model)
        spec = model.spec
        self.preprocessing_id = f"{self.intensity.id}|{spec.normalization}|{spec.image_size}"
        # SAM's mask prompt / low-res logits are 4x the embedding grid (256 for SAM-1024 and LiteMedSAM-256).
        self.low_res_size = 4 * getattr(model, "embedding_size", spec.image_size // 16)
        self._encoder_lock = threading.Lock()
        self.device = next(model.parameters()).device

    # --- single slices -------------------------------------------------------------------------------
    def slice_count(self, axis: int) -> int:
        return self.volume.array.shape[axis]

    def plane(self, axis: int, index: int) -> np.ndarray:
        """The display-range (0..255) plane that is fed to the model."""
        if not 0 <= index < self.slice_count(axis):
            from ..errors import PromptError

            raise PromptError(f"slice {index} is outside 0..{self.slice_count(axis) - 1} along axis {axis}")
        return geometry.slice_plane(self.display, axis, index)

    def transform(self, axis: int, index: int, window: Window | None = None) -> SliceTransform:
        """Slice (or focus window) <-> model-space mapping; every slice along one axis has the same shape."""
        shape = window.shape if window is not None else tuple(n for a, n in enumerate(self.volume.shape) if a != axis)
        return SliceTransform.for_shape(shape, self.model.spec.image_size, self.low_res_size)

    def key(self, axis: int, index: int, window: Window | None = None) -> EmbeddingKey:
        preprocessing = self.preprocessing_id if window is None else f"{self.preprocessing_id}|window={window.id}"
        return EmbeddingKey(self.volume_hash, self.model_fingerprint, preprocessing, axis, index)

    def embedding(self, axis: int, index: int) -> torch.Tensor:
        """(1, C, h, w) float32 embedding on the model's device; computed now if not cached."""
        cached = self._cached(self.key(axis, index))
        if cached is not None:
            return cached.to(self.device)
        return self._encode(axis, [index])[0:1]

    def window_embedding(self, axis: int, index: int, window: Window) -> torch.Tensor:
        """(1, C, h, w) embedding of a focus window of one slice, resized to the model input; cached like a slice."""
        key = self.key(axis, index, window)
        cached = self._cached(key)
        if cached is not None:
            return cached.to(self.device)
        return self._encode_planes([self.plane(axis, index)[window.slices]], [key])

    def is_ready(self, axis: int, index: int) -> bool:
        return self._use_cache and self.cache is not None and self.cache.contains(self.key(axis, index))

    # --- many slices ---------------------------------------------------------------------------------
    def embed_indices(
        self, axis: int, indices: Sequence[int], progress: ProgressCallback | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Embed (and cache) the given slices in batches; returns how many were computed."""
        missing = [i for i in indices if not self.is_ready(axis, i)]
        done = len(indices) - len(missing)
        if progress:
            progress(done, len(indices))
        computed = 0
        for batch in _batches(missing, self.batch_size):
            if stop is not None and stop.is_set():
                break
            self._encode(axis, batch)
            computed += len(batch)
            if progress:
                progress(done + computed, len(indices))
        return computed

    def start_background(
        self, axis: int, center: int, progress: ProgressCallback | None = None
    ) -> "BackgroundEmbedding":
        job = BackgroundEmbedding(self, axis, nearest_first(center, self.slice_count(axis)), progress)
        job.start()
        return job

    # --- internals -----------------------------------------------------------------------------------
    @property
    def _use_cache(self) -> bool:
        return self.cache is not None and encoder_is_frozen(self.model)

    def _cached(self, key: EmbeddingKey) -> torch.Tensor | None:
        if not self._use_cache:
            return None
        return self.cache.get(key)  # type: ignore[union-attr]

    def _encode(self, axis: int, indices: Sequence[int]) -> torch.Tensor:
        return self._encode_planes([self.plane(axis, i) for i in indices], [self.key(axis, i) for i in indices])

    def _encode_planes(self, planes: Sequence[np.ndarray], keys: Sequence[EmbeddingKey]) -> torch.Tensor:
        spec = self.model.spec
        inputs = [prepare_slice(plane, spec.image_size, spec.normalization)[0] for plane in planes]
        batch = torch.stack(inputs).to(self.device)
        with self._encoder_lock, torch.inference_mode():
            embeddings = self.model.encode(batch)
        if self._use_cache:
            # The cache stores fp16: hand out the same rounded values now, so a result never depends on
            # whether its embedding was just computed or read back from the cache.
            embeddings = embeddings.half()
            for key, embedding in zip(keys, embeddings):
                self.cache.put(key, embedding.unsqueeze(0))  # type: ignore[union-attr]
        return embeddings.float()


@dataclass
class BackgroundEmbedding:
    """A worker thread embedding slices nearest-first; ``cancel()`` stops it after the current batch."""

    embedder: VolumeEmbedder
    axis: int
    order: list[int]
    progress: ProgressCallback | None = None
    done: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="medsam-embed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        def report(done: int, total: int) -> None:
            self.done = done
            if self.progress:
                self.progress(done, total)

        try:
            self.embedder.embed_indices(self.axis, self.order, report, self._stop)
        except BaseException as exc:  # surfaced to the shell through .error, never lost silently
            self.error = exc

    def cancel(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def total(self) -> int:
        return len(self.order)


def _batches(items: Iterable[int], size: int) -> Iterable[list[int]]:
    batch: list[int] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
