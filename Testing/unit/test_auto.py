"""Automatic (prompt-free) segmentation: heads, training on cached embeddings, checkpoints, auto -> refine,
terminology and .seg.nrrd tags. Everything runs on ``build_tiny_test_model`` (64 px input, 16x16 embedding,
64x64 low-res logits) and tiny synthetic nnU-Net folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedSAMAdapterLib.engine.auto import (AutoSegment, auto_then_refine, run_auto, segment_tags,
                                          write_auto_segmentation)
from MedSAMAdapterLib.engine.cache import EmbeddingCache
from MedSAMAdapterLib.engine.embedder import VolumeEmbedder
from MedSAMAdapterLib.engine.preprocessing import IntensityPolicy, SliceTransform
from MedSAMAdapterLib.engine.prompts import SlicePrompts
from MedSAMAdapterLib.engine.session import InteractiveSession
from MedSAMAdapterLib.engine.terminology import slicer_terminology_tag, terminology_for
from MedSAMAdapterLib.errors import InputError, WeightsError
from MedSAMAdapterLib.models.auto_classes import AutoClass
from MedSAMAdapterLib.models.auto_heads import (HEAD_TYPES, AutoModel, ContextFusion, ViTHead, auto_model_paths,
                                                build_head, load_auto_model, save_auto_model)
from MedSAMAdapterLib.models.checkpoints import base_identity
from MedSAMAdapterLib.models.registry import build_tiny_test_model, model_fingerprint
from MedSAMAdapterLib.training.auto_train import (AutoTrainConfig, build_auto_split, nearest_model_target,
                                                  train_auto)
from MedSAMAdapterLib.training.splits import SplitOptions
from Testing.conftest import make_volume

REPO = Path(__file__).resolve().parents[2]
TINY_OPTIONS = {"vit": {"depth": 1, "mlp_dim": 64}, "cnn": {"channels": (16, 8, 8)}, "linear": {}}
LABELS = {1: "LV", 2: "MYO"}


# ---------------------------------------------------------------------------------------------- fixtures
def synthetic_case(seed: int, shape=(4, 40, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc (label 1) inside a dim ring (label 2) on a dark noisy background, moving a little per slice."""
    rng = np.random.default_rng(seed)
    k, j, i = shape
    jj, ii = np.mgrid[:j, :i]
    image = rng.normal(20.0, 4.0, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    cj, ci = j / 2 + rng.uniform(-3, 3), i / 2 + rng.uniform(-3, 3)
    for s in range(k):
        r = np.hypot(jj - cj - s, ii - ci)
        ring, disc = (r < 11) & (r >= 6), r < 6
        labels[s][ring], labels[s][disc] = 2, 1
        image[s][ring] += 90.0
        image[s][disc] += 200.0
    return image, labels


def write_nnunet(root: Path, cases: int = 4, shape=(4, 40, 32)) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    names = []
    for n in range(cases):
        image, labels = synthetic_case(n, shape)
        name = f"patient{n:03d}_frame01"
        names.append(name)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(root / "imagesTr" / f"{name}_0000.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(labels), str(root / "labelsTr" / f"{name}.nii.gz"))
    meta = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "LV": 1, "MYO": 2},
            "numTraining": cases, "file_ending": ".nii.gz", "dimensionality": "3D"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_test_model(seed=0)


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_nnunet(tmp_path / "Dataset900_Toy")


def tiny_auto_model(tiny, kind="linear", context=False, seed=0) -> AutoModel:
    torch.manual_seed(seed)
    head = build_head(kind, 3, 256, tiny.embedding_size, context, **TINY_OPTIONS[kind]).eval()
    name, sha = base_identity(tiny)
    classes = [AutoClass("LV", 1, (1.0, 0.0, 0.0), terminology_for("LV")), AutoClass("MYO", 2, (0.0, 1.0, 0.0))]
    return AutoModel(head, name, sha, classes, model_fingerprint(tiny), "auto")


# ---------------------------------------------------------------------------------------------- heads
@pytest.mark.parametrize("kind", HEAD_TYPES)
@pytest.mark.parametrize("context", [False, True])
@pytest.mark.parametrize("classes", [2, 4])
def test_head_output_shape(kind, context, classes):
    head = build_head(kind, classes, 256, 16, context, **TINY_OPTIONS[kind])
    x = torch.randn(2, 3 * 256 if context else 256, 16, 16)
    y = head(x)
    assert y.shape == (2, classes, 64, 64)
    assert torch.isfinite(y).all()
    y.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_default_heads_forward_on_tiny_grid(kind):
    head = build_head(kind, 4, 256, 8)  # default (LiteMedSAM-sized) configuration on an 8x8 grid: one forward
    with torch.no_grad():
        assert head(torch.randn(1, 256, 8, 8)).shape == (1, 4, 32, 32)


def test_head_rejects_wrong_input():
    head = build_head("linear", 3, 256, 16, context=True)
    with pytest.raises(InputError, match="previous, centre, next"):
        head(torch.randn(1, 256, 16, 16))
    with pytest.raises(InputError):
        build_head("unet", 3)
    with pytest.raises(InputError):
        build_head("linear", 1)


def test_context_fusion_starts_as_the_centre_slice():
    fusion = ContextFusion(8)
    prev, centre, nxt = torch.randn(3, 1, 8, 5, 5)
    assert torch.allclose(fusion(torch.cat([prev, centre, nxt], 1)), centre)
    torch.manual_seed(0)
    plain = build_head("cnn", 3, 256, 16, False, **TINY_OPTIONS["cnn"]).eval()
    ctx = build_head("cnn", 3, 256, 16, True, **TINY_OPTIONS["cnn"]).eval()
    ctx.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 256, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ctx(torch.cat([torch.randn_like(x), x, torch.randn_like(x)], 1)), plain(x), atol=1e-5)


