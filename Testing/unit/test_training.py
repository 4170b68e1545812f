"""Fine-tuning engine: slice datasets, prompt simulation, trainer (loss, resume, adapter export, cached
embeddings), CLI.

Everything runs on the tiny random model (64 x 64 input) and tiny synthetic nnU-Net folders written to tmp dirs.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from MedSAMAdapterLib.engine.preprocessing import SliceTransform, volume_to_display_range
from MedSAMAdapterLib.errors import InputError, WeightsError
from MedSAMAdapterLib.models.checkpoints import load_adapter, read_card
from MedSAMAdapterLib.models.registry import build_tiny_test_model
from MedSAMAdapterLib.training.datasets import build_array_split, build_nnunet_split, make_case
from MedSAMAdapterLib.training.splits import SplitOptions
from MedSAMAdapterLib.engine.prompts import mask_prompt_with_clicks
from MedSAMAdapterLib.training.prompts import PromptPolicy, PromptSimulator
from MedSAMAdapterLib.training.config import TrainConfig
from MedSAMAdapterLib.training.trainer import STATE_FILE, Trainer, model_space_target

IMAGE = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
POINTS = torch.tensor([[[20.0, 24.0], [40.0, 30.0]]])
LABELS = torch.tensor([[1, 0]])
BOX = torch.tensor([[10.0, 12.0, 44.0, 50.0]])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model is fastest on one thread (and two threads crawl on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- synthetic data
def write_2d_dataset(root, n=6, size=64, seed=0):
    """Grey PNGs: a bright disk (label 1) and a mid-grey square (label 2) on a dark noisy background."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for c in range(n):
        lab = np.zeros((size, size), np.uint8)
        cy, cx, r = rng.integers(18, 40), rng.integers(14, 36), rng.integers(6, 11)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        y0, x0 = rng.integers(2, 8), rng.integers(44, 52)
        lab[y0: y0 + 10, x0: x0 + 10] = 2
        img = np.where(lab == 1, 200, np.where(lab == 2, 130, 30)) + rng.normal(0, 8, lab.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "imagesTr" / f"img{c:02d}_0000.png")
        Image.fromarray(lab).save(root / "labelsTr" / f"img{c:02d}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "US"}, "labels": {"background": 0, "disk": 1, "square": 2}, "numTraining": n,
        "file_ending": ".png"}))
    return root


