"""Frozen-encoder embeddings for training from cached planes (the fine-tuning trainer's cached-embedding mode)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..engine.focus import Window
from ..engine.preprocessing import SliceTransform
from .datasets import SLICE_AXIS, SliceDataset


class CachedEmbeddings:
    """Frozen-encoder embeddings of one dataset's planes via ``VolumeEmbedder`` + ``EmbeddingCache``.

    The cache key uses the *base* model's fingerprint (``model.peft_base_sha256``, recorded by ``apply_peft``):
    a frozen encoder gives the base model's embeddings whatever the decoder adapters hold, so the entries are
    shared with interactive sessions on the base model and survive a resume.
    """

    def __init__(self, dataset: SliceDataset, model: nn.Module, cache: Any, intensity: str, batch_size: int,
                 device: torch.device) -> None:
        from ..engine.embedder import VolumeEmbedder
        from ..engine.preprocessing import IntensityPolicy

        self.device = device
        self.embedders = []
        adapted_sha = model.weights_sha256
        model.weights_sha256 = getattr(model, "peft_base_sha256", None) or adapted_sha
        try:
            for case in dataset.cases:
                emb = VolumeEmbedder(case.volume, model, cache, IntensityPolicy.parse(intensity), batch_size)
                emb.display = case.display  # same values (same policy): share the array, not a second copy
                self.embedders.append(emb)
        finally:
            model.weights_sha256 = adapted_sha  # None after surgery: the adapted weights are not the file's

    def precompute(self, planes: dict[int, list[int]], progress: Callable[[int, int], None] | None = None) -> int:
        """Embed the planes not yet cached; returns how many were computed."""
        total = sum(len(v) for v in planes.values())
        done = computed = 0
        for ci, indices in planes.items():
            base = done

            def report(d: int, _t: int, _base: int = base) -> None:
                if progress:
                    progress(_base + d, total)

            computed += self.embedders[ci].embed_indices(SLICE_AXIS, indices, report)
            done += len(indices)
        return computed

    def get(self, case_index: int, slice_index: int, window: Window | None = None) -> tuple[Tensor, SliceTransform]:
        """A plane's embedding, or its focus window's (computed on first use, then cached like the planes)."""
        emb = self.embedders[case_index]
        tensor = emb.embedding(SLICE_AXIS, slice_index) if window is None else \
            emb.window_embedding(SLICE_AXIS, slice_index, window)
        tensor = tensor.to(self.device, torch.float32)
        return tensor.clone(), emb.transform(SLICE_AXIS, slice_index, window)  # clone: never an inference tensor