def test_vit_head_initialised_from_base_decoder(tiny):
    head = ViTHead(3, 256, tiny.embedding_size, depth=1, mlp_dim=64)
    copied = head.init_from_base(tiny, seed=1)
    dec = tiny.mask_decoder.state_dict()
    own = head.state_dict()
    assert torch.equal(own["transformer.layers.0.mlp.lin1.weight"], dec["transformer.layers.0.mlp.lin1.weight"])
    assert torch.equal(own["output_upscaling.0.weight"], dec["output_upscaling.0.weight"])
    for k in range(3):
        assert torch.equal(own[f"hypernetworks.{k}.layers.0.weight"], dec["output_hypernetworks_mlps.0.layers.0.weight"])
    assert torch.equal(own["pe_layer.positional_encoding_gaussian_matrix"],
                       tiny.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix)
    tokens = own["class_tokens.weight"]
    assert not torch.equal(tokens[0], tokens[1])  # symmetry broken
    assert "class_tokens.weight" in copied and "dense_embed" in copied
    # the default (SAM-sized) head keeps its random transformer when the shapes differ, without failing
    big = ViTHead(3, 256, tiny.embedding_size)
    assert "transformer.layers.0.mlp.lin1.weight" not in big.init_from_base(tiny)


# ---------------------------------------------------------------------------------------------- targets
def test_nearest_model_target_follows_resize_and_padding():
    plane = np.zeros((40, 20), np.uint8)
    plane[:20, :10] = 1   # top-left quarter
    plane[30:, 10:] = 2
    tr = SliceTransform.for_shape(plane.shape, 64, 32)  # resized to 64 x 32, low-res 32 x 32 -> 32 x 16 used
    target = nearest_model_target(plane, tr)
    assert target.shape == (32, 32)
    assert (target[:, 16:] == 0).all()  # padding is background
    assert (target[:16, :8] == 1).all() and (target[16:, :8] == 0).all()
    assert (target[24:, 8:16] == 2).all() and (target[:24, 8:16] != 2).all()


# ---------------------------------------------------------------------------------------------- training
def test_split_keeps_patients_and_few_shot_subset(dataset):
    split = build_auto_split(dataset, split=SplitOptions(val_patients=1, max_train_patients=2))
    assert len(split.val) == 1 and len(split.train) == 2
    assert not {c.case_id for c in split.train} & {c.case_id for c in split.val}
    assert split.labels == {1: "LV", 2: "MYO"}
    explicit = build_auto_split(dataset, ["MYO"], SplitOptions(train_cases=["patient000"], val_cases=["patient003"]))
    assert [c.case_id for c in explicit.train] == ["patient000_frame01"] and explicit.labels == {2: "MYO"}
    with pytest.raises(InputError):
        build_auto_split(dataset, split=SplitOptions(train_cases=["patient003"], val_cases=["patient003"]))