def write_3d_dataset(root, n=3, shape=(10, 40, 36), seed=1):
    """NIfTI volumes with a bright ellipsoid (label 1) on planes 2..8 of 10 (so planes 0, 1, 9 are edge planes)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for c in range(n):
        lab = ((k - 5) ** 2 * 6 + (j - 20 - c) ** 2 + (i - 18) ** 2 <= 64).astype(np.uint8)
        img = (np.where(lab == 1, 300.0, 50.0) + rng.normal(0, 10, shape)).astype(np.float32)
        for arr, path in ((img, root / "imagesTr" / f"vol{c}_0000.nii.gz"),
                          (lab, root / "labelsTr" / f"vol{c}.nii.gz")):
            image = sitk.GetImageFromArray(arr)
            image.SetSpacing((1.0, 1.0, 2.0))
            sitk.WriteImage(image, str(path))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "ball": 1}, "numTraining": n,
        "file_ending": ".nii.gz"}))
    return root


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("training_data")
    return write_2d_dataset(base / "Dataset901_Shapes"), write_3d_dataset(base / "Dataset902_Ball")


def tiny_config(tmp_path, **overrides):
    values = dict(recipe="decoder", model="tiny-test", epochs=2, steps_per_epoch=6, batch_size=4, lr=3e-3, seed=0,
                  cache_dir=str(tmp_path / "cache"), val_slices=4, prompt=PromptPolicy(max_clicks=3),
                  embed_batch_size=8)
    values.update(overrides)
    return TrainConfig(**values)


def counting(model):
    """Wrap ``model.encode`` to count encoded planes (``model.encoded``)."""
    model.encoded = 0
    original = model.encode

    def encode(images):
        model.encoded += images.shape[0]
        return original(images)

    model.encode = encode
    return model


def decoder_outputs(model):
    model.eval()
    with torch.no_grad():
        emb = model.image_encoder(IMAGE)  # not model.encode: that one may be counting planes
        return (*model.decode(emb, POINTS, LABELS, BOX, None, False), *model.decode(emb, POINTS[:, :1], LABELS[:, :1],
                                                                                     None, None, True))


# ---------------------------------------------------------------------------------------------- datasets
def test_nnunet_split_2d_and_3d_is_case_level_and_deterministic(data_dirs):
    d2, d3 = data_dirs
    split = build_nnunet_split([d2, d3], SplitOptions(0.34, 0))
    described = {d["name"]: d for d in split.description["datasets"]}
    for name, n in (("Dataset901_Shapes", 6), ("Dataset902_Ball", 3)):
        train, val = described[name]["train_cases"], described[name]["val_cases"]
        assert train and val and not set(train) & set(val) and len(train) + len(val) == n
    assert {c.case_id for c in split.train.cases} == set(described["Dataset901_Shapes"]["train_cases"]
                                                         + described["Dataset902_Ball"]["train_cases"])
    vol = next(c for c in split.train.cases if c.is_3d)
    assert vol.display.shape == (10, 40, 36) and vol.display.dtype == np.float32
    np.testing.assert_array_equal(vol.display, volume_to_display_range(vol.volume.array, "auto"))

    a = [split.train[i] for i in range(20)]
    b = [split.train[i] for i in range(20)]
    for x, y in zip(a, b):
        assert (x.case_id, x.slice_index, x.label) == (y.case_id, y.slice_index, y.label)
        np.testing.assert_array_equal(x.image, y.image)
    split.train.set_epoch(1)
    assert [(s.case_id, s.slice_index, s.label) for s in (split.train[i] for i in range(20))] != \
        [(s.case_id, s.slice_index, s.label) for s in a]
    for s in a:  # a binary target of one label present on the plane (foreground) or absent (edge)
        assert s.image.shape == s.label_plane.shape == s.target.shape and 0 <= s.image.min() <= s.image.max() <= 255
        np.testing.assert_array_equal(s.target, s.label_plane == s.label)
        assert s.target.any() == (s.kind == "foreground")


def test_foreground_balance_and_edge_samples(data_dirs):
    split = build_nnunet_split([data_dirs[1]], SplitOptions(0.0, 3), foreground_fraction=0.8, edge_margin=2)
    ds = split.train
    assert ds.foreground_count == 3 * 7 and ds.edge_count == 3 * 3  # planes 2..8 have the ball; 0, 1, 9 are edges
    rng = np.random.default_rng(0)
    samples = [ds.sample(rng) for _ in range(500)]
    fg = np.mean([s.kind == "foreground" for s in samples])
    assert 0.74 < fg < 0.86
    for s in samples:
        if s.kind == "edge":
            assert not s.target.any() and s.prompt_mask is not None and s.prompt_mask.any()
            assert s.slice_index in (0, 1, 9)
        else:
            assert s.target.any() and 2 <= s.slice_index <= 8
    assert ds.candidate_slices() == {0: list(range(10)), 1: list(range(10)), 2: list(range(10))}
    chunk = ds.sample_chunk(np.random.default_rng(1), 4)
    assert len(chunk) == 4 and len({s.case_id for s in chunk}) == 1 and len({s.label for s in chunk}) == 1
    assert [s.slice_index for s in chunk] == list(range(chunk[0].slice_index, chunk[0].slice_index + 4))


def test_label_selection_and_in_memory_pairs(data_dirs):
    d2, d3 = data_dirs
    split = build_nnunet_split([d2, d3], SplitOptions(0.34), labels=["square"])
    assert {c.label_values for c in split.train.cases} == {(2,)}
    assert any("skipped" in d for d in split.description["datasets"])  # the 3D set has no 'square'
    with pytest.raises(InputError):
        build_nnunet_split([d3], labels=["liver"])

    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(4):
        lab = np.zeros((5, 32, 32), np.uint8)
        lab[1:4, 8:20, 10:24] = 1
        pairs.append((rng.normal(100, 20, lab.shape) + 80 * lab, lab))
    split = build_array_split(pairs, case_ids=["a", "b", "c", "d"], val_fraction=0.25, label_names={1: "lesion"})
    assert len(split.train.cases) == 3 and len(split.val.cases) == 1
    assert split.train.cases[0].dataset == "in-memory" and split.train.edge_count > 0
    assert build_array_split(pairs[:2], val_fraction=0.0).val is None
    with pytest.raises(InputError):
        make_case("x", np.zeros((4, 8, 8)) + np.arange(8), np.zeros((4, 8, 9), np.uint8))


# ---------------------------------------------------------------------------------------------- prompts
def _blob(shape=(48, 60)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - 20) ** 2 / 100 + (xx - 34) ** 2 / 196) <= 1.0


def test_initial_prompts_lie_inside_the_image_and_the_object():
    target = _blob()
    tr = SliceTransform.for_shape(target.shape, 64, 64)  # non-square slice: rows padded in model space
    sim = PromptSimulator(PromptPolicy(box_weight=0.5, box_jitter=0.1, max_clicks=4))
    rows, cols = np.nonzero(target)
    tight = (rows.min(), cols.min(), rows.max(), cols.max())
    h, w = tight[2] - tight[0] + 1, tight[3] - tight[1] + 1
    kinds = set()
    for seed in range(60):
        p = sim.initial(target, tr, np.random.default_rng(seed))
        kinds.add(p.kind)
        inputs = p.model_inputs()
        if p.box_rc is not None:
            r0, c0, r1, c1 = p.box_rc
            assert 0 <= r0 <= r1 <= target.shape[0] - 1 and 0 <= c0 <= c1 <= target.shape[1] - 1
            assert abs(r0 - tight[0]) <= 0.1 * h + 1 and abs(r1 - tight[2]) <= 0.1 * h + 1
            assert abs(c0 - tight[1]) <= 0.1 * w + 1 and abs(c1 - tight[3]) <= 0.1 * w + 1
            box = inputs["box"][0].numpy()
            assert (box >= 0).all() and box[2] <= 64 and box[3] <= tr.resized_hw[0]
            np.testing.assert_allclose(box, tr.box_rc_to_model(*p.box_rc), rtol=1e-6)
            assert not p.multimask and inputs["points"] is None
        else:
            (r, c, positive), = p.clicks
            assert positive and target[r, c] and 1 <= p.target_clicks <= 4
            xy = inputs["points"][0, 0].numpy()
            np.testing.assert_allclose(xy, tr.to_model_xy([[r, c]])[0], rtol=1e-6)
            assert 0 <= xy[0] < 64 and 0 <= xy[1] < tr.resized_hw[0]
            assert p.multimask and inputs["labels"].tolist() == [[1]]
    assert kinds == {"box", "jittered_box", "clicks"}

    edge = sim.initial(np.zeros_like(target), tr, np.random.default_rng(0), prompt_mask=target)
    assert edge.kind == "edge_box"
    r0, c0, r1, c1 = edge.box_rc
    assert r0 <= tight[0] - 2 and c0 <= tight[1] - 2 and r1 >= tight[2] + 2 and c1 >= tight[3] + 2
    assert r0 >= 0 and c0 >= 0 and r1 <= target.shape[0] - 1 and c1 <= target.shape[1] - 1
    with pytest.raises(InputError):
        sim.initial(np.zeros_like(target), tr, np.random.default_rng(0))
    assert PromptPolicy.parse("box=0.3,clicks=7,mask=0") == PromptPolicy(box_weight=0.3, max_clicks=7,
                                                                          mask_prompt=False)
    with pytest.raises(InputError):
        PromptPolicy.parse("boxes=2")


class ScriptedModel:
    """Stands in for PromptableSam.decode: predicts a fixed (wrong) mask and records each call's prompts."""

    def __init__(self, pred, tr):
        self.calls = []
        self.logits = (tr.mask_to_model_logits(pred)).float()

    def decode(self, embedding, points=None, labels=None, box=None, mask_logits=None, multimask=False,
               text=None):
        self.calls.append({"points": points, "labels": labels, "mask": mask_logits, "multimask": multimask})
        k = 3 if multimask else 1
        return self.logits.repeat(1, k, 1, 1), torch.linspace(0.2, 0.9, k)[None]


