"""Simulated clicks and boxes: where a careful user would click, on hand-made shapes."""

import numpy as np
import pytest
from scipy import ndimage

from MedSAMAdapterLib.errors import InputError
from MedSAMAdapterLib.evaluation.clicks import first_click, jittered_box, next_click, tight_box


def test_first_click_at_centre_of_square():
    gt = np.zeros((30, 40), bool)
    gt[5:16, 15:26] = True  # 11 x 11: a unique centre
    assert first_click(gt) == (10, 20)


def test_first_click_on_rectangle_is_a_distance_maximum_first_in_row_major_order():
    gt = np.zeros((30, 40), bool)
    gt[5:16, 10:31] = True  # 11 x 21: the maximum (6 px) is reached along row 10, columns 15..25
    row, col = first_click(gt)
    distance = ndimage.distance_transform_edt(np.pad(gt, 1))[1:-1, 1:-1]
    assert gt[row, col] and distance[row, col] == distance.max() == 6
    assert (row, col) == (10, 15)


def test_image_border_counts_as_boundary():
    gt = np.ones((7, 7), bool)  # the object fills the image: without padding there would be no boundary at all
    assert first_click(gt) == (3, 3)
    edge = np.zeros((20, 20), bool)
    edge[0:6, 0:20] = True  # touches the top border: centre is row 2 or 3, not row 5
    assert first_click(edge)[0] in (2, 3)


def test_ring_first_click_is_on_the_ring():
    rr, cc = np.mgrid[:61, :61]
    radius = np.hypot(rr - 30, cc - 30)
    ring = (radius >= 15) & (radius <= 24)
    row, col = first_click(ring)
    assert ring[row, col]
    assert 18 <= np.hypot(row - 30, col - 30) <= 21  # in the middle of the band, not in the hole


def test_next_click_picks_larger_false_negative():
    gt = np.zeros((40, 40), bool)
    gt[5:25, 5:25] = True
    pred = gt.copy()
    pred[5:25, 15:25] = False  # 200 px missed
    pred[30:33, 30:33] = True  # 9 px false positive
    row, col, positive = next_click(gt, pred)
    assert positive and gt[row, col] and not pred[row, col]
    assert col in (19, 20)  # the middle column of the missed 20 x 10 strip, 5 px from its sides


def test_next_click_picks_larger_false_positive_and_is_negative():
    gt = np.zeros((40, 40), bool)
    gt[5:15, 5:15] = True
    pred = gt.copy()
    pred[5:6, 5:15] = False  # 10 px missed
    pred[20:35, 20:35] = True  # 225 px false positive
    row, col, positive = next_click(gt, pred)
    assert not positive and pred[row, col] and not gt[row, col]
    assert (row, col) == (27, 27)


def test_next_click_separates_components_and_ties_go_to_false_negative():
    gt = np.zeros((30, 30), bool)
    gt[2:6, 2:6] = True  # 16 px, entirely missed
    pred = np.zeros_like(gt)
    pred[20:24, 20:24] = True  # 16 px false positive
    pred[10:13, 10:13] = True  # 9 px false positive elsewhere: not merged with the other one
    row, col, positive = next_click(gt, pred)
    assert positive and gt[row, col]


def test_next_click_none_when_perfect():
    gt = np.zeros((10, 10), bool)
    gt[2:5, 2:5] = True
    assert next_click(gt, gt.copy()) is None
    assert next_click(np.zeros((4, 4)), np.zeros((4, 4))) is None


def test_bad_input():
    with pytest.raises(InputError):
        first_click(np.zeros((5, 5), bool))
    with pytest.raises(InputError, match="2D"):
        first_click(np.ones((2, 5, 5), bool))
    with pytest.raises(InputError, match="shape"):
        next_click(np.ones((5, 5)), np.ones((5, 6)))
    with pytest.raises(InputError):
        tight_box(np.zeros((5, 5)))


def test_tight_box_inclusive():
    gt = np.zeros((20, 30), bool)
    gt[3:9, 7:20] = True
    gt[12, 25] = True
    assert tight_box(gt) == (3, 7, 12, 25)


def test_jittered_box_bounds_and_determinism():
    gt = np.zeros((100, 120), bool)
    gt[20:60, 30:90] = True  # 40 x 60 box
    assert jittered_box(gt, np.random.default_rng(0), 0.0) == tight_box(gt)
    boxes = [jittered_box(gt, np.random.default_rng(seed), 0.1) for seed in range(50)]
    assert jittered_box(gt, np.random.default_rng(7)) == boxes[7]
    assert len(set(boxes)) > 10
    for r0, c0, r1, c1 in boxes:
        assert abs(r0 - 20) <= 4 and abs(r1 - 59) <= 4 and abs(c0 - 30) <= 6 and abs(c1 - 89) <= 6
    edge = np.zeros((50, 50), bool)
    edge[0:30, 20:50] = True  # touches top and right borders: the box must stay inside the image
    for seed in range(30):
        r0, c0, r1, c1 = jittered_box(edge, np.random.default_rng(seed), 0.2)
        assert 0 <= r0 <= r1 <= 49 and 0 <= c0 <= c1 <= 49
    with pytest.raises(InputError):
        jittered_box(gt, np.random.default_rng(0), 0.7)
