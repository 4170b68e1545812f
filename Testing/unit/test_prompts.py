import numpy as np
import pytest

from MedSAMAdapterLib.engine.prompts import SlicePrompts, VolumePrompts, box_from_mask
from MedSAMAdapterLib.errors import PromptError


def test_valid_prompts_pass():
    SlicePrompts([[3, 4]], [1]).validate((10, 10))
    SlicePrompts(box_rc=(1, 1, 5, 6)).validate((10, 10))


@pytest.mark.parametrize(
    "prompts, message",
    [
        (SlicePrompts(), "no prompt"),
        (SlicePrompts([[3, 4]], [0]), "only negative"),
        (SlicePrompts([[30, 4]], [1]), "outside"),
        (SlicePrompts([[3, 4]], [2]), "must be 1"),
        (SlicePrompts(box_rc=(5, 5, 5, 9)), "degenerate"),
        (SlicePrompts(box_rc=(6, 5, 2, 9)), "swapped"),
        (SlicePrompts(box_rc=(20, 20, 30, 30)), "entirely outside"),
        (SlicePrompts(box_rc=(1, 1, float("nan"), 3)), "non-finite"),
    ],
)
def test_bad_prompts_are_refused_with_reason(prompts, message):
    with pytest.raises(PromptError, match=message):
        prompts.validate((10, 10))


def test_negative_clicks_allowed_with_previous_mask():
    SlicePrompts([[3, 4]], [0], use_previous_mask=True).validate((10, 10), has_previous_mask=True)


def test_point_label_count_must_match():
    with pytest.raises(PromptError, match="label"):
        SlicePrompts([[1, 2], [3, 4]], [1])


def test_box_clipping_keeps_overhanging_box_usable():
    clipped = SlicePrompts(box_rc=(-3, 2, 8, 14)).clipped((10, 10))
    assert clipped.box_rc == (0.0, 2.0, 8.0, 9.0)


def test_volume_prompts_map_to_the_slice_they_lie_on():
    prompts = VolumePrompts(np.array([[5.0, 7.0, 3.0]]), np.array([1]))
    index, on_slice = prompts.on_slice(axis=0)  # axial: slice k, plane rows j, cols i
    assert index == 3 and np.allclose(on_slice.points_rc, [[7, 5]])
    index, on_slice = prompts.on_slice(axis=2)  # sagittal: slice i, plane rows k, cols j
    assert index == 5 and np.allclose(on_slice.points_rc, [[3, 7]])


def test_points_on_different_slices_are_refused():
    prompts = VolumePrompts(np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 4.0]]), np.array([1, 1]))
    with pytest.raises(PromptError, match="different slices"):
        prompts.slice_index(axis=0)


def test_3d_box_range_and_plane_box():
    box = (np.array([2.0, 3.0, 1.0]), np.array([8.0, 9.0, 5.0]))
    prompts = VolumePrompts(box_ijk=box)
    assert prompts.box_range(0) == (1, 5)
    index, on_slice = prompts.on_slice(0)
    assert index == 3 and on_slice.box_rc == (3.0, 2.0, 9.0, 8.0)


def test_box_from_mask():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:8] = True
    assert box_from_mask(mask) == (2, 3, 4, 7)
    assert box_from_mask(mask, 1) == (1, 2, 5, 8)
    assert box_from_mask(np.zeros((4, 4), bool)) is None


def test_clicks_are_painted_into_the_mask_prompt():
    from MedSAMAdapterLib.engine.prompts import CLICK_BRUSH, mask_prompt_with_clicks

    mask = np.zeros((60, 60), bool)
    mask[10:50, 10:50] = True  # 1600 px: brush radius 0.3 x 40 = 12 px
    painted = mask_prompt_with_clicks(mask, np.array([[30.0, 30.0], [55.0, 5.0]]), np.array([0, 1]))
    radius = CLICK_BRUSH * 40
    assert not painted[30, 30] and not painted[30, 30 + int(radius)] and painted[30, 30 + int(radius) + 2]
    assert painted[55, 5] and painted[55, 5 + int(radius)]  # a positive click outside adds its disk
    assert mask[30, 30] and not mask[55, 5]  # the input is left alone
    later_wins = mask_prompt_with_clicks(mask, np.array([[30.0, 30.0], [31.0, 30.0]]), np.array([0, 1]))
    assert later_wins[30, 30]
    assert np.array_equal(mask_prompt_with_clicks(mask, np.zeros((0, 2)), np.zeros(0)), mask)