@pytest.mark.parametrize("wrong", ["miss", "false_detection"])
def test_iterative_clicks_land_in_the_error_regions(wrong):
    target = _blob()
    pred = np.zeros_like(target)
    if wrong == "miss":
        pred[10:30, 20:34] = True  # misses the right half of the blob (+ a small false detection)
        pred[40:46, 2:8] = True
    else:
        pred = target.copy()
        pred[34:48, 0:24] = True  # the whole blob plus a large false detection
    tr = SliceTransform.for_shape(target.shape, 64, 64)
    model = ScriptedModel(pred, tr)
    sim = PromptSimulator(PromptPolicy(box_weight=0.0, max_clicks=4))
    shown = tr.logits_to_slice(model.logits)[0, 0].numpy() > 0  # the mask the simulator sees
    signs = set()
    for seed in range(8):
        model.calls.clear()
        p = sim.initial(target, tr, np.random.default_rng(seed))
        p = sim.refine(model, torch.zeros(1, 256, 16, 16), p, target)
        assert len(p.clicks) == p.target_clicks and p.rounds == len(model.calls) == p.target_clicks - 1
        for r, c, positive in p.clicks[1:]:
            signs.add(positive)
            assert (target[r, c] and not shown[r, c]) if positive else (shown[r, c] and not target[r, c])
        if model.calls:
            assert model.calls[0]["multimask"] and model.calls[0]["mask"] is None
            assert all(call["mask"] is not None and not call["multimask"] for call in model.calls[1:])
            assert p.mask_logits is not None and not p.multimask
            # the shown mask goes back as the session sends it (binary with the clicks painted in, +-8), not the
            # raw logits
            rc = np.array([(r, c) for r, c, _ in p.clicks], np.float64)
            painted = mask_prompt_with_clicks(shown, rc, np.array([int(k) for _, _, k in p.clicks]))
            assert torch.equal(p.mask_logits, tr.mask_to_model_logits(painted))
    assert signs == ({True} if wrong == "miss" else {False})


