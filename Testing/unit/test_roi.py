"""Locate, then zoom (``engine/roi.py``): the box, the exact crop and its geometry, training crops, the two-pass
inference of ``AutoSegmenter`` and a training run with ``roi_margin`` (tiny model, synthetic nnU-Net folder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSAMAdapterLib.engine.auto import AutoSegmenter
from MedSAMAdapterLib.engine.cache import EmbeddingCache
from MedSAMAdapterLib.engine.geometry import Geometry
from MedSAMAdapterLib.engine.roi import PlaneBox, box_around, crop_volume
from MedSAMAdapterLib.engine.volume import Volume
from MedSAMAdapterLib.errors import InputError
from MedSAMAdapterLib.models.auto_heads import load_auto_model, save_auto_model
from MedSAMAdapterLib.models.registry import build_tiny_test_model
from MedSAMAdapterLib.training.augment import foreground, roi_copies
from MedSAMAdapterLib.training.auto_train import AutoTrainConfig, build_auto_split, train_auto
from MedSAMAdapterLib.training.datasets import make_case
from MedSAMAdapterLib.training.splits import SplitOptions
from Testing.unit.test_auto import TINY_OPTIONS, synthetic_case, tiny_auto_model, write_nnunet


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_test_model(seed=0)


def blob(shape=(3, 60, 80), rows=(20, 30), cols=(30, 50), plane=1) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[plane, rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


# ---------------------------------------------------------------------------------------------- the box
def test_box_is_square_around_everything_found_with_the_margin():
    mask = blob() | blob(rows=(24, 28), cols=(26, 32), plane=2)  # union over planes: rows 20-30, cols 26-50
    box = box_around(mask, margin=0.25, min_side=8)
    side = round(24 * 1.5)  # larger extent (24 columns) grown by 25 % per side
    assert (box.j1 - box.j0, box.i1 - box.i0) == (side, side)
    assert box.j0 <= 20 and box.j1 >= 30 and box.i0 <= 26 and box.i1 >= 50
    assert abs((box.i0 + box.i1) / 2 - 38) <= 0.5 and abs((box.j0 + box.j1) / 2 - 25) <= 0.5
    assert box_around(np.zeros((2, 10, 10), bool), 0.25, 8) is None


def test_box_stays_square_at_the_edge_and_inside_the_plane():
    near_corner = box_around(blob(rows=(0, 6), cols=(74, 80)), margin=1.0, min_side=32)
    assert near_corner.j0 == 0 and near_corner.i1 == 80  # shifted inward, not cut
    assert near_corner.j1 - near_corner.j0 == near_corner.i1 - near_corner.i0 == 32  # min_side wins over 6 * 3
    assert box_around(blob(), margin=0.25, min_side=64).covers((60, 80)) is False  # 64 rows > 60: clamped
    assert box_around(blob(), margin=0.25, min_side=80).covers((60, 80))  # the encoder's size: no zoom
    whole = box_around(blob(rows=(5, 55), cols=(5, 75)), margin=0.5, min_side=8)
    assert whole == PlaneBox(0, 60, 0, 80) and whole.covers((60, 80))
    shifted = box_around(blob(), margin=0.25, min_side=8, shift=(0.1, -0.1))
    centred = box_around(blob(), margin=0.25, min_side=8)
    assert shifted.j0 > centred.j0 and shifted.i0 < centred.i0
    with pytest.raises(InputError, match="margin"):
        box_around(blob(), margin=-0.1, min_side=8)


def test_crop_keeps_the_voxels_and_their_physical_position():
    rng = np.random.default_rng(0)
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    geometry = Geometry((0.7, 1.3, 5.0), (10.0, -4.0, 2.0), direction)
    volume = Volume(rng.normal(size=(3, 60, 80)).astype(np.float32), geometry, "x.nii.gz")
    box = PlaneBox(12, 40, 30, 58)
    crop = crop_volume(volume, box)
    assert crop.shape == (3, 28, 28)
    assert np.array_equal(crop.array, volume.array[:, 12:40, 30:58])
    for k, j, i in [(0, 0, 0), (2, 27, 5), (1, 13, 27)]:  # the same point in space on both grids
        assert np.allclose(crop.geometry.ijk_to_lps([i, j, k]), volume.geometry.ijk_to_lps([i + 30, j + 12, k]))
    with pytest.raises(InputError, match="exceeds"):
        crop_volume(volume, PlaneBox(0, 61, 0, 10))


def test_training_crops_hold_all_the_ground_truth():
    image, labels = synthetic_case(2, shape=(4, 64, 56))
    case = make_case("p1", image, labels, [1, 2])
    exact, = roi_copies([case], 0.25, 16, jitter=False)
    assert exact.case_id == "p1_roi" and exact.labels.shape[1:] == exact.volume.shape[1:]
    assert exact.labels.shape[1] == exact.labels.shape[2] < 56  # square, smaller than the plane
    assert foreground(exact).sum() == foreground(case).sum()  # nothing of the ground truth is cut off
    jittered, = roi_copies([case], 0.25, 16, seed=3)
    assert foreground(jittered).sum() == foreground(case).sum()
    assert roi_copies([case], 0.25, 16, seed=3)[0].labels.shape == jittered.labels.shape  # repeatable
    assert roi_copies([case], 0.25, 64) == []  # the box would be the whole plane: nothing to zoom into
    empty = make_case("p2", image, np.zeros_like(labels), [1, 2])
    assert roi_copies([empty], 0.25, 16) == []


# ---------------------------------------------------------------------------------------------- two passes
def test_second_pass_runs_on_the_crop_around_the_first(tmp_path, tiny):
    auto = tiny_auto_model(tiny, "linear")
    auto.roi_margin = 0.25
    save_auto_model(tmp_path / "m", auto)
    assert load_auto_model(tmp_path / "m").roi_margin == 0.25
    segmenter = AutoSegmenter(tmp_path / "m", base_model=tiny, cache=EmbeddingCache(use_disk=False))
    volume = Volume(np.random.default_rng(1).normal(size=(3, 120, 160)).astype(np.float32))
    calls, seen = [], []

    def run(v, progress):
        calls.append(v)
        progress(1, 1)
        return np.where(blob(v.shape), 1, 0).astype(np.uint8) if len(calls) == 1 else np.full(v.shape, 2, np.uint8)

    def paste(whole, box, crop):
        out = np.zeros_like(whole)
        out[(slice(None), *box.slices)] = crop
        return out

    out = segmenter._zoomed(volume, lambda d, t: seen.append((d, t)), run, lambda w: w, paste)
    box = box_around(blob((3, 120, 160)), 0.25, tiny.image_size)
    assert box.j1 - box.j0 == box.i1 - box.i0 == tiny.image_size  # the blob is smaller: the encoder's size
    assert calls[0] is volume and calls[1].shape == (3, box.j1 - box.j0, box.i1 - box.i0)
    assert np.array_equal(calls[1].array, volume.array[(slice(None), *box.slices)])
    assert (out[(slice(None), *box.slices)] == 2).all() and out.sum() == 2 * 3 * tiny.image_size ** 2
    assert seen == [(1, 2), (2, 2)]  # each pass reports one half


def test_two_pass_logits_and_labels_agree(tmp_path, tiny):
    auto = tiny_auto_model(tiny, "cnn")
    auto.roi_margin = 0.1
    save_auto_model(tmp_path / "m", auto)
    segmenter = AutoSegmenter(tmp_path / "m", base_model=tiny, cache=EmbeddingCache(use_disk=False))
    image, _ = synthetic_case(5, shape=(3, 96, 80))
    volume = Volume(image)
    labels = segmenter.predict(volume)
    logits = segmenter.logits(volume)
    assert logits.shape == (3, *volume.shape)
    assert np.array_equal(segmenter.head.label_map(logits.argmax(0).numpy()), labels)


# ---------------------------------------------------------------------------------------------- training
def test_training_with_zoom_selects_on_the_crops_and_records_the_margin(tmp_path, tiny):
    dataset = write_nnunet(tmp_path / "Dataset900_Toy", shape=(3, 112, 96))
    split = build_auto_split(dataset, split=SplitOptions(val_patients=1))
    cfg = AutoTrainConfig(head="linear", head_options=TINY_OPTIONS["linear"], epochs=2, batch_size=4, lr=3e-2,
                          patience=None, device="cpu", warmup_epochs=0, roi_margin=0.25, augment=1)
    result = train_auto(cfg, split.train, split.val, tmp_path / "run", split.labels, model=tiny)
    assert result.stats["roi_cases"] == {"train": 2 * len(split.train), "val": len(split.val)}
    assert result.stats["train_planes"] == 3 * 4 * len(split.train)  # originals, augmented copies, crops of both
    assert result.best["by"] == "val_roi_dice_mean"
    assert {"val_dice_mean", "val_roi_dice_mean", "val_roi_dice_LV"} <= set(result.history[-1])
    card = json.loads((tmp_path / "run" / "auto_model.json").read_text())
    assert card["roi"]["margin"] == 0.25 and result.model.roi_margin == 0.25
    with pytest.raises(InputError, match="roi_margin"):
        AutoTrainConfig(roi_margin=-1.0)