@pytest.mark.parametrize("kind,context", [("linear", False), ("cnn", True), ("vit", False)])
def test_short_training_lowers_the_loss_and_writes_the_run(dataset, tmp_path, tiny, kind, context):
    split = build_auto_split(dataset, split=SplitOptions(val_patients=1))
    events = []
    cfg = AutoTrainConfig(head=kind, context=context, head_options=TINY_OPTIONS[kind], epochs=5, batch_size=6,
                          lr={"linear": 3e-2, "cnn": 3e-3, "vit": 1e-3}[kind], patience=None, device="cpu",
                          warmup_epochs=0)
    result = train_auto(cfg, split.train, split.val, tmp_path / "run", split.labels, model=tiny,
                        progress=events.append, data_description=split.description)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert {"embed", "step", "validation", "epoch", "done"} <= {e.kind for e in events}
    for name in ("auto_model.safetensors", "auto_model.json", "history.json", "training_curve.png"):
        assert (tmp_path / "run" / name).is_file()
    card = json.loads((tmp_path / "run" / "auto_model.json").read_text())
    assert card["head"]["type"] == kind and card["head"]["context"] is context
    assert [c["name"] for c in card["classes"]] == ["LV", "MYO"]
    assert card["base_model"]["name"] == "tiny-test"
    assert card["training"]["data"]["train_patients"] == split.description["train_patients"]
    assert "val_dice_LV" in card["metrics"] and "val_dice_mean" in card["metrics"]
    assert result.model.head.kind == kind


def test_training_reuses_cached_embeddings(dataset, tmp_path, tiny):
    split = build_auto_split(dataset, split=SplitOptions(val_patients=1))
    cfg = AutoTrainConfig(head="linear", epochs=1, device="cpu", cache_dir=str(tmp_path / "cache"))
    first = train_auto(cfg, split.train, split.val, tmp_path / "a", split.labels, model=tiny)
    second = train_auto(cfg, split.train, split.val, tmp_path / "b", split.labels, model=tiny)
    assert first.stats["embedded_planes"] == first.stats["cached_planes"] > 0
    assert second.stats["embedded_planes"] == 0


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_checkpoint_round_trip(tmp_path, tiny, kind):
    auto = tiny_auto_model(tiny, kind, context=kind == "cnn")
    path = save_auto_model(tmp_path / "m", auto, training={"note": "t"}, metrics={"dice": float("nan")})
    assert path == tmp_path / "m.safetensors" and auto_model_paths(path)[1].is_file()
    loaded = load_auto_model(tmp_path / "m.json")
    x = torch.randn(2, auto.head.in_channels, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded.head(x), auto.head.eval()(x), atol=1e-6)
    assert loaded.class_names == ["LV", "MYO"] and loaded.label_values == [1, 2]
    assert loaded.classes[0].terminology["type"]["CodeValue"] == "87878005"
    assert (loaded.base_model, loaded.base_sha256) == base_identity(tiny)
    assert loaded.card["metrics"]["dice"] is None  # NaN is not JSON
    half = save_auto_model(tmp_path / "h", auto, dtype="float16")
    assert half.stat().st_size < path.stat().st_size or kind == "linear"
    with torch.no_grad():
        assert torch.allclose(load_auto_model(half).head(x), auto.head(x), atol=5e-2, rtol=5e-2)