def test_model_space_target_matches_the_slice_mapping():
    target = _blob()
    tr = SliceTransform.for_shape(target.shape, 64, 32)
    soft = model_space_target(target, tr)
    assert soft.shape == (1, 1, 32, 32) and 0 <= soft.min() and soft.max() <= 1
    back = tr.logits_to_slice((soft - 0.5) * 8)[0, 0].numpy() > 0  # round trip through the inference mapping
    assert (back == target).mean() > 0.97
    assert soft[0, 0, 25:].max() == 0  # the padded rows (48 x 60 -> 51 x 64 -> rows 26+ of 32) are background


# ---------------------------------------------------------------------------------------------- trainer
@pytest.fixture(scope="module")
def trained(data_dirs, tmp_path_factory):
    """One 2-epoch decoder run (cached embeddings) shared by several tests, plus snapshots taken at save time."""
    tmp = tmp_path_factory.mktemp("run")
    split = build_nnunet_split(list(data_dirs), SplitOptions(0.34, 0))
    model = counting(build_tiny_test_model())
    cfg = tiny_config(tmp)
    trainer = Trainer(cfg, split.train, split.val, tmp / "run", model=model, data_description=split.description)
    events, snapshots = [], {}

    def progress(event):
        events.append(event)
        if event.kind == "embed":
            snapshots["encoded_after_embedding"] = model.encoded
        if event.kind == "epoch" and trainer.best["epoch"] == event.epoch:
            snapshots["best_outputs"] = decoder_outputs(trainer.model)

    history = trainer.fit(progress=progress)
    return {"trainer": trainer, "history": history, "events": events, "snapshots": snapshots, "split": split,
            "tmp": tmp, "model": model, "config": cfg}


