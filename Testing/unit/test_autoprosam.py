"""Volumetric automatic segmentation: AutoProSAM on the tiny TinyViT, sliding windows, patch training with resume,
distillation into a UNet student, `auto` and `evaluate --protocol auto`. Tiny configs, a few seconds each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedSAMAdapterLib.engine.auto import AutoSegmenter, run_auto
from MedSAMAdapterLib.engine.sliding import sliding_window_logits, window_count
from MedSAMAdapterLib.errors import InputError, WeightsError
from MedSAMAdapterLib.models.autoprosam import (Adapter3D, AutoProSAMConfig, MLADecoder3D, PromptGenerator3D,
                                                build_autoprosam, is_trainable_name)
from MedSAMAdapterLib.models.registry import build_tiny_test_model
from MedSAMAdapterLib.models.students import build_student
from MedSAMAdapterLib.models.volumetric import load_volumetric_model
from MedSAMAdapterLib.training.auto_train import build_auto_split
from MedSAMAdapterLib.training.splits import SplitOptions
from MedSAMAdapterLib.training.distill import DistillOptions, distill
from MedSAMAdapterLib.training.patches import PatchCase, PatchSampler
from MedSAMAdapterLib.training.volumetric_train import (VolumetricTrainConfig, VolumetricTrainer,
                                                        distillation_loss)
from Testing.conftest import make_volume
from Testing.unit.test_auto import synthetic_case, write_nnunet

PATCH = (8, 32, 32)
TINY_NET = {"neck_channels": 16, "decoder_channels": 8, "apg_channels": [8, 16]}
SHAPE = (8, 40, 32)


def tiny_config(**kw) -> AutoProSAMConfig:
    return AutoProSAMConfig(patch_size=PATCH, neck_channels=16, decoder_channels=8, apg_channels=(8, 16), **kw)


def train_config(**kw) -> VolumetricTrainConfig:
    base = dict(arch="autoprosam", network=TINY_NET, patch_size=PATCH, epochs=2, steps_per_epoch=6, batch_size=2,
                lr=3e-3, device="cpu", warmup_steps=0, patience=None)
    return VolumetricTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_test_model(seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_nnunet(tmp_path_factory.mktemp("data") / "Dataset900_Toy", cases=4, shape=SHAPE)


@pytest.fixture(scope="module")
def split(dataset):
    return build_auto_split(dataset, split=SplitOptions(val_patients=1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, split, tiny):
    """A 2-epoch tiny AutoProSAM run (shared by the checkpoint, auto and distillation tests)."""
    run = tmp_path_factory.mktemp("run")
    trainer = VolumetricTrainer(train_config(), split.train, split.val, run, split.labels, base_model=tiny)
    events = []
    trainer.fit(progress=events.append)
    return trainer, events


# ---------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("classes", [2, 4])
def test_forward_shapes_for_k_classes(tiny, classes):
    torch.manual_seed(0)
    model = build_autoprosam(tiny, classes, tiny_config())
    x = torch.rand(2, 1, *PATCH)
    y = model(x)
    assert y.shape == (2, classes, *PATCH) and torch.isfinite(y).all()
    levels = model.encoder(x)
    assert [tuple(t.shape[2:]) for t in levels] == [(4, 16, 16), (2, 8, 8), (2, 8, 8), (2, 8, 8)]
    assert all(t.shape[1] == 16 for t in levels)
    assert PromptGenerator3D(16, (8, 16))(levels[0]).shape == levels[0].shape  # dense prompt, same grid
    decoder = MLADecoder3D(16, 4, 8, classes)
    assert decoder(levels, x).shape == (2, classes, *PATCH)
    y.sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {n for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(InputError, match="multiples"):
        model(torch.rand(1, 1, 8, 30, 32))


def test_adapters_start_as_identity_and_the_backbone_stays_frozen(tiny):
    adapter = Adapter3D(16, 0.25)
    x = torch.randn(1, 2, 3, 4, 16)
    assert torch.equal(adapter(x), x)  # zero-initialised output: the 2D blocks' behaviour at the start
    model = build_autoprosam(tiny, 3, tiny_config())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("encoder.backbone.") for n in frozen)
    assert not any(is_trainable_name(n) for n in frozen)
    new = [p for n, p in model.named_parameters() if not n.startswith("encoder.backbone.")]
    norms = [p for n, p in model.named_parameters() if n.startswith("encoder.backbone.") and p.requires_grad]
    assert all(".norm." in n for n, p in model.named_parameters() if n.startswith("encoder.backbone.")
               and p.requires_grad)
    assert model.configure_trainable() == sum(p.numel() for p in new) + sum(p.numel() for p in norms)
    assert len(norms) == 2 * 2 * 3  # (attn.norm, mlp.norm) x (weight, bias) x 3 attention blocks
    assert build_autoprosam(tiny, 3, tiny_config(train_norms=False)).configure_trainable() == \
        sum(p.numel() for p in new)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(torch.rand(1, 1, *PATCH)).square().mean().backward()
    optimiser.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert not model.encoder.backbone.training  # BatchNorm statistics stay the base model's
    base = dict(tiny.image_encoder.named_parameters())
    assert all(torch.equal(base[n[len("encoder.backbone."):]], p) for n, p in frozen.items())


def test_sliding_window_equals_one_pass_when_the_volume_fits(tiny):
    torch.manual_seed(1)
    model = build_autoprosam(tiny, 3, tiny_config()).eval()
    x = torch.rand(*PATCH)
    with torch.no_grad():
        single = model(x[None, None])[0]
    seen = []
    blended = sliding_window_logits(model, x, PATCH, progress=lambda d, t: seen.append((d, t)))
    assert torch.allclose(blended, single, atol=1e-5)
    assert seen == [(1, 1)]
    student = build_student("unet", 3, (4, 8)).eval()
    big = torch.rand(10, 40, 36)
    assert sliding_window_logits(student, big, (8, 32, 32)).shape == (3, 10, 40, 36)
    assert window_count(big.shape, (8, 32, 32), 0.25) == 2 * 2 * 2


def test_patch_sampler_oversamples_foreground_and_is_repeatable():
    image, labels = synthetic_case(0, (6, 40, 32))
    case = PatchCase("c", image / image.max(), (labels > 0).astype(np.uint8))
    sampler = PatchSampler([case], (8, 16, 16), foreground_fraction=1.0, seed=3)
    images, classes, teacher = sampler.batch(0, 0, 6)
    assert images.shape == (6, 1, 8, 16, 16) and teacher is None
    assert all(classes[i].any() for i in range(6))  # every patch holds foreground
    assert sampler.cases[0].image.shape == (8, 40, 32)  # padded to the patch depth
    again = PatchSampler([case], (8, 16, 16), foreground_fraction=1.0, seed=3).batch(0, 0, 6)
    assert torch.equal(again[0], images)


def test_distillation_loss_is_zero_only_for_the_teacher():
    teacher = torch.randn(2, 3, 4, 5, 5) * 3
    assert distillation_loss(teacher, teacher, 2.0) < distillation_loss(torch.zeros_like(teacher), teacher, 2.0)
    assert distillation_loss(teacher, teacher, 2.0) < 0.5  # KL term vanishes; soft Dice of identical maps small


# ---------------------------------------------------------------------------------------------- training
def test_training_lowers_the_loss_and_writes_the_run(trained):
    trainer, events = trained
    losses = [h["loss"] for h in trainer.history]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert {"setup", "step", "validation", "epoch", "done"} <= {e.kind for e in events}
    for name in ("auto_model.safetensors", "auto_model.json", "last.pt", "history.json", "training_curve.png"):
        assert (trainer.run_dir / name).is_file()
    card = json.loads((trainer.run_dir / "auto_model.json").read_text())
    assert card["arch"] == "autoprosam" and card["base_model"]["name"] == "tiny-test"
    assert [c["name"] for c in card["classes"]] == ["LV", "MYO"] and "val_dice_mean" in card["metrics"]
    assert card["parameters"]["saved"] == card["parameters"]["trainable"] < card["parameters"]["total"]


def test_resume_continues_exactly(tmp_path, split, tiny):
    flat = dict(min_lr_ratio=1.0, epochs=3, steps_per_epoch=2)  # constant LR: 2+1 epochs = 3 epochs
    straight = VolumetricTrainer(train_config(**flat), split.train, [], tmp_path / "a", split.labels, base_model=tiny)
    full = straight.fit()
    VolumetricTrainer(train_config(**{**flat, "epochs": 2}), split.train, [], tmp_path / "b", split.labels,
                      base_model=tiny).fit()
    resumed = VolumetricTrainer(train_config(**flat), split.train, [], tmp_path / "b", split.labels, base_model=tiny)
    history = resumed.fit(resume=True)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[2]["loss"] == pytest.approx(full[2]["loss"], rel=1e-5)
    changed = VolumetricTrainer(train_config(**{**flat, "patch_size": (16, 32, 32)}), split.train, [],
                                tmp_path / "b", split.labels, base_model=tiny)
    with pytest.raises(InputError, match="patch_size"):
        changed.fit(resume=True)


# ---------------------------------------------------------------------------------------------- files, auto
def test_checkpoint_round_trip_and_auto(trained, tiny, tmp_path):
    trainer, _ = trained
    loaded = load_volumetric_model(trainer.model_path, base_model=tiny)
    assert loaded.orientation == trainer.orientation == "LPS"  # the toy volumes have an identity direction
    image, _ = synthetic_case(9, SHAPE)
    volume = make_volume(image)
    expected = trainer.bundle.logits(volume)
    assert torch.allclose(loaded.logits(volume), expected, atol=1e-5)
    labels, segments = run_auto(volume, trainer.model_path, base_model=tiny)
    assert labels.shape == volume.shape and set(np.unique(labels)) <= {0, 1, 2}
    assert np.array_equal(labels, loaded.to_labels(expected))
    assert [s.name for s in segments] == ["LV", "MYO"] and segments[0].terminology is not None
    with pytest.raises(WeightsError, match="trained on base model"):
        load_volumetric_model(trainer.model_path, base_model=build_tiny_test_model(seed=5))


def test_head_volume_logits_match_predict_volume(tiny, tmp_path):
    from MedSAMAdapterLib.engine.cache import EmbeddingCache
    from MedSAMAdapterLib.engine.embedder import VolumeEmbedder
    from MedSAMAdapterLib.engine.preprocessing import IntensityPolicy
    from Testing.unit.test_auto import tiny_auto_model

    image, _ = synthetic_case(4)
    volume = make_volume(image)
    auto = tiny_auto_model(tiny, "cnn", context=True)
    embedder = VolumeEmbedder(volume, tiny, EmbeddingCache(use_disk=False), IntensityPolicy.parse("auto"))
    logits = auto.volume_logits(volume, embedder, batch_size=3)
    assert logits.shape == (3, *volume.shape)
    assert np.array_equal(np.asarray([0, 1, 2])[logits.argmax(0).numpy()], auto.predict_volume(volume, embedder))


# ---------------------------------------------------------------------------------------------- distillation
def test_distilled_student_runs_with_auto_and_evaluate(trained, tiny, dataset, tmp_path):
    from MedSAMAdapterLib.cli import main
    from MedSAMAdapterLib.evaluation.protocols import evaluate_dataset

    teacher = AutoSegmenter(trained[0].model_path, base_model=tiny)
    config = VolumetricTrainConfig(arch="unet", patch_size=(8, 8, 8), epochs=2, steps_per_epoch=4, batch_size=2,
                                   device="cpu", patience=None, warmup_steps=0)
    options = DistillOptions(channels=(8, 16), split=SplitOptions(val_patients=1))
    result = distill(teacher, dataset, tmp_path / "student", options, config)
    card = json.loads((tmp_path / "student.json").read_text())
    assert card["arch"] == "unet" and card["base_model"] is None and card["patch_size"] == list(PATCH)
    assert card["training"]["teacher"]["kind"] == "autoprosam"
    comparison = card["metrics"]["teacher_vs_student"]
    assert {"teacher", "student", "speedup"} <= set(comparison) and comparison["student"]["seconds_per_volume"] > 0
    assert result.history and result.model_path == tmp_path / "student.safetensors"
    image, _ = synthetic_case(11, SHAPE)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "img.nii.gz"))
    assert main(["auto", str(tmp_path / "img.nii.gz"), "--model", str(tmp_path / "student"),
                 "-o", str(tmp_path / "out.seg.nrrd")]) == 0
    assert (tmp_path / "out.seg.nrrd").is_file()
    summary = evaluate_dataset(dataset, "auto", str(tmp_path / "student"), out_dir=tmp_path / "eval", progress=False,
                               max_cases=2)
    assert summary["levels"] == ["auto"] and set(summary["per_label"]["auto"]) == {"LV", "MYO"}
    assert 0.0 <= summary["overall"]["auto"]["dice"] <= 1.0
    assert (tmp_path / "eval" / "summary.json").is_file() and "automatic (no prompts)" in \
        (tmp_path / "eval" / "report.md").read_text()
    assert main(["evaluate", str(dataset), "--protocol", "auto", "--model", str(tmp_path / "student"),
                 "--out", str(tmp_path / "eval2"), "--max-cases", "1"]) == 0
    assert main(["evaluate", str(dataset), "--protocol", "auto", "--model", "litemedsam",
                 "--out", str(tmp_path / "eval3")]) == 2  # a registry name is not an automatic model


def test_cli_train_auto_autoprosam(dataset, tmp_path, tiny, monkeypatch):
    from MedSAMAdapterLib.cli import main
    from MedSAMAdapterLib.models import registry

    monkeypatch.setattr(registry, "load_model", lambda *a, **k: tiny)
    argv = ["train-auto", str(dataset), "--arch", "autoprosam", "--out", str(tmp_path / "run"), "--epochs", "1",
            "--steps-per-epoch", "2", "--patch-size", "8,32,32", "--val-patients", "1", "--device", "cpu",
            "--model", "tiny-test"]
    assert main(argv) == 0
    card = json.loads((tmp_path / "run" / "auto_model.json").read_text())
    assert card["options"]["patch_size"] == [8, 32, 32] and card["options"]["depth_window"] == 4
    assert main(argv) == 2  # the run exists: --resume or --overwrite
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv + ["--resume"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