def test_checkpoint_tampering_is_refused(tmp_path, tiny):
    path = save_auto_model(tmp_path / "m", tiny_auto_model(tiny))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_auto_model(path)
    with pytest.raises(WeightsError, match="not found"):
        load_auto_model(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- inference
def test_predict_volume_and_run_auto(tmp_path, tiny):
    image, _ = synthetic_case(7)
    volume = make_volume(image)
    auto = tiny_auto_model(tiny, "cnn", context=True)
    save_auto_model(tmp_path / "m", auto)
    cache = EmbeddingCache(tmp_path / "cache")
    embedder = VolumeEmbedder(volume, tiny, cache, IntensityPolicy.parse("auto"))
    seen = []
    labels = auto.predict_volume(volume, embedder, lambda d, t: seen.append((d, t)), batch_size=3)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert seen[-1] == (4, 4)
    # the same answer one slice at a time (context neighbours handled at the batch borders)
    assert np.array_equal(auto.predict_volume(volume, embedder, batch_size=1), labels)
    result, segments = run_auto(volume, tmp_path / "m", base_model=tiny, cache=cache)
    assert np.array_equal(result, labels)
    assert [s.name for s in segments] == ["LV", "MYO"]
    assert segments[0].voxel_count == int((labels == 1).sum())
    with pytest.raises(WeightsError, match="trained on base model"):
        run_auto(volume, tmp_path / "m", base_model=build_tiny_test_model(seed=1), cache=cache)
    other = VolumeEmbedder(volume, tiny, cache, IntensityPolicy.parse("minmax"))
    with pytest.raises(InputError, match="intensity"):
        auto.predict_volume(volume, other)


def test_auto_then_refine_touches_only_the_refined_segment(tmp_path, tiny):
    image, truth = synthetic_case(3)
    volume = make_volume(image)
    save_auto_model(tmp_path / "m", tiny_auto_model(tiny, "linear"))
    session = InteractiveSession(volume, tiny, EmbeddingCache(tmp_path / "cache"))
    labels, segments = run_auto(volume, tmp_path / "m", base_model=tiny, cache=session.embedder.cache)
    # a random head may find nothing: give both classes voxels so the test means something
    labels = labels.copy()
    labels[truth == 1], labels[truth == 2] = 1, 2
    ids = auto_then_refine(session, (labels, segments))
    assert set(ids) == {1, 2}
    assert np.array_equal(session.label_volume(), labels)
    lv, myo = ids[1], ids[2]
    assert session.segments[lv].name == "LV" and session.segments[lv].color == segments[0].color
    before = {sid: session.segment_mask(sid) for sid in ids.values()}
    session.segment_slice(lv, 0, 2, SlicePrompts(box_rc=(2.0, 2.0, 20.0, 18.0)))
    session.segment_slice(lv, 0, 2, SlicePrompts(points_rc=[(10.0, 10.0)], point_labels=[1]))
    assert np.array_equal(session.segment_mask(myo), before[myo])  # the other organ is untouched
    changed = np.argwhere(session.segment_mask(lv) != before[lv])
    assert changed.size == 0 or set(changed[:, 0].tolist()) == {2}  # only the prompted slice changes
    while session.undo(lv):
        pass
    assert not session.segment_mask(lv).any()  # back to empty: the auto result was one undoable edit
    assert session.redo(lv) and np.array_equal(session.segment_mask(lv), before[lv])
    assert np.array_equal(session.segment_mask(myo), before[myo])
    with pytest.raises(InputError, match="already has segments"):
        auto_then_refine(session, (labels, segments))


# ---------------------------------------------------------------------------------------------- terminology
REQUIRED = ["left ventricle", "right ventricle", "myocardium", "spleen", "kidney_right", "kidney_left", "gallbladder",
            "liver", "stomach", "pancreas", "aorta", "inferior vena cava", "adrenal glands", "lung", "esophagus",
            "duodenum", "urinary bladder", "vertebrae", "lesion", "tumor", "left atrium", "prostate", "fetal head",
            "polyp", "optic disc", "optic cup"]
KNOWN_CODES = {"liver": "10200004", "spleen": "78961009", "kidney_right": "9846003", "kidney_left": "18639004",
               "gallbladder": "28231008", "pancreas": "15776009", "stomach": "69695003", "aorta": "15825003",
               "LV": "87878005", "RV": "53085002", "MYO": "74281007", "lung": "39607008", "esophagus": "32849002",
               "urinary_bladder": "89837001"}


@pytest.mark.parametrize("name", REQUIRED)
def test_terminology_entries_exist(name):
    entry = terminology_for(name)
    assert entry is not None, name
    for part in ("category", "type"):
        assert entry[part]["CodingSchemeDesignator"] == "SCT" and entry[part]["CodeValue"].isdigit()
        assert entry[part]["CodeMeaning"]
    assert len(entry["color"]) == 3 and all(0 <= c <= 255 for c in entry["color"])
    assert isinstance(entry["verified"], bool)


def test_terminology_codes_and_aliases():
    for name, code in KNOWN_CODES.items():
        assert terminology_for(name)["type"]["CodeValue"] == code, name
        assert terminology_for(name)["verified"] is True
    assert terminology_for("Left-Ventricle")["name"] == terminology_for("heart_ventricle_left")["name"]
    assert terminology_for("adrenal_gland_right")["typeModifier"]["CodeValue"] == "24028007"
    assert terminology_for("no such organ") is None
    tag = slicer_terminology_tag(terminology_for("liver"))
    assert tag == ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical "
                   "Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")


