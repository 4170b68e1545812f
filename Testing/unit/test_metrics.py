"""Metrics against cases computable by hand; spacing order (i, j, k) vs array order (k, j, i) is the trap."""

import math

import numpy as np
import pytest

from MedSAMAdapterLib.errors import InputError
from MedSAMAdapterLib.evaluation.metrics import (
    binary_metrics,
    case_metrics,
    dice_score,
    mean_metrics,
    nanmean,
    overall_mean,
)


def square(shape, rows, cols, slices=None):
    mask = np.zeros(shape, bool)
    if len(shape) == 2:
        mask[rows, cols] = True
    else:
        mask[slices if slices is not None else slice(None), rows, cols] = True
    return mask


def test_dice_of_two_overlapping_squares():
    gt = square((1, 40, 40), slice(10, 20), slice(10, 20))
    pred = square((1, 40, 40), slice(10, 20), slice(15, 25))  # 10x5 overlap of two 10x10 squares
    assert binary_metrics(pred, gt, (1.0, 1.0, 1.0))["dice"] == pytest.approx(2 * 50 / 200)
    cube_gt = square((10, 10, 10), slice(0, 4), slice(0, 4), slice(0, 4))
    cube_pred = square((10, 10, 10), slice(0, 4), slice(0, 4), slice(2, 6))  # half overlap of two 4^3 cubes
    assert binary_metrics(cube_pred, cube_gt, (1.0, 1.0, 1.0))["dice"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "shift_axis, shift, spacing, expected_mm",
    [
        (2, 4, (0.5, 2.0, 3.0), 2.0),  # along i: 4 voxels x 0.5 mm
        (1, 3, (0.5, 2.0, 3.0), 6.0),  # along j: 3 voxels x 2.0 mm
        (0, 1, (0.5, 2.0, 3.0), 3.0),  # along k: 1 slice x 3.0 mm
    ],
)
def test_hd95_of_shifted_box_is_the_shift_in_mm_3d(shift_axis, shift, spacing, expected_mm):
    gt = np.zeros((12, 30, 30), bool)
    gt[3:8, 8:18, 8:18] = True
    pred = np.roll(gt, shift, axis=shift_axis)
    assert binary_metrics(pred, gt, spacing)["hd95"] == pytest.approx(expected_mm)


@pytest.mark.parametrize("shift_axis, spacing, expected_mm", [(2, (0.5, 2.0, 9.0), 1.5), (1, (0.5, 2.0, 9.0), 6.0)])
def test_hd95_of_shifted_square_2d_uses_in_plane_spacing(shift_axis, spacing, expected_mm):
    gt = square((1, 30, 30), slice(8, 18), slice(8, 18))
    pred = np.roll(gt, 3, axis=shift_axis)
    assert binary_metrics(pred, gt, spacing)["hd95"] == pytest.approx(expected_mm)
    assert binary_metrics(pred[0], gt[0], spacing[:2])["hd95"] == pytest.approx(expected_mm)  # plain (j, i) arrays


def test_nsd_tolerance():
    gt = square((1, 40, 40), slice(10, 20), slice(10, 20))
    near = np.roll(gt, 3, axis=2)  # 3 columns x 0.5 mm = 1.5 mm: every boundary point within 2 mm
    assert binary_metrics(near, gt, (0.5, 1.0, 1.0), nsd_tolerance_mm=2.0)["nsd"] == pytest.approx(1.0)
    partial = binary_metrics(near, gt, (1.0, 1.0, 1.0), nsd_tolerance_mm=2.0)["nsd"]  # now 3 mm: only part within
    assert 0.0 < partial < 1.0
    far = square((1, 40, 40), slice(25, 35), slice(25, 35))
    metrics = binary_metrics(far, gt, (1.0, 1.0, 1.0))
    assert metrics["dice"] == 0.0 and metrics["nsd"] == 0.0
    assert metrics["hd95"] == pytest.approx(15 * math.sqrt(2), rel=0.1)


def test_empty_conventions():
    empty = np.zeros((1, 10, 10), bool)
    full = square((1, 10, 10), slice(2, 5), slice(2, 5))
    assert binary_metrics(empty, empty, (1, 1, 1)) == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}
    for pred, gt in ((full, empty), (empty, full)):
        metrics = binary_metrics(pred, gt, (1, 1, 1))
        assert metrics["dice"] == 0.0 and metrics["nsd"] == 0.0 and math.isnan(metrics["hd95"])
    assert dice_score(empty, empty) == 1.0 and dice_score(full, empty) == 0.0


def test_identical_masks_are_perfect():
    gt = square((5, 12, 12), slice(2, 9), slice(3, 8), slice(1, 4))
    assert binary_metrics(gt, gt, (0.7, 0.7, 2.5)) == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}


def test_case_metrics_per_label():
    gt = np.zeros((1, 20, 20), np.uint8)
    gt[0, 2:8, 2:8] = 1
    gt[0, 10:16, 10:16] = 2
    pred = gt.copy()
    pred[0, 10:16, 10:13] = 0  # half of label 2 missed
    result = case_metrics(pred, gt, {"one": 1, "two": 2, "three": 3}, (1.0, 1.0, 1.0))
    assert result["one"]["dice"] == 1.0 and result["one"]["hd95"] == 0.0
    assert result["two"]["dice"] == pytest.approx(2 * 18 / (36 + 18))
    assert result["three"] == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}  # absent in both
    assert dice_score(pred == 2, gt == 2) == pytest.approx(result["two"]["dice"])


def test_bad_input():
    a = np.zeros((1, 5, 5), bool)
    with pytest.raises(InputError, match="shape"):
        case_metrics(a, np.zeros((1, 5, 6)), {"x": 1}, (1, 1, 1))
    with pytest.raises(InputError, match="spacing"):
        binary_metrics(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        binary_metrics(np.ones((3, 5, 5)), np.ones((3, 5, 5)), (1.0, 1.0))


def test_nan_aware_means():
    assert math.isnan(nanmean([]))
    assert math.isnan(nanmean([float("nan"), None]))
    assert nanmean([1.0, float("nan"), 0.0, None]) == 0.5
    per_case = [
        {"a": {"dice": 1.0, "nsd": 1.0, "hd95": 2.0}, "b": {"dice": 0.0, "nsd": 0.0, "hd95": float("nan")}},
        {"a": {"dice": 0.5, "nsd": 0.5, "hd95": 4.0}},  # label b absent in this case
    ]
    means = mean_metrics(per_case)
    assert means["a"] == {"dice": 0.75, "nsd": 0.75, "hd95": 3.0}
    assert means["b"]["dice"] == 0.0 and math.isnan(means["b"]["hd95"])
    overall = overall_mean(means)
    assert overall["dice"] == pytest.approx(0.375) and overall["hd95"] == pytest.approx(3.0)
