"""Adapter checkpoints: safetensors + model card round trip, base-model checks, corrupt files, attach / swap."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from MedSAMAdapterLib import __version__
from MedSAMAdapterLib.errors import InputError, WeightsError
from MedSAMAdapterLib.models import checkpoints
from MedSAMAdapterLib.models.checkpoints import adapter_paths, attach_adapter, load_adapter, read_card, save_adapter
from MedSAMAdapterLib.models.peft import PeftConfig, apply_peft, configure_trainable, is_peft_name
from MedSAMAdapterLib.models.registry import build_tiny_test_model, state_dict_sha256

POINTS = torch.tensor([[[20.0, 24.0], [40.0, 30.0]]])
LABELS = torch.tensor([[1, 0]])
IMAGE = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def trained(recipe: str = "medsa", seed: int = 1, **extra):
    """Tiny model with ``recipe`` surgery whose trainable tensors got random values (a stand-in for training)."""
    model = apply_peft(build_tiny_test_model(), PeftConfig(recipe=recipe, **extra))
    configure_trainable(model, recipe)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def outputs(model):
    with torch.no_grad():
        emb = model.encode(IMAGE)
        return (emb, *model.decode(emb, POINTS, LABELS, None, None, True))


def assert_same(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_round_trip_reproduces_outputs_and_writes_a_card(tmp_path):
    model = trained("medsa")
    base_sha = state_dict_sha256(build_tiny_test_model())
    path = save_adapter(tmp_path / "liver", model, "medsa", "tiny-test", base_sha, config={"lr": 1e-4},
                        data={"dataset": "Task03_Liver", "cases": 3}, metrics={"dice": 0.91})
    tensors_path, card_path = adapter_paths(tmp_path / "liver")
    assert path == tensors_path == tmp_path / "liver.safetensors" and card_path.is_file()
    card = json.loads(card_path.read_text())
    assert card["base_model"] == {"name": "tiny-test", "sha256": base_sha}
    assert card["recipe"] == card["trained_recipe"] == "medsa"
    assert PeftConfig.from_dict(card["peft"]) == model.peft_config
    assert card["parameters"]["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert card["medsam_adapter_version"] == __version__ and card["created"]
    assert card["metrics"] == {"dice": 0.91} and card["data"]["cases"] == 3 and card["config"]["lr"] == 1e-4
    assert len(card["tensors"]["sha256"]) == 64

    from safetensors.torch import load_file

    saved = load_file(str(path))
    assert not any(k.startswith("image_encoder.") and not is_peft_name(k) for k in saved)  # no frozen base
    assert any(k.startswith("mask_decoder.transformer") and not is_peft_name(k) for k in saved)  # medsa: decoder

    loaded = load_adapter(tmp_path / "liver.safetensors", build_tiny_test_model())
    assert_same(outputs(loaded), outputs(model))
    assert not loaded.training and loaded.weights_sha256 not in (None, base_sha)


@pytest.mark.parametrize("recipe,extra", [("lora", {}), ("decoder", {}), ("medsa-3d", {"depth_chunk": 1})])
def test_round_trip_other_recipes(tmp_path, recipe, extra):
    model = trained(recipe, **extra)
    save_adapter(tmp_path / recipe, model, recipe)  # base name / sha default to the model's
    assert_same(outputs(load_adapter(tmp_path / recipe, build_tiny_test_model())), outputs(model))


def test_load_by_registry_name(tmp_path, monkeypatch):
    from MedSAMAdapterLib.models import registry

    model = trained("decoder")
    save_adapter(tmp_path / "a", model, "decoder")
    monkeypatch.setattr(registry, "load_model", lambda name, weights=None, device="cpu": build_tiny_test_model())
    assert_same(outputs(load_adapter(tmp_path / "a", "tiny-test")), outputs(model))


def test_refuses_a_different_base(tmp_path):
    save_adapter(tmp_path / "a", trained("medsa"), "medsa")
    other = build_tiny_test_model(seed=5)
    with pytest.raises(WeightsError) as info:
        load_adapter(tmp_path / "a", other)
    message = str(info.value)
    assert state_dict_sha256(build_tiny_test_model()) in message and state_dict_sha256(other) in message
    renamed = build_tiny_test_model()
    renamed.spec = dataclasses.replace(renamed.spec, name="other-model")
    with pytest.raises(WeightsError, match="'tiny-test'.*'other-model'"):
        load_adapter(tmp_path / "a", renamed)


def test_missing_card_and_corrupt_tensors(tmp_path):
    with pytest.raises(WeightsError, match="card .* not found"):
        load_adapter(tmp_path / "nothing.safetensors", build_tiny_test_model())
    path = save_adapter(tmp_path / "a", trained("decoder"), "decoder")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_adapter(path, build_tiny_test_model())
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(WeightsError):
        load_adapter(path, build_tiny_test_model())
    adapter_paths(path)[1].write_text("{not json")
    with pytest.raises(WeightsError, match="unreadable"):
        read_card(path)
    path.unlink()
    adapter_paths(path)[1].write_text(json.dumps({"format": checkpoints.CARD_FORMAT, "tensors": {}}))
    with pytest.raises(WeightsError, match="not found"):
        load_adapter(path, build_tiny_test_model())


def _edit_card(path, **peft) -> None:
    card_path = adapter_paths(path)[1]
    card = json.loads(card_path.read_text())
    card["peft"].update(peft)
    card_path.write_text(json.dumps(card))


def test_card_with_invalid_config_or_tensors_that_do_not_fit(tmp_path):
    path = save_adapter(tmp_path / "a", trained("decoder"), "decoder")
    _edit_card(path, decoder_blocks=[])  # invalid surgery description
    with pytest.raises(WeightsError, match="invalid recipe / PEFT config"):
        load_adapter(path, build_tiny_test_model())
    _edit_card(path, decoder_blocks=None, hyp_hidden=32)  # valid surgery, but not the one the tensors fit
    with pytest.raises(WeightsError, match="shape mismatches"):
        load_adapter(path, build_tiny_test_model())


def test_attach_swaps_adapters_in_a_running_model(tmp_path):
    a, b = trained("medsa", seed=1), trained("medsa", seed=2)
    save_adapter(tmp_path / "a", a, "medsa")
    save_adapter(tmp_path / "b", b, "medsa")
    save_adapter(tmp_path / "c", trained("decoder"), "decoder")
    session_model = build_tiny_test_model()
    base_out = outputs(session_model)
    assert attach_adapter(session_model, tmp_path / "a") is session_model
    assert_same(outputs(session_model), outputs(a))
    fingerprint_a = session_model.weights_sha256
    attach_adapter(session_model, tmp_path / "b")  # same surgery: tensors swapped in place
    assert_same(outputs(session_model), outputs(b))
    assert session_model.weights_sha256 != fingerprint_a
    with pytest.raises(InputError, match="reload the base model"):
        attach_adapter(session_model, tmp_path / "c")
    assert_same(outputs(build_tiny_test_model()), base_out)  # removing = reloading the base


def test_save_refusals(tmp_path):
    with pytest.raises(InputError, match="no PEFT surgery"):
        save_adapter(tmp_path / "a", build_tiny_test_model(), "medsa")
    model = trained("decoder")
    with pytest.raises(InputError, match="adapted from"):
        save_adapter(tmp_path / "a", model, "decoder", base_sha256="0" * 64)
    with pytest.raises(InputError, match="JSON"):
        save_adapter(tmp_path / "a", model, "decoder", metrics={"bad": object()})
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_staged_training_keeps_all_peft_tensors(tmp_path):
    """medsa surgery trained with the smaller 'decoder' recipe still saves (and restores) encoder adapters."""
    model = trained("medsa")
    configure_trainable(model, "decoder")
    path = save_adapter(tmp_path / "a", model, "decoder")
    from safetensors.torch import load_file

    assert any(k.startswith("image_encoder.") and "peft_space" in k for k in load_file(str(path)))
    assert_same(outputs(load_adapter(path, build_tiny_test_model())), outputs(copy.deepcopy(model)))


def test_embedding_fingerprint_tracks_encoder_adapters_only():
    """Decoder adapters keep the embedding cache valid; encoder adapters (and their values) change its key."""
    from MedSAMAdapterLib.models.peft.surgery import PeftConfig, apply_peft
    from MedSAMAdapterLib.models.registry import build_tiny_test_model, model_fingerprint

    base = build_tiny_test_model(seed=0)
    base.weights_sha256 = "feedface"
    decoder_only = apply_peft(build_tiny_test_model(seed=0), PeftConfig(recipe="decoder"))
    decoder_only.peft_base_sha256 = "feedface"
    assert model_fingerprint(decoder_only) == model_fingerprint(base)
    encoder = apply_peft(build_tiny_test_model(seed=0), PeftConfig(recipe="medsa"))
    encoder.peft_base_sha256 = "feedface"
    before = model_fingerprint(encoder)
    assert before != model_fingerprint(base)
    next(p for n, p in encoder.image_encoder.named_parameters() if "peft_" in n).data.add_(1.0)
    assert model_fingerprint(encoder) != before


def test_half_precision_copy_loads_and_stays_close(tmp_path):
    model = trained("medsa")
    save_adapter(tmp_path / "full", model, "medsa")
    half = checkpoints.store_adapter_as(tmp_path / "full.safetensors", tmp_path / "half")
    assert half.stat().st_size < 0.6 * (tmp_path / "full.safetensors").stat().st_size
    card = read_card(half)
    assert card["storage_dtype"] == "float16" and card["recipe"] == "medsa"
    loaded = load_adapter(half, build_tiny_test_model())
    for a, b in zip(outputs(model), outputs(loaded)):
        assert a.dtype == b.dtype == torch.float32
        assert float((a - b).abs().max()) <= 1e-2 * float(a.abs().max())  # fp16 rounding, relative to the scale
    assert loaded.weights_sha256 != load_adapter(tmp_path / "full.safetensors", build_tiny_test_model()).weights_sha256
    with pytest.raises(InputError, match="floating"):
        checkpoints.store_adapter_as(tmp_path / "full.safetensors", tmp_path / "bad", "int8")


def test_saved_files_get_the_usual_permissions(tmp_path):
    """safetensors writes its file anew (mode 0600); the atomic writer must still leave umask-normal files, or a
    shipped or shared adapter is unreadable to other users."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = save_adapter(tmp_path / "a", trained("decoder"), "decoder")
    finally:
        os.umask(old)
    for file in (path, adapter_paths(path)[1]):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file