def shipped_auto_cards() -> list[Path]:
    return [p for p in sorted((REPO / "Resources" / "Models").glob("*.json"))
            if json.loads(p.read_text()).get("format") == "medsam-adapter/auto-head"]


def test_every_shipped_model_class_has_terminology():
    for card_path in shipped_auto_cards():
        card = json.loads(card_path.read_text())
        for c in card["classes"]:
            assert terminology_for(c["name"]) is not None, (card_path.name, c["name"])
            assert c["terminology"] is not None
        assert auto_model_paths(card_path)[0].is_file()
        # float16 ViT heads: 7.5 MiB with 3 classes, 10.7 MiB with 15 (one hypernetwork MLP per class)
        assert auto_model_paths(card_path)[0].stat().st_size < 12 * 2**20


def test_shipped_models_load():
    for card_path in shipped_auto_cards():
        model = load_auto_model(card_path)
        assert model.head.num_classes == len(model.classes) + 1


def test_seg_nrrd_carries_terminology_tags(tmp_path):
    labels = np.zeros((3, 10, 12), np.uint8)
    labels[1, 2:5, 2:6] = 3
    labels[1, 6:8, 6:9] = 1
    segments = [AutoSegment("RV", 1, (0.2, 0.4, 0.9), terminology_for("RV")),
                AutoSegment("MYO", 2, (0.3, 0.8, 0.3), None),
                AutoSegment("LV", 3, (0.9, 0.3, 0.3), terminology_for("LV")),
                AutoSegment("mystery", 4, (0.5, 0.5, 0.5), None)]
    out = write_auto_segmentation(labels, make_volume(labels.astype(np.float32)).geometry, tmp_path / "a.seg.nrrd",
                                  segments)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(out))
    reader.ReadImageInformation()
    meta = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    by_name = {meta[f"Segment{n}_Name"]: n for n in range(4)}
    assert set(by_name) == {"RV", "MYO", "LV", "mystery"}
    lv_tags = meta[f"Segment{by_name['LV']}_Tags"]
    assert ("TerminologyEntry:Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^"
            "Anatomical Structure~SCT^87878005^Left ventricle~^^~Anatomic codes - DICOM master list~^^~^^|") in lv_tags
    assert "SCT^74281007^Myocardium" in meta[f"Segment{by_name['MYO']}_Tags"]  # looked up by name
    assert "TerminologyEntry" not in meta[f"Segment{by_name['mystery']}_Tags"]
    assert meta[f"Segment{by_name['LV']}_LabelValue"] == "3"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), labels)
    assert segment_tags({"name": "liver"}).startswith("Segmentation.Status:inprogress|TerminologyEntry:")
    nii = write_auto_segmentation(labels, make_volume(labels.astype(np.float32)).geometry, tmp_path / "a.nii.gz",
                                  segments)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(nii))), labels)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_train_auto_and_auto(dataset, tmp_path, tiny, monkeypatch):
    import argparse

    from MedSAMAdapterLib.models import loading, registry
    from MedSAMAdapterLib.training.cli_auto import add_auto_parsers

    monkeypatch.setattr(registry, "load_model", lambda *a, **k: tiny)
    monkeypatch.setattr(loading, "open_model", lambda *a, **k: tiny)
    parser = argparse.ArgumentParser()
    add_auto_parsers(parser.add_subparsers())
    args = parser.parse_args(["train-auto", str(dataset), "--head", "cnn", "--context", "--epochs", "2",
                              "--out", str(tmp_path / "run"), "--max-train-patients", "2", "--val-patients", "1",
                              "--cnn-channels", "16,8", "--cnn-convs", "1,0", "--device", "cpu",
                              "--model", "tiny-test", "--augment", "1", "--single-component", "MYO",
                              "--augment-rotate", "90"])
    assert args.handler(args) == 0
    card = json.loads((tmp_path / "run" / "auto_model.json").read_text())
    assert card["head"]["options"]["channels"] == [16, 8] and len(card["training"]["data"]["train_patients"]) == 2
    assert card["training"]["config"]["augment"] == 1 and card["training"]["config"]["augment_rotate"] == 90
    assert [c["single_component"] for c in card["classes"]] == [False, True]
    assert [c["box_prompt"] for c in card["classes"]] == [True, False]  # the disc, and the ring around it
    assert [c.box_prompt for c in load_auto_model(tmp_path / "run" / "auto_model").classes] == [True, False]
    image, _ = synthetic_case(9)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "img.nii.gz"))
    args = parser.parse_args(["auto", str(tmp_path / "img.nii.gz"), "--model", str(tmp_path / "run" / "auto_model"),
                              "-o", str(tmp_path / "out.seg.nrrd"), "--overlay", str(tmp_path / "o.png"),
                              "--cache-dir", str(tmp_path / "c")])
    assert args.handler(args) == 0
    assert (tmp_path / "out.seg.nrrd").is_file() and (tmp_path / "o.png").is_file()


