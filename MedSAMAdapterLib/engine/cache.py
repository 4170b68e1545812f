"""Embedding cache: memory LRU in front of an on-disk fp16 store.

An entry's key is every input that changes the encoder output: the volume content hash, the model fingerprint
(model id + weights hash + any encoder adapter weights), the preprocessing id, the slice axis and index.
A different volume, model, adapter or intensity window therefore never hits a stale entry; there is no
invalidation to get wrong. Disk entries are written atomically; one that cannot be read back is deleted and
reported as a miss, so a corrupt file costs one recomputation, never a crash.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path

DEFAULT_MEMORY_BYTES = 2 * 1024**3


def default_cache_dir() -> Path:
    """``$MEDSAM_ADAPTER_HOME/cache`` if set, else the user's cache dir (never the install folder)."""
    home = os.environ.get("MEDSAM_ADAPTER_HOME")
    if home:
        return Path(home) / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medsam-adapter"


def array_fingerprint(array: np.ndarray) -> str:
    """Content hash of voxel data (shape and dtype included: the same bytes in another shape differ)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.shape}|{array.dtype.str}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


@dataclass(frozen=True)
class EmbeddingKey:
    volume_hash: str
    model_fingerprint: str
    preprocessing_id: str
    axis: int
    index: int

    @property
    def scope(self) -> tuple[str, str, str, int]:
        """All slices of one volume, model, preprocessing and axis share a scope (one folder on disk)."""
        return (self.volume_hash, self.model_fingerprint, self.preprocessing_id, self.axis)

    def relative_path(self) -> Path:
        scope = hashlib.blake2b(
            "|".join(map(str, self.scope)).encode(), digest_size=12
        ).hexdigest()
        return Path(scope[:2]) / scope / f"{self.index:05d}.npy"


class EmbeddingCache:
    """Thread-safe two-level cache of per-slice encoder outputs (stored as fp16, returned as float32)."""

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        use_disk: bool = True,
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir() / "embeddings"
        self.memory_bytes = memory_bytes
        self.use_disk = use_disk
        self._memory: OrderedDict[EmbeddingKey, torch.Tensor] = OrderedDict()
        self._memory_used = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.corrupt_entries = 0

    def get(self, key: EmbeddingKey) -> torch.Tensor | None:
        with self._lock:
            tensor = self._memory.get(key)
            if tensor is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return tensor.float()
        tensor = self._read_disk(key) if self.use_disk else None
        with self._lock:
            if tensor is None:
                self.misses += 1
                return None
            self.hits += 1
            self._remember(key, tensor)
        return tensor.float()

    def contains(self, key: EmbeddingKey) -> bool:
        with self._lock:
            if key in self._memory:
                return True
        return self.use_disk and (self.directory / key.relative_path()).exists()

    def put(self, key: EmbeddingKey, embedding: torch.Tensor) -> None:
        half = embedding.detach().to("cpu", torch.float16).contiguous()
        with self._lock:
            self._remember(key, half)
        if self.use_disk:
            self._write_disk(key, half)

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()
            self._memory_used = 0

    def _remember(self, key: EmbeddingKey, half: torch.Tensor) -> None:
        if key in self._memory:
            self._memory_used -= self._memory.pop(key).nbytes
        self._memory[key] = half
        self._memory_used += half.nbytes
        while self._memory_used > self.memory_bytes and len(self._memory) > 1:
            _, evicted = self._memory.popitem(last=False)
            self._memory_used -= evicted.nbytes

    def _write_disk(self, key: EmbeddingKey, half: torch.Tensor) -> None:
        path = self.directory / key.relative_path()
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, half.numpy(), allow_pickle=False)
        except OSError:
            pass  # a full or read-only disk only costs speed: the memory level still serves

    def _read_disk(self, key: EmbeddingKey) -> torch.Tensor | None:
        path = self.directory / key.relative_path()
        if not path.exists():
            return None
        try:
            array = np.load(path, allow_pickle=False)
            if array.dtype != np.float16 or array.ndim != 4 or not np.isfinite(array).all():
                raise ValueError(f"unexpected entry {array.dtype} {array.shape}")
            return torch.from_numpy(array)
        except (OSError, ValueError, EOFError):
            self.corrupt_entries += 1
            path.unlink(missing_ok=True)
            return None
