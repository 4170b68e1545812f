"""nnU-Net raw dataset reader: the real datasets in ../shared/data and small broken copies made on the fly."""

import json
import shutil

import numpy as np
import pytest

from MedSAMAdapterLib.data.nnunet import default_group, open_dataset, read_case, split_cases
from MedSAMAdapterLib.errors import InputError
from Testing.conftest import SHARED_DATA, requires_shared_data

REAL = {
    "Dataset001_ACDC": ("3D", 60, {"RV": 1, "MYO": 2, "LV": 3}),
    "Dataset002_LA": ("3D", 5, {"left_atrium": 1}),
    "Dataset003_BraTS2015": ("3D", 4, {"necrosis": 1, "edema": 2, "non_enhancing_tumor": 3, "enhancing_tumor": 4}),
    "Dataset004_DeepLesionCT": ("3D", 3, {"lesion": 1}),
    "Dataset005_TotalSegCT": ("3D", 1, None),
    "Dataset006_TotalSegMR": ("3D", 1, None),
    "Dataset101_BUSI": ("2D", 40, {"lesion": 1}),
    "Dataset102_HC18": ("2D", 40, {"fetal_head": 1}),
    "Dataset103_Kvasir": ("2D", 96, {"polyp": 1}),
    "Dataset104_FundusODOC": ("2D", 8, {"optic_disc_rim": 1, "optic_cup": 2}),
    "Dataset105_ProstateMRI2D": ("2D", 11, {"prostate": 1}),
    "Dataset106_CTSlices2D": ("2D", 4, None),
}


# --- real data ---------------------------------------------------------------------------------------------
@requires_shared_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_datasets_open(name):
    dimensionality, count, labels = REAL[name]
    ds = open_dataset(SHARED_DATA / name)
    assert (ds.name, ds.dimensionality, len(ds.cases)) == (name, dimensionality, count)
    if labels is not None:
        assert ds.labels == labels
    assert 0 not in ds.labels.values() and "background" not in ds.labels
    assert ds.cases == sorted(ds.cases)
    for case in ds.cases:
        assert ds.label_path(case).is_file()
        for channel in range(ds.channel_files):
            assert ds.image_path(case, channel).is_file()


@requires_shared_data
def test_real_channels_rgb_and_multichannel():
    kvasir = open_dataset(SHARED_DATA / "Dataset103_Kvasir")
    assert len(kvasir.channel_names) == 3 and kvasir.channel_files == 1  # R, G, B live in one _0000.png
    with pytest.raises(InputError, match="channel 1"):
        kvasir.image_path(kvasir.cases[0], 1)
    brats = open_dataset(SHARED_DATA / "Dataset003_BraTS2015")
    assert brats.channel_files == 2
    assert brats.image_path(brats.cases[0], 1).name.endswith("_0001.nii.gz")
    with pytest.raises(InputError, match="not in dataset"):
        brats.image_path("no_such_case")


@requires_shared_data
def test_real_hc18_pixel_spacing():
    hc18 = open_dataset(SHARED_DATA / "Dataset102_HC18")
    assert hc18.pixel_spacing_mm("000_HC") == pytest.approx(0.069135804)
    assert open_dataset(SHARED_DATA / "Dataset101_BUSI").pixel_spacing_mm("benign_001") is None


@requires_shared_data
def test_acdc_split_keeps_patients_together():
    acdc = open_dataset(SHARED_DATA / "Dataset001_ACDC")
    train, val = split_cases(acdc, val_fraction=0.2, seed=0)
    assert sorted(train + val) == acdc.cases and not set(train) & set(val)
    patients_train, patients_val = {default_group(c) for c in train}, {default_group(c) for c in val}
    assert not patients_train & patients_val
    assert len(patients_val) == 6  # 20 % of 30 patients
    assert all(c.replace("_frame01", "_frame02") in val for c in val if c.endswith("_frame01"))
    assert split_cases(acdc, 0.2, seed=0) == (train, val)
    assert split_cases(acdc, 0.2, seed=1) != (train, val)


@requires_shared_data
@pytest.mark.parametrize("name", ["Dataset101_BUSI", "Dataset103_Kvasir", "Dataset001_ACDC"])
def test_read_case_real(name):
    ds = open_dataset(SHARED_DATA / name)
    image, labels = read_case(ds, ds.cases[0])
    assert labels.shape == image.shape
    assert set(np.unique(labels).tolist()) <= {0, *ds.labels.values()}
    assert (labels > 0).any()


