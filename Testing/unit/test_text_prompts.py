"""Text prompts (a structure's name conditions the decoder): identity at init, effect once trained, round trip
through an adapter file, segment names in a session, and training that learns the vectors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from MedSAMAdapterLib.engine.prompts import SlicePrompts
from MedSAMAdapterLib.engine.session import InteractiveSession
from MedSAMAdapterLib.errors import InputError
from MedSAMAdapterLib.models.checkpoints import load_adapter, save_adapter
from MedSAMAdapterLib.models.peft import PeftConfig, apply_peft, apply_text_prompts, normalise_name
from MedSAMAdapterLib.models.registry import build_tiny_test_model
from Testing.conftest import make_volume, sphere_volume

POINTS = torch.tensor([[[20.0, 24.0]]])
LABELS = torch.tensor([[1]])
BOX = torch.tensor([[8.0, 8.0, 40.0, 44.0]])
VOCABULARY = ("optic_disc", "Optic-Cup", "liver")


def text_model(trained: bool = True):
    model = apply_peft(build_tiny_test_model(), PeftConfig(recipe="decoder", text_vocabulary=VOCABULARY)).eval()
    if trained:
        with torch.no_grad():
            model.mask_decoder.peft_text.embedding.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return model


def logits(model, emb, text=None, **prompt):
    prompt = prompt or {"points": POINTS, "labels": LABELS}
    with torch.no_grad():
        return model.decode(emb, multimask=False, text=text, **prompt)[0]


def test_names_are_normalised_and_the_vocabulary_is_recorded():
    assert normalise_name("  Optic_Cup ") == normalise_name("optic-cup") == "optic cup"
    model = text_model(trained=False)
    assert model.peft_config.text_vocabulary == ("liver", "optic cup", "optic disc")
    assert model.understands("OPTIC CUP") and not model.understands("spleen") and not model.understands(None)
    with pytest.raises(InputError, match="gain"):
        apply_text_prompts(model, ["spleen"], gain=8.0)


def test_new_names_extend_the_vocabulary_and_known_names_keep_their_vectors():
    model = text_model()
    before = {n: model.mask_decoder.peft_text.embedding.weight[i].clone()
              for i, n in enumerate(model.peft_config.text_vocabulary)}
    apply_text_prompts(model, ["Spleen", "liver"])
    module = model.mask_decoder.peft_text
    assert model.peft_config.text_vocabulary == module.vocabulary == ("liver", "optic cup", "optic disc", "spleen")
    for name, vector in before.items():
        assert torch.equal(module.embedding.weight[module.vocabulary.index(name)], vector)
    assert not module.embedding.weight[module.vocabulary.index("spleen")].any()


def test_untrained_text_prompts_change_nothing():
    base = build_tiny_test_model().eval()
    model = apply_peft(copy.deepcopy(base), PeftConfig(recipe="decoder", text_vocabulary=VOCABULARY)).eval()
    emb = base.encode(torch.rand(1, 3, 64, 64)).detach()
    for prompt in ({"points": POINTS, "labels": LABELS}, {"box": BOX}):
        want = logits(base, emb, **prompt)
        assert torch.equal(logits(model, emb, "optic disc", **prompt), want)
        assert torch.equal(logits(model, emb, None, **prompt), want)


def test_a_known_name_changes_the_mask_and_an_unknown_one_does_not():
    model = text_model()
    emb = model.encode(torch.rand(1, 3, 64, 64)).detach()
    plain = logits(model, emb)
    disc, cup = logits(model, emb, "optic disc"), logits(model, emb, "Optic_Cup")
    assert not torch.allclose(disc, plain) and not torch.allclose(disc, cup)
    assert torch.equal(logits(model, emb, "spleen"), plain)


def test_text_prompts_survive_an_adapter_round_trip_and_extend_a_loaded_adapter(tmp_path):
    model = text_model()
    save_adapter(tmp_path / "named", model, "decoder")
    loaded = load_adapter(tmp_path / "named.safetensors", build_tiny_test_model())
    emb = model.encode(torch.rand(1, 3, 64, 64)).detach()
    assert loaded.peft_config.text_vocabulary == model.peft_config.text_vocabulary
    assert torch.equal(logits(loaded, emb, "liver"), logits(model, emb, "liver"))

    plain = apply_peft(build_tiny_test_model(), PeftConfig(recipe="decoder"))  # e.g. the shipped click adapter
    save_adapter(tmp_path / "plain", plain, "decoder")
    extended = apply_text_prompts(load_adapter(tmp_path / "plain.safetensors", build_tiny_test_model()), ["liver"])
    assert extended.peft_config.text_vocabulary == ("liver",)
    save_adapter(tmp_path / "extended", extended, "decoder")
    again = load_adapter(tmp_path / "extended.safetensors", build_tiny_test_model())
    assert again.understands("liver")


def test_a_session_uses_segment_names_it_knows_unless_told_not_to():
    image, _ = sphere_volume()
    volume = make_volume(image)
    model = text_model()
    click = SlicePrompts([[20, 20]], [1])
    results = {}
    for names_as_text in (True, False):
        session = InteractiveSession(volume, model, names_as_text=names_as_text)
        for name in ("optic_disc", "optic cup", "spleen"):
            results[names_as_text, name] = session.segment_slice(session.add_segment(name), 0, 6, click)
    assert results[True, "optic_disc"].text == "optic_disc" and results[True, "spleen"].text is None
    assert all(results[False, n].text is None for n in ("optic_disc", "optic cup", "spleen"))
    unnamed = results[False, "optic_disc"].mask
    assert np.array_equal(results[True, "spleen"].mask, unnamed)  # unknown name: a plain click
    assert not (np.array_equal(results[True, "optic_disc"].mask, unnamed)
                and np.array_equal(results[True, "optic cup"].mask, unnamed))


def test_training_with_text_learns_a_vector_per_label_name(tmp_path):
    from MedSAMAdapterLib.models.checkpoints import read_card
    from MedSAMAdapterLib.training.prompts import PromptPolicy
    from MedSAMAdapterLib.training.datasets import build_nnunet_split
    from MedSAMAdapterLib.training.splits import SplitOptions
    from MedSAMAdapterLib.training.trainer import Trainer
    from Testing.unit.test_training import tiny_config, write_2d_dataset

    data = write_2d_dataset(tmp_path / "Dataset901_Shapes")
    split = build_nnunet_split([data], SplitOptions(0.34, 0))
    cfg = tiny_config(tmp_path, epochs=1, steps_per_epoch=3, batch_size=4, val_slices=2, baseline_validation=False,
                      prompt=PromptPolicy(max_clicks=2, text_fraction=1.0))
    trainer = Trainer(cfg, split.train, split.val, tmp_path / "run", model=build_tiny_test_model())
    trainer.fit()
    card = read_card(trainer.adapter_path)
    names = {n for c in split.train.cases for n in c.label_names.values()}
    assert card["peft"]["text_vocabulary"] == sorted(normalise_name(n) for n in names)
    loaded = load_adapter(trainer.adapter_path, build_tiny_test_model())
    assert loaded.mask_decoder.peft_text.embedding.weight.abs().sum() > 0  # the vectors left zero: they trained
    assert PromptPolicy.parse("box=0.3,text=0.5").text_fraction == 0.5
