"""Largest-component clean-up of automatic label maps, and augmented copies for cached-embedding training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSAMAdapterLib.engine.postprocess import clean_label_map, keep_largest_component
from MedSAMAdapterLib.engine.volume import Volume
from MedSAMAdapterLib.errors import InputError
from MedSAMAdapterLib.models.auto_classes import AutoClass
from MedSAMAdapterLib.models.volumetric import classes_for
from MedSAMAdapterLib.training.augment import augment_case, augmented_copies
from MedSAMAdapterLib.training.auto_train import AutoTrainConfig, build_auto_split, clean_class_maps, train_auto
from MedSAMAdapterLib.training.datasets import make_case
from MedSAMAdapterLib.training.splits import SplitOptions
from Testing.unit.test_auto import TINY_OPTIONS, synthetic_case, tiny, write_nnunet  # noqa: F401 (fixture)


def two_islands() -> np.ndarray:
    labels = np.zeros((4, 20, 20), np.uint8)
    labels[1:3, 2:8, 2:8] = 1  # 72 voxels: the object
    labels[0, 15:17, 15:17] = 1  # 4 voxels: a false island
    labels[2:4, 12:18, 1:4] = 2  # another class, also two parts
    labels[0, 0, 19] = 2
    return labels


def test_keep_largest_component_removes_only_smaller_islands_of_chosen_values():
    labels = two_islands()
    cleaned = keep_largest_component(labels, [1])
    assert (cleaned == 1).sum() == 72 and cleaned[0, 15, 15] == 0
    assert np.array_equal(cleaned == 2, labels == 2)  # class 2 not chosen: untouched
    both = keep_largest_component(labels, [1, 2])
    assert both[0, 0, 19] == 0 and (both == 2).sum() == (labels == 2).sum() - 1
    assert np.array_equal(labels, two_islands())  # the input is not modified


def test_diagonal_neighbours_are_one_component():
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = 1  # touch by a corner only
    assert np.array_equal(keep_largest_component(labels, [1]), labels)


def test_classes_carry_the_single_component_choice():
    labels = {1: "RV", 2: "MYO", 3: "LV"}
    assert [c.single_component for c in classes_for(labels)] == [False, False, False]
    assert [c.single_component for c in classes_for(labels, ["all"])] == [True, True, True]
    assert [c.single_component for c in classes_for(labels, ["lv", "2"])] == [False, True, True]
    with pytest.raises(InputError, match="not among the classes"):
        classes_for(labels, ["liver"])
    back = AutoClass.from_dict(json.loads(json.dumps(classes_for(labels, ["LV"])[2].to_dict())))
    assert back.single_component is True
    assert AutoClass.from_dict({"name": "old", "label_value": 1}).single_component is False  # older cards


def test_clean_label_map_and_class_maps_follow_the_classes():
    labels = two_islands()
    classes = [AutoClass("a", 1, single_component=True), AutoClass("b", 2)]
    assert np.array_equal(clean_label_map(labels, classes), keep_largest_component(labels, [1]))
    assert clean_label_map(labels, [AutoClass("a", 1)]) is labels  # nothing to clean: no copy
    # training validation works on class indices (class k = classes[k-1]), not label values
    by_index = clean_class_maps([labels], [AutoClass("x", 7), AutoClass("y", 9, single_component=True)])[0]
    assert by_index[0, 0, 19] == 0 and (by_index == 1).sum() == (labels == 1).sum()


def ring_case(seed: int = 0):
    image, labels = synthetic_case(seed, (3, 48, 40))
    return make_case(f"case{seed}", image, labels, [1, 2], "toy")


def test_augmented_copies_are_deterministic_and_keep_image_and_labels_aligned():
    case = ring_case()
    copies = augmented_copies([case], 3, seed=5)
    assert [c.case_id for c in copies] == ["case0_aug1", "case0_aug2", "case0_aug3"]
    again = augmented_copies([case], 1, seed=5)[0]
    assert np.array_equal(again.volume.array, copies[0].volume.array)  # same seed: same copy (cache hits)
    assert not np.array_equal(copies[0].volume.array, copies[1].volume.array)
    for copy in copies:
        assert copy.volume.shape == case.volume.shape and copy.labels.dtype == case.labels.dtype
        assert set(np.unique(copy.labels)) <= {0, 1, 2} and copy.label_values == (1, 2)
        assert not np.array_equal(copy.labels, case.labels)  # moved
        # the bright disc (label 1) is still where the image is bright: the label moved with the image
        assert copy.volume.array[copy.labels == 1].mean() > copy.volume.array[copy.labels == 0].mean() + 100
        assert copy.volume.array.min() >= case.volume.array.min() - 1e-3  # padding is the image floor
    assert augmented_copies([case], 0) == []


def test_augmentation_refuses_colour_and_negative_counts():
    rgb = make_case("rgb", Volume(np.zeros((1, 8, 8, 3), np.float32), is_rgb=True), np.zeros((1, 8, 8), np.uint8),
                    dataset="toy")
    with pytest.raises(InputError, match="colour"):
        augment_case(rgb, np.random.default_rng(0))
    with pytest.raises(InputError, match=">= 0"):
        augmented_copies([ring_case()], -1)
    with pytest.raises(InputError, match="augment"):
        AutoTrainConfig(augment=-2)


def test_training_with_augmentation_and_single_component_classes(tmp_path, tiny):  # noqa: F811
    split = build_auto_split(write_nnunet(tmp_path / "Dataset900_Toy"), split=SplitOptions(val_patients=1))
    cfg = AutoTrainConfig(head="linear", head_options=TINY_OPTIONS["linear"], epochs=2, device="cpu", augment=2,
                          single_component=("LV",), cache_dir=str(tmp_path / "cache"), patience=None)
    result = train_auto(cfg, split.train, split.val, tmp_path / "run", split.labels, model=tiny)
    originals = sum(c.slice_count for c in split.train)
    assert result.stats["augmented_cases"] == 2 * len(split.train)
    assert result.stats["train_planes"] == 3 * originals
    card = json.loads((tmp_path / "run" / "auto_model.json").read_text())
    assert [c["single_component"] for c in card["classes"]] == [True, False]
    assert card["training"]["config"]["augment"] == 2
    assert [c.single_component for c in result.model.classes] == [True, False]