# --- synthetic folders -------------------------------------------------------------------------------------
def make_dataset(root, cases=("a", "b"), ending=".png", channels=None, labels=None, extra=None, skip=()):
    """An nnU-Net folder with empty placeholder files (open_dataset only looks at names)."""
    channels = channels or {"0": "T2"}
    meta = {"channel_names": channels, "labels": labels or {"background": 0, "organ": 1}, "file_ending": ending,
            "numTraining": len(cases), **(extra or {})}
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps(meta))
    for case in cases:
        for c in range(len(channels)):
            path = root / "imagesTr" / f"{case}_{c:04d}{ending}"
            if path.name not in skip:
                path.write_bytes(b"")
        path = root / "labelsTr" / f"{case}{ending}"
        if path.name not in skip:
            path.write_bytes(b"")
    return root


def test_synthetic_dataset(tmp_path):
    ds = open_dataset(make_dataset(tmp_path / "Dataset900_Toy", cases=("c2", "c1"), channels={"0": "T2", "1": "ADC"},
                                   labels={"background": 0, "zone_b": 2, "zone_a": 1}))
    assert ds.cases == ["c1", "c2"]
    assert ds.labels == {"zone_a": 1, "zone_b": 2}
    assert ds.dimensionality == "2D" and ds.channel_files == 2
    assert ds.image_path("c1", 1) == tmp_path / "Dataset900_Toy" / "imagesTr" / "c1_0001.png"
    assert ds.label_path("c2") == tmp_path / "Dataset900_Toy" / "labelsTr" / "c2.png"


def test_dimensionality_declared_or_from_header(tmp_path):
    import SimpleITK as sitk

    declared = make_dataset(tmp_path / "d", ending=".nii.gz", extra={"dimensionality": "2d"})
    assert open_dataset(declared).dimensionality == "2D"
    for name, size in (("vol", (6, 5, 4)), ("slab", (6, 5, 1))):
        root = make_dataset(tmp_path / name, cases=("x",), ending=".nii.gz")
        sitk.WriteImage(sitk.Image(list(size), sitk.sitkUInt8), str(root / "imagesTr" / "x_0000.nii.gz"))
        assert open_dataset(root).dimensionality == ("3D" if name == "vol" else "2D")


@pytest.mark.parametrize(
    "kwargs, breaker, message",
    [
        ({}, lambda r: (r / "dataset.json").unlink(), "dataset.json is missing"),
        ({}, lambda r: (r / "dataset.json").write_text("{not json"), "not valid JSON"),
        ({}, lambda r: (r / "dataset.json").write_text("[1, 2]"), "JSON object"),
        ({"extra": {"file_ending": None}}, None, "file_ending"),
        ({}, lambda r: shutil.rmtree(r / "labelsTr"), "labelsTr/ is missing"),
        ({"skip": ("b.png",)}, None, "image but no label"),
        ({"skip": ("b_0000.png",)}, None, "have no image"),
        ({"channels": {"0": "T1", "1": "T2"}, "skip": ("a_0001.png",)}, None, "a_0001.png"),
        ({"labels": {"background": 0, "tumour": [1, 2]}}, None, "region"),
        ({"labels": {"background": 0}}, None, "no foreground labels"),
        ({"labels": {"background": 0, "x": 1, "y": 1}}, None, "share one value"),
        ({"labels": {"background": 0, "x": "one"}}, None, "non-negative integer"),
        ({"extra": {"dimensionality": "4D"}}, None, "dimensionality"),
        ({"extra": {"channel_names": {}}}, None, "channel_names is empty"),
    ],
)
def test_invalid_datasets_raise_input_error(tmp_path, kwargs, breaker, message):
    root = make_dataset(tmp_path / "Dataset901_Bad", **kwargs)
    if breaker is not None:
        breaker(root)
    with pytest.raises(InputError, match=message):
        open_dataset(root)


def test_missing_folder_and_empty_images(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    root = make_dataset(tmp_path / "Dataset902_Empty", cases=())
    with pytest.raises(InputError, match="holds no images"):
        open_dataset(root)


def test_split_cases_rules():
    cases = [f"patient{p:03d}_frame0{f}" for p in range(10) for f in (1, 2)]
    train, val = split_cases(cases, val_fraction=0.3, seed=3)
    assert len({default_group(c) for c in val}) == 3 and len(val) == 6
    assert split_cases(cases, val_fraction=0.0) == (sorted(cases), [])
    assert split_cases(["only_one"], val_fraction=0.5) == (["only_one"], [])
    tiny_train, tiny_val = split_cases(["a", "b"], val_fraction=0.01)
    assert len(tiny_train) == 1 and len(tiny_val) == 1  # both sides non-empty when possible
    by_site = split_cases(["s1_a", "s1_b", "s2_a", "s2_b"], 0.5, group_by=lambda c: c.split("_")[0])
    assert {c.split("_")[0] for c in by_site[1]} in ({"s1"}, {"s2"})
    with pytest.raises(InputError):
        split_cases(cases, val_fraction=1.0)
