"""Orientation codes and exact reorientation (checked against SimpleITK's DICOMOrient), and automatic models that
see every volume in the orientation they were trained on, whatever the stored axis order."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedSAMAdapterLib.engine.auto import run_auto
from MedSAMAdapterLib.engine.geometry import Geometry, Reorientation, check_orientation_code, orientation_code
from MedSAMAdapterLib.errors import InputError, WeightsError
from MedSAMAdapterLib.models.auto_heads import load_auto_model, save_auto_model
from MedSAMAdapterLib.training.auto_train import AutoTrainConfig, train_auto
from MedSAMAdapterLib.training.datasets import common_orientation, make_case
from Testing.conftest import make_volume
from Testing.unit.test_auto import LABELS, TINY_OPTIONS, synthetic_case, tiny_auto_model

AXIS_ALIGNED = [(perm, signs) for perm in itertools.permutations(range(3))
                for signs in itertools.product((1, -1), repeat=3)]


def direction_of(perm, signs) -> np.ndarray:
    """3x3 direction whose index axis c points along patient axis perm[c] with sign signs[c]."""
    d = np.zeros((3, 3))
    for c in range(3):
        d[perm[c], c] = signs[c]
    return d


def sitk_image(array: np.ndarray, direction: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetDirection(direction.flatten().tolist())
    image.SetSpacing((0.5, 0.7, 2.0))
    image.SetOrigin((3.0, -4.0, 5.0))
    return image


@pytest.mark.parametrize("perm,signs", AXIS_ALIGNED)
def test_reorientation_matches_simpleitk_dicomorient(perm, signs):
    array = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    image = sitk_image(array, direction_of(perm, signs))
    geometry = Geometry.from_sitk(image)
    assert orientation_code(geometry) == sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        image.GetDirection())
    for target in ("LPS", "RAS", "PLI", "SAR"):
        mapping = Reorientation.to_code(geometry, array.shape, target)
        expected = sitk.DICOMOrient(image, target)
        assert np.array_equal(mapping.apply(array), sitk.GetArrayFromImage(expected))
        reference = Geometry.from_sitk(expected)
        assert np.allclose(mapping.geometry.origin, reference.origin)
        assert np.allclose(mapping.geometry.spacing, reference.spacing)
        assert np.allclose(mapping.geometry.direction, reference.direction)
        assert orientation_code(mapping.geometry) == target
        assert np.array_equal(mapping.undo(mapping.apply(array)), array)
        # the same voxel sits at the same physical point on both grids
        old_ijk = np.array([1.0, 2.0, 3.0])
        new_ijk = mapping.geometry.lps_to_ijk(geometry.ijk_to_lps(old_ijk))
        i, j, k = np.round(new_ijk).astype(int)
        assert mapping.apply(array)[k, j, i] == array[3, 2, 1]


def test_oblique_grid_gets_the_nearest_code_and_torch_tensors_with_leading_axes_work():
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    geometry = Geometry(direction=rotation @ direction_of((1, 0, 2), (1, -1, -1)))
    assert orientation_code(geometry) == "PRI"
    logits = torch.randn(3, 4, 5, 6)
    mapping = Reorientation.to_code(geometry, (4, 5, 6), "LPS")
    moved = mapping.apply(logits)
    assert moved.shape == (3, 4, 6, 5)  # i and j swapped, the class axis untouched
    assert torch.equal(mapping.undo(moved), logits)


@pytest.mark.parametrize("turns", [0, 1, 2, 3, -1, 5])
def test_quarter_turns_rotate_each_plane_and_keep_every_voxel_at_its_physical_point(turns):
    array = np.random.default_rng(1).random((3, 4, 6)).astype(np.float32)
    geometry = Geometry.from_sitk(sitk_image(array, direction_of((1, 0, 2), (1, -1, 1))))
    mapping = Reorientation.quarter_turns(geometry, array.shape, turns)
    turned = mapping.apply(array)
    assert np.array_equal(turned, np.rot90(array, turns, axes=(1, 2)))
    assert np.array_equal(mapping.undo(turned), array)
    assert mapping.is_identity == (turns % 4 == 0)
    for old_ijk in ([0, 0, 0], [5, 3, 2], [1, 2, 1]):
        new_ijk = mapping.geometry.lps_to_ijk(geometry.ijk_to_lps(np.array(old_ijk, float)))
        i, j, k = np.round(new_ijk).astype(int)
        assert np.allclose(new_ijk, (i, j, k))  # lands on a voxel centre of the turned grid
        assert turned[k, j, i] == array[old_ijk[2], old_ijk[1], old_ijk[0]]


@pytest.mark.parametrize("bad", ["LPX", "LLS", "LP", "lpsr", 7])
def test_bad_orientation_codes_are_refused(bad):
    with pytest.raises(InputError, match="orientation code"):
        check_orientation_code(bad)
    assert check_orientation_code("ras") == "RAS"


def test_volume_reoriented_leaves_2d_and_matching_volumes_alone():
    volume = make_volume(np.zeros((3, 4, 5)))
    assert volume.reoriented("LPS") == (volume, None)
    assert volume.reoriented(None) == (volume, None)
    picture = make_volume(np.zeros((1, 4, 5)))
    assert picture.reoriented("RAS")[1] is None  # a picture's rows and columns are used as stored
    moved, mapping = volume.reoriented("RAS")
    assert mapping is not None and orientation_code(moved.geometry) == "RAS" and moved.shape == (3, 4, 5)


def stored_as(volume_array: np.ndarray, perm, signs):
    """The same synthetic patient stored with another axis order: (volume, function mapping LPS-grid labels onto
    that grid)."""
    direction = direction_of(perm, signs)
    reference = make_volume(volume_array)
    mapping = Reorientation.to_code(reference.geometry, reference.shape, orientation_code(Geometry(direction=direction)))
    moved = make_volume(np.ascontiguousarray(mapping.apply(volume_array)), mapping.geometry.spacing,
                        mapping.geometry.origin, mapping.geometry.direction)
    return moved, mapping.apply


@pytest.mark.parametrize("perm,signs", [((0, 1, 2), (-1, -1, 1)), ((1, 0, 2), (1, 1, -1))])  # RAS, PLI
def test_auto_model_gives_the_same_anatomy_whatever_the_stored_orientation(tmp_path, tiny_model, perm, signs):
    image, _ = synthetic_case(7, shape=(4, 40, 40))
    auto = tiny_auto_model(tiny_model, "cnn")
    auto.orientation = "LPS"
    save_auto_model(tmp_path / "m", auto)
    assert load_auto_model(tmp_path / "m").orientation == "LPS"
    reference, _ = run_auto(make_volume(image), tmp_path / "m", base_model=tiny_model)
    assert len(np.unique(reference)) > 1  # a non-trivial map, so the comparison means something
    moved, to_moved_grid = stored_as(image, perm, signs)
    labels, _ = run_auto(moved, tmp_path / "m", base_model=tiny_model)
    assert np.array_equal(labels, to_moved_grid(reference))
    # an older card without an orientation uses arrays as stored: the model then sees other pictures
    auto.orientation = None
    save_auto_model(tmp_path / "old", auto)
    as_stored, _ = run_auto(moved, tmp_path / "old", base_model=tiny_model)
    assert not np.array_equal(as_stored, to_moved_grid(reference))


def test_card_with_a_bad_orientation_is_refused(tmp_path, tiny_model):
    save_auto_model(tmp_path / "m", tiny_auto_model(tiny_model))
    card_path = tmp_path / "m.json"
    card = json.loads(card_path.read_text())
    card["orientation"] = "XYZ"
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="orientation"):
        load_auto_model(tmp_path / "m")


def test_training_brings_cases_onto_the_majority_orientation(tmp_path, tiny_model):
    cases = []
    for seed, (perm, signs) in enumerate([((0, 1, 2), (1, 1, 1)), ((0, 1, 2), (1, 1, 1)), ((1, 0, 2), (1, 1, -1))]):
        image, labels = synthetic_case(seed, shape=(4, 40, 40))
        volume, to_grid = stored_as(image, perm, signs)
        cases.append(make_case(f"patient{seed:03d}", volume, np.ascontiguousarray(to_grid(labels))))
    assert common_orientation(cases) == "LPS"
    assert common_orientation([make_case("p", np.zeros((1, 8, 8)), np.ones((1, 8, 8), np.uint8))]) is None
    transposed = cases[2].reoriented("LPS")
    assert np.array_equal(transposed.labels, synthetic_case(2, shape=(4, 40, 40))[1])
    assert [int(p.sum()) for p in transposed.presence.values()] == [4, 4]
    cfg = AutoTrainConfig(head="linear", head_options=TINY_OPTIONS["linear"], epochs=1, device="cpu")
    result = train_auto(cfg, cases[:2] + cases[2:], cases[2:], tmp_path / "run", LABELS, model=tiny_model)
    assert result.stats["orientation"] == "LPS" and result.model.orientation == "LPS"
    assert json.loads((tmp_path / "run" / "auto_model.json").read_text())["orientation"] == "LPS"


# ---------------------------------------------------------------------------------------------- turn search
def test_turn_search_keeps_the_turn_the_model_is_surest_of_and_maps_the_result_back(tmp_path, tiny_model,
                                                                                      monkeypatch):
    """A stand-in model that is sure only when the bright corner marker sits top left: the search must find the
    turn that puts it there, and the label map must come back onto the volume's own grid."""
    from MedSAMAdapterLib.engine.auto import AutoSegmenter

    save_auto_model(tmp_path / "m", tiny_auto_model(tiny_model))
    image = np.zeros((2, 12, 12), np.float32)
    image[:, 9:, 9:] = 100.0  # the marker, bottom right as stored: two quarter turns bring it top left

    def stand_in(work, progress):
        sure = float(work.array[0, :3, :3].mean()) > 50  # the marker top left
        logits = torch.zeros((3, *work.shape))
        logits[1, :, :6, :6] = 8.0 if sure else 0.5  # class 1 in the top-left quarter of the turned grid
        return logits

    segmenter = AutoSegmenter(tmp_path / "m", base_model=tiny_model, turn_search=True)
    monkeypatch.setattr(segmenter, "_model_logits", stand_in)
    labels = segmenter.predict(make_volume(image))
    assert segmenter.last_turns == 2
    expected = np.zeros(image.shape, labels.dtype)
    expected[:, 6:, 6:] = 1  # the top-left quarter of the grid turned by 180 degrees, as stored
    assert np.array_equal(labels, expected)