def test_tiny_training_lowers_the_loss_and_writes_the_run_folder(trained):
    history, trainer = trained["history"], trained["trainer"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["loss"] < history[0]["loss"] - 0.02
    assert all(np.isfinite(h["loss"]) and 0 <= h["val_box"] <= 1 for h in history)
    assert {"val_box", "val_clicks_1", "val_clicks_3", "val_clicks_5", "val_mean"} <= set(history[0])
    steps = [e for e in trained["events"] if e.kind == "step"]
    assert len(steps) == 12 and steps[0].epoch == 1 and steps[-1].step == 6 and steps[-1].loss is not None
    assert [e.kind for e in trained["events"]][-1] == "done"
    run = trainer.run_dir
    for name in (STATE_FILE, "best_adapter.safetensors", "best_adapter.json", "report.md", "training_curve.png",
                 "history.json"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    assert "| 2 |" in report and "Dataset901_Shapes" in report and "decoder" in report
    card = read_card(trainer.adapter_path)
    assert card["trained_recipe"] == "decoder" and card["metrics"]["epoch"] == trainer.best["epoch"]
    assert card["data"]["datasets"][0]["train_cases"] and card["config"]["lr"] == 3e-3
    assert card["metrics"]["val_mean"] == pytest.approx(history[trainer.best["epoch"] - 1]["val_mean"])
    assert json.loads((run / "history.json").read_text())["history"][1]["epoch"] == 2


def test_saved_adapter_reloads_and_reproduces_outputs(trained):
    loaded = load_adapter(trained["trainer"].adapter_path, build_tiny_test_model())
    for a, b in zip(decoder_outputs(loaded), trained["snapshots"]["best_outputs"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    base = decoder_outputs(build_tiny_test_model())
    assert not torch.allclose(base[0], trained["snapshots"]["best_outputs"][0])  # training changed something


def test_cached_mode_encodes_each_plane_once(trained, data_dirs):
    trainer, model = trained["trainer"], trained["model"]
    assert trainer.cached
    train_planes = sum(len(v) for v in trained["split"].train.candidate_slices().values())
    val_planes = len({(s.case_index, s.slice_index) for s in trainer.val_items})
    assert model.encoded == trained["snapshots"]["encoded_after_embedding"] == train_planes + val_planes
    assert trainer.stats["embedded_planes"] == train_planes + val_planes
    # a second run on the same data finds every plane in the disk cache (keyed by the base model)
    again = counting(build_tiny_test_model())
    cfg = tiny_config(trained["tmp"], epochs=1, steps_per_epoch=1, baseline_validation=False)
    Trainer(cfg, trained["split"].train, trained["split"].val, trained["tmp"] / "again", model=again).fit()
    assert again.encoded == 0


class Interrupt(Exception):
    pass


def test_resume_continues_from_the_saved_epoch(trained, tmp_path):
    split = trained["split"]
    cfg = tiny_config(trained["tmp"])  # same settings (and cache) as the uninterrupted reference run

    def stop_in_epoch_2(event):
        if event.kind == "step" and event.epoch == 2:
            raise Interrupt

    first = Trainer(cfg, split.train, split.val, tmp_path / "run", model=build_tiny_test_model())
    with pytest.raises(Interrupt):
        first.fit(progress=stop_in_epoch_2)
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]) == 1

    events = []
    resumed = Trainer(cfg, split.train, split.val, tmp_path / "run", model=build_tiny_test_model())
    history = resumed.fit(progress=events.append, resume=True)
    assert resumed.epoch == 2 and [h["epoch"] for h in history] == [1, 2]
    assert {e.epoch for e in events if e.kind == "step"} == {2}
    assert not any(e.kind == "validation" and e.epoch == 0 for e in events)  # the baseline is not redone
    for got, want in zip(history, trained["history"]):  # exactly the uninterrupted run
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["val_mean"] == pytest.approx(want["val_mean"], rel=1e-5, abs=1e-6)

    with pytest.raises(InputError):  # a setting that changes what the saved tensors mean
        Trainer(tiny_config(trained["tmp"], batch_size=2), split.train, split.val, tmp_path / "run",
                model=build_tiny_test_model()).fit(resume=True)
    with pytest.raises(InputError):
        Trainer(cfg, split.train, split.val, tmp_path / "empty", model=build_tiny_test_model()).fit(resume=True)


@pytest.mark.parametrize("recipe,extra", [
    ("medsa", {"gradient_checkpointing": True}),
    ("lora", {}),
    ("medsa-3d", {"depth_chunk": 2, "batch_size": 1}),
])
def test_encoder_recipes_train_without_cache(data_dirs, tmp_path, recipe, extra):
    d2, d3 = data_dirs
    split = build_nnunet_split([d3] if recipe == "medsa-3d" else [d2], SplitOptions(0.34, 0))
    model = counting(build_tiny_test_model())
    settings = dict(recipe=recipe, epochs=1, steps_per_epoch=2, batch_size=2, val_slices=2, baseline_validation=False)
    cfg = tiny_config(tmp_path, **{**settings, **extra})
    trainer = Trainer(cfg, split.train, split.val, tmp_path / "run", model=model)
    history = trainer.fit()
    assert not trainer.cached and len(history) == 1 and np.isfinite(history[0]["loss"])
    assert model.encoded > 0
    zero_init = {n: p for n, p in model.named_parameters()  # adapter up-projections and LoRA B start at zero
                 if n.startswith("image_encoder.") and (n.endswith("up.weight") or n.endswith("peft_lora_B"))}
    assert zero_init and any(p.abs().sum() > 0 for p in zero_init.values())  # the encoder PEFT was trained
    if extra.get("gradient_checkpointing"):
        assert trainer.checkpointed_blocks > 0
    assert trainer.adapter_path.is_file()


def test_config_validation():
    with pytest.raises(InputError):
        TrainConfig(recipe="full")
    with pytest.raises(InputError):
        TrainConfig(batch_size=0)
    cfg = TrainConfig(epochs=4, steps_per_epoch=25)
    assert cfg.total_steps == 100 and cfg.warmup == 5
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_finetune_runs_and_guards_the_run_folder(data_dirs, tmp_path, monkeypatch):
    from MedSAMAdapterLib.models import registry
    from MedSAMAdapterLib.training.cli_finetune import add_finetune_parser, run_finetune

    monkeypatch.setattr(registry, "load_model", lambda name, weights=None, device="cpu": build_tiny_test_model())
    parser = argparse.ArgumentParser()
    add_finetune_parser(parser.add_subparsers())
    argv = ["finetune", str(data_dirs[0]), "--out", str(tmp_path / "run"), "--model", "tiny-test", "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "2", "--val-slices", "2", "--cache-dir", str(tmp_path / "c"),
            "--labels", "disk", "--prompts", "box=0.5,clicks=2", "--lr", "3e-4", "--seed", "1"]
    args = parser.parse_args(argv)
    assert args.handler is run_finetune and args.recipe == "decoder"
    assert run_finetune(args) == 0
    assert (tmp_path / "run" / "best_adapter.safetensors").is_file()
    card = read_card(tmp_path / "run" / "best_adapter")
    assert card["data"]["datasets"][0]["labels"] == {"1": "disk"} and card["config"]["prompt"]["max_clicks"] == 2
    with pytest.raises(InputError):  # an existing run is never overwritten by accident
        run_finetune(parser.parse_args(argv))
    assert run_finetune(parser.parse_args(argv + ["--resume", "--epochs", "2"])) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_regions_train_on_unions_of_labels(data_dirs):
    d2, d3 = data_dirs
    split = build_nnunet_split([d2], SplitOptions(0.34), regions=["both=disk,square", "square_only=2"])
    case = split.train.cases[0]
    assert case.regions == {1: (1, 2), 2: (2,)} and case.label_names == {1: "both", 2: "square_only"}
    assert split.description["datasets"][0]["regions"] == {"both": [1, 2], "square_only": [2]}
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(20):
        sample = split.train.sample(rng)
        union = np.isin(sample.label_plane, (1, 2) if sample.label == 1 else (2,))
        assert np.array_equal(sample.target, union) and sample.target.any()
        kinds.add(sample.label)
    assert kinds == {1, 2}
    largest = split.val.validation_items(None)
    assert {s.label for s in largest} == {1, 2} and all(s.target.any() for s in largest)
    labels3d = np.zeros((3, 8, 8), np.uint8)
    labels3d[1, 2:5, 2:5], labels3d[1, 5:7, 5:7] = 1, 2
    volume = make_case("v", np.random.default_rng(0).random((3, 8, 8)), labels3d, regions={1: (1, 2)})
    moved = volume.reoriented("RAS")
    assert moved.regions == {1: (1, 2)} and moved.presence[1].tolist() == [False, True, False]
    assert int(moved.target(moved.labels, 1).sum()) == 13
    with pytest.raises(InputError, match="labels or regions"):
        build_nnunet_split([d2], labels=["disk"], regions=["both=1,2"])
    with pytest.raises(InputError, match="'ball' is not a label"):
        build_nnunet_split([d2], regions=["x=ball"])
    both = build_nnunet_split([d2, d3], SplitOptions(0.34), regions=["both=disk,square"])
    by_dataset = {c.dataset: c for c in both.train.cases}
    assert by_dataset[d2.name].regions == {1: (1, 2)}  # the 2D set takes the region
    assert by_dataset[d3.name].regions == {} and by_dataset[d3.name].label_values == (1,)  # the 3D set keeps 'ball'


def test_finetune_cli_passes_regions_through(data_dirs, tmp_path, capsys):
    from MedSAMAdapterLib.cli import main

    assert main(["finetune", str(data_dirs[0]), "--out", str(tmp_path / "run"), "--region", "x=ball"]) == 2
    assert "'ball' is not a label" in capsys.readouterr().err


def test_training_can_start_from_an_existing_adapter(data_dirs, tmp_path):
    from safetensors.torch import load_file

    d2, _ = data_dirs
    split = build_nnunet_split([d2], SplitOptions(0.34, 0))
    settings = dict(epochs=1, steps_per_epoch=2, batch_size=2, val_slices=2, baseline_validation=False)
    first = Trainer(tiny_config(tmp_path, recipe="medsa", **settings), split.train, split.val, tmp_path / "medsa",
                    model=build_tiny_test_model())
    first.fit()
    model = counting(build_tiny_test_model())
    cfg = tiny_config(tmp_path, init_adapter=str(first.adapter_path), **settings)
    second = Trainer(cfg, split.train, split.val, tmp_path / "decoder", model=model)
    second.fit()
    assert second.cached  # the adapted encoder stays frozen: its embeddings are computed once and cached
    card = read_card(second.adapter_path)
    assert (card["recipe"], card["trained_recipe"]) == ("medsa", "decoder")
    assert card["config"]["init_adapter"] == str(first.adapter_path)
    before, after = load_file(first.adapter_path), load_file(second.adapter_path)
    assert before.keys() == after.keys()
    encoder = [k for k in before if k.startswith("image_encoder.")]
    decoder = [k for k in before if k.startswith("mask_decoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    with pytest.raises(WeightsError, match="sha256"):
        Trainer(cfg, split.train, split.val, tmp_path / "other", model=build_tiny_test_model(seed=3)).fit()


def test_finetune_cli_init_adapter_default_needs_a_shipped_adapter(data_dirs, tmp_path, capsys):
    from MedSAMAdapterLib.cli import main

    assert main(["finetune", str(data_dirs[0]), "--out", str(tmp_path / "run"), "--model", "tiny-test",
                 "--init-adapter", "default"]) == 2
    assert "ships no default adapter" in capsys.readouterr().err


def test_focus_share_trains_on_windows_around_the_target_and_caches_them(data_dirs, tmp_path):
    split = build_nnunet_split([data_dirs[0]], SplitOptions(0.34, 0))
    model = counting(build_tiny_test_model())
    cfg = tiny_config(tmp_path, epochs=2, steps_per_epoch=2, baseline_validation=False,
                      prompt=PromptPolicy(max_clicks=3, focus_fraction=1.0))
    trainer = Trainer(cfg, split.train, split.val, tmp_path / "run", model=model)
    focused = [s for samples, _ in trainer._batch(1, 0) for s in samples if s.window is not None]
    assert focused, "small targets are seen through focus windows"
    for sample in focused:
        assert sample.image.shape[:2] == sample.target.shape == sample.window.shape
        assert sample.target.any() and max(sample.window.shape) * 1.5 <= 64
    history = trainer.fit()
    assert all(np.isfinite(h["loss"]) for h in history)
    planes = sum(len(v) for v in split.train.candidate_slices().values())
    val_planes = len({(s.case_index, s.slice_index) for s in trainer.val_items})
    windows = {(s.case_index, s.slice_index, s.window) for epoch in (1, 2) for step in range(2)
               for samples, _ in trainer._batch(epoch, step) for s in samples if s.window is not None}
    assert model.encoded == planes + val_planes + len(windows)  # each window encoded once, then cached