@pytest.mark.parametrize("options,message", [({"val_fraction": 1.0}, "validation fraction"),
                                              ({"val_fraction": -0.1}, "validation fraction"),
                                              ({"max_train_patients": 0}, "max_train_patients"),
                                              ({"val_patients": 0}, "val_patients")])
def test_split_options_refuse_bad_values(options, message):
    with pytest.raises(InputError, match=message):
        SplitOptions(**options)


@pytest.mark.parametrize("command", ["train-auto", "finetune", "distill"])
def test_every_trainer_cli_takes_the_same_split_flags(command, dataset, tmp_path, capsys):
    from MedSAMAdapterLib.cli import main

    first = {"train-auto": [str(dataset), "--out", str(tmp_path / "run")],
             "finetune": [str(dataset), "--out", str(tmp_path / "run")],
             "distill": [str(tmp_path / "teacher"), "--data", str(dataset), "-o", str(tmp_path / "s")]}[command]
    assert main([command, *first, "--val-fraction", "1.5", "--train-cases", "patient000"]) == 2
    assert "validation fraction must be in [0, 1)" in capsys.readouterr().err


def test_ema_saves_the_moving_average_of_the_weights(dataset, tmp_path, tiny):
    split = build_auto_split(dataset, split=SplitOptions(val_patients=1))
    planes = sum(c.slice_count for c in split.train)
    common = dict(head="linear", head_options=TINY_OPTIONS["linear"], batch_size=planes, device="cpu",
                  warmup_epochs=0, min_lr_ratio=1.0, lr=3e-2)  # one step per epoch, constant learning rate
    # decay ~1: the average stays at the weights after the first step (its first update copies them)
    slow = train_auto(AutoTrainConfig(epochs=3, ema=0.999999, **common), split.train, None, tmp_path / "a",
                      split.labels, model=tiny)
    one_step = train_auto(AutoTrainConfig(epochs=1, **common), split.train, None, tmp_path / "b", split.labels,
                          model=tiny)
    raw = train_auto(AutoTrainConfig(epochs=3, **common), split.train, None, tmp_path / "c", split.labels, model=tiny)
    for name, value in slow.model.head.state_dict().items():
        assert torch.allclose(value, one_step.model.head.state_dict()[name], atol=1e-5)
    assert any(not torch.allclose(v, raw.model.head.state_dict()[k], atol=1e-4)
               for k, v in slow.model.head.state_dict().items())
    with pytest.raises(InputError, match="ema"):
        AutoTrainConfig(ema=1.0)


@pytest.mark.parametrize("degrees", [-1.0, 181.0])
def test_augment_rotation_range_is_checked(degrees):
    with pytest.raises(InputError, match="augment_rotate"):
        AutoTrainConfig(augment_rotate=degrees)


def test_finetune_autosam_recipes_run_the_head_trainer(dataset, tmp_path, tiny, monkeypatch):
    from MedSAMAdapterLib.cli import main
    from MedSAMAdapterLib.models import registry
    from MedSAMAdapterLib.training.cli_finetune import route_autosam_recipes

    assert route_autosam_recipes(["finetune", "D", "--recipe=autosam-cnn", "--out", "R"]) == \
        ["train-auto", "D", "--head", "cnn", "--out", "R"]
    assert route_autosam_recipes(["finetune", "D", "--recipe", "medsa"]) == ["finetune", "D", "--recipe", "medsa"]
    assert route_autosam_recipes(["auto", "--recipe", "autosam-vit"]) == ["auto", "--recipe", "autosam-vit"]
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: tiny)
    assert main(["finetune", str(dataset), "--recipe", "autosam-linear", "--epochs", "1", "--val-patients", "1",
                 "--out", str(tmp_path / "run"), "--model", "tiny-test", "--device", "cpu"]) == 0
    card = json.loads((tmp_path / "run" / "auto_model.json").read_text())
    assert card["head"]["type"] == "linear" and card["format"] == "medsam-adapter/auto-head"