def test_class_confidence_averages_over_classes_and_counts_a_missing_class_as_zero():
    from MedSAMAdapterLib.engine.auto import class_confidence

    assert class_confidence(torch.zeros((3, 1, 2, 2))) == 0.0  # background wins everywhere: nothing found
    sure = float(torch.softmax(torch.tensor([0.0, 9.0, 0.0]), 0)[1])
    one_class = torch.tensor([[0.0, 0.0], [9.0, 0.0], [0.0, 0.0]]).reshape(3, 1, 1, 2)
    assert class_confidence(one_class) == pytest.approx(sure / 2)  # class 2 wins nowhere: counts 0
    unsure = float(torch.softmax(torch.tensor([0.0, 0.0, 1.0]), 0)[2])
    both = torch.tensor([[0.0, 0.0, 0.0], [9.0, 9.0, 0.0], [0.0, 0.0, 1.0]]).reshape(3, 1, 1, 3)
    assert class_confidence(both) == pytest.approx((sure + unsure) / 2)  # two sure voxels weigh as much as one


def test_turn_search_gives_the_same_anatomy_whichever_way_the_planes_are_stored(tmp_path, tiny_model):
    """The four candidates of a volume and of its quarter-turned copy are the same pictures, so the real pipeline
    (tiny model) must return the same labels, turned."""
    from MedSAMAdapterLib.engine.auto import AutoSegmenter

    save_auto_model(tmp_path / "m", tiny_auto_model(tiny_model, "cnn"))
    image, _ = synthetic_case(3, shape=(3, 40, 40))
    image[:, :8, :12] += 150.0  # break the disc's symmetry
    segmenter = AutoSegmenter(tmp_path / "m", base_model=tiny_model, turn_search=True)
    reference = segmenter.predict(make_volume(image))
    first_turn = segmenter.last_turns
    turned = segmenter.predict(make_volume(np.ascontiguousarray(np.rot90(image, 1, axes=(1, 2)))))
    assert np.array_equal(turned, np.rot90(reference, 1, axes=(1, 2)))
    assert segmenter.last_turns == (first_turn - 1) % 4
    assert not AutoSegmenter(tmp_path / "m", base_model=tiny_model).turn_search  # the card's default: off


def test_card_turn_search_default_and_refusal(tmp_path, tiny_model):
    from MedSAMAdapterLib.engine.auto import AutoSegmenter

    save_auto_model(tmp_path / "m", tiny_auto_model(tiny_model))
    card_path = tmp_path / "m.json"
    card = json.loads(card_path.read_text())
    card["turn_search"] = True
    card_path.write_text(json.dumps(card))
    assert AutoSegmenter(tmp_path / "m", base_model=tiny_model).turn_search
    assert not AutoSegmenter(tmp_path / "m", base_model=tiny_model, turn_search=False).turn_search
    card["turn_search"] = "yes"
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="turn_search"):
        AutoSegmenter(tmp_path / "m", base_model=tiny_model)
