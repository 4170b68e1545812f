import numpy as np
import torch

from MedSAMAdapterLib.engine.cache import EmbeddingCache, EmbeddingKey, array_fingerprint
from MedSAMAdapterLib.engine.embedder import nearest_first


def key(index=0, volume="v1", model="m1", prep="p1", axis=0):
    return EmbeddingKey(volume, model, prep, axis, index)


def test_memory_and_disk_round_trip(tmp_path):
    cache = EmbeddingCache(tmp_path)
    embedding = torch.randn(1, 8, 4, 4)
    cache.put(key(), embedding)
    assert torch.allclose(cache.get(key()), embedding.half().float())
    fresh = EmbeddingCache(tmp_path)  # a new process: only the disk level
    assert torch.allclose(fresh.get(key()), embedding.half().float())
    assert fresh.hits == 1


def test_any_key_component_change_is_a_miss(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put(key(), torch.ones(1, 2, 2, 2))
    for other in (key(index=1), key(volume="v2"), key(model="m2"), key(prep="p2"), key(axis=1)):
        assert cache.get(other) is None


def test_corrupt_disk_entry_is_dropped_and_reported_as_miss(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put(key(), torch.ones(1, 2, 2, 2))
    path = tmp_path / key().relative_path()
    path.write_bytes(path.read_bytes()[:20])  # truncated file
    fresh = EmbeddingCache(tmp_path)
    assert fresh.get(key()) is None
    assert fresh.corrupt_entries == 1 and not path.exists()


def test_memory_lru_evicts_oldest(tmp_path):
    one = torch.ones(1, 4, 4, 4)  # 128 bytes in fp16
    cache = EmbeddingCache(tmp_path, memory_bytes=300, use_disk=False)
    for index in range(3):
        cache.put(key(index), one * index)
    assert cache.get(key(0)) is None and cache.get(key(2)) is not None


def test_content_hash_depends_on_values_and_shape():
    a = np.zeros((2, 3, 4), np.float32)
    b = a.copy()
    b[1, 1, 1] = 1e-6
    assert array_fingerprint(a) == array_fingerprint(a.copy())
    assert array_fingerprint(a) != array_fingerprint(b)
    assert array_fingerprint(a) != array_fingerprint(a.reshape(3, 2, 4))


def test_nearest_first_order():
    assert nearest_first(2, 6) == [2, 3, 1, 4, 0, 5]
    assert nearest_first(0, 3) == [0, 1, 2]
    assert sorted(nearest_first(4, 5)) == list(range(5))
