"""engine.volume: reading / writing every supported format, and a clear InputError for every bad input."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAMAdapterLib.engine import volume as V
from MedSAMAdapterLib.engine.geometry import Geometry
from MedSAMAdapterLib.engine.volume import Volume, read_label_map, read_volume, write_label_map, write_overlay_png
from MedSAMAdapterLib.errors import InputError
from Testing.conftest import SHARED_DATA

FIXTURES = SHARED_DATA / "fixtures" / "dcmqi_ct3slice"
KVASIR = SHARED_DATA / "Dataset103_Kvasir" / "imagesTr"

OBLIQUE = np.array([[0.9396926, -0.3420201, 0.0], [0.3213938, 0.8830222, -0.3420201], [0.1169778, 0.3213938, 0.9396926]])
GEOM = Geometry((0.8, 1.2, 2.5), (-12.0, 30.5, 7.25), OBLIQUE)


def _image(array: np.ndarray, geometry: Geometry = GEOM) -> sitk.Image:
    return geometry.apply_to_sitk(sitk.GetImageFromArray(array))


def _ramp(shape=(5, 6, 7), dtype=np.int16) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) % 251 - 40).astype(dtype)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- reading volumes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_read_volume_formats_round_trip(tmp_path, suffix):
    array = _ramp()
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(_image(array), str(path))
    vol = read_volume(path)
    assert vol.array.dtype == np.float32 and vol.shape == (5, 6, 7) and not vol.is_rgb and not vol.is_2d
    np.testing.assert_array_equal(vol.array, array)
    assert vol.geometry.mismatch(GEOM) is None  # NIfTI stores float32: within 1e-4
    assert vol.source == str(path)


def _write_dicom_series(folder: Path, array: np.ndarray, geometry: Geometry, series_uid: str, prefix: str) -> None:
    """A CT series written slice by slice with the tags a DICOM reader needs to stack it."""
    folder.mkdir(parents=True, exist_ok=True)
    image = _image(array.astype(np.int16), geometry)
    direction = np.asarray(geometry.direction)
    orientation = "\\".join(f"{v:.7f}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        plane = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.8.498.1", "0020|000e": series_uid, "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.6f}" for v in position), "0020|0013": str(k + 1),
            "0018|0050": f"{geometry.spacing[2]:.6f}",
        }
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(plane)


def test_read_dicom_series_picks_largest_series(tmp_path):
    geometry = Geometry((0.7, 0.7, 3.0), (-100.0, -120.0, 40.0), np.eye(3))
    big = _ramp((5, 8, 9))
    _write_dicom_series(tmp_path / "dcm", _ramp((2, 8, 9)) + 7, geometry, "1.2.826.0.1.3680043.8.498.11", "a")
    _write_dicom_series(tmp_path / "dcm", big, geometry, "1.2.826.0.1.3680043.8.498.22", "b")
    vol = read_volume(tmp_path / "dcm")
    assert vol.shape == (5, 8, 9)
    np.testing.assert_array_equal(vol.array, big)
    assert vol.geometry.mismatch(geometry) is None


@pytest.mark.skipif(not (FIXTURES / "ct-3slice").exists(), reason="dcmqi fixture not present")
def test_read_dicom_fixture_series_and_its_label_map():
    vol = read_volume(FIXTURES / "ct-3slice")
    assert vol.shape == (3, 512, 512)
    assert vol.array.min() <= -1000 and vol.array.max() > 300  # Hounsfield units after rescale
    labels = read_label_map(FIXTURES / "liver_seg.nrrd", vol)
    assert labels.shape == vol.shape and labels.dtype == np.uint8 and labels.max() == 1


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM"):
        read_volume(tmp_path)


# ---- pictures ---------------------------------------------------------------------------------------------
def test_png_grey(tmp_path):
    array = (np.arange(30 * 40).reshape(30, 40) % 256).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "g.png"))
    vol = read_volume(tmp_path / "g.png")
    assert vol.shape == (1, 30, 40) and vol.is_2d and not vol.is_rgb
    np.testing.assert_array_equal(vol.array[0], array)
    assert vol.geometry == Geometry.identity()


def test_png_rgb_rgba_and_grey_stored_as_rgb(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.repeat(rgba[..., :1], 3, axis=2), "RGB").save(tmp_path / "greyrgb.png")
    Image.fromarray(rgba[..., :2].copy(), "LA").save(tmp_path / "la.png")  # ITK cannot read grey+alpha
    vol = read_volume(tmp_path / "rgba.png")
    assert vol.is_rgb and vol.array.shape == (1, 20, 30, 3) and vol.shape == (1, 20, 30)
    np.testing.assert_array_equal(vol.array[0], rgba[..., :3])
    grey = read_volume(tmp_path / "greyrgb.png")
    assert not grey.is_rgb and grey.shape == (1, 20, 30)
    la = read_volume(tmp_path / "la.png")
    np.testing.assert_array_equal(la.array[0], rgba[..., 0])


@pytest.mark.skipif(not KVASIR.exists(), reason="Kvasir data not present")
def test_kvasir_rgb_png():
    path = sorted(KVASIR.glob("*.png"))[0]
    vol = read_volume(path)
    assert vol.is_rgb and vol.is_2d and vol.array.shape[-1] == 3
    assert vol.array.dtype == np.float32 and vol.array.max() <= 255


# ---- bad inputs -------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        read_volume(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(err.value)


def test_corrupt_and_empty_files(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(b"this is not an image" * 10)
    with pytest.raises(InputError, match="junk.nii.gz: cannot be read"):
        read_volume(tmp_path / "junk.nii.gz")
    (tmp_path / "zero.nrrd").write_bytes(b"")
    with pytest.raises(InputError, match="zero.nrrd.*empty"):
        read_volume(tmp_path / "zero.nrrd")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError, match="junk.png"):
        read_volume(tmp_path / "junk.png")


def test_4d_image_rejected_with_advice(tmp_path):
    frames = [sitk.GetImageFromArray(_ramp((3, 4, 5)).astype(np.float32)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "cine.nii.gz"))
    with pytest.raises(InputError, match="4D") as err:
        read_volume(tmp_path / "cine.nii.gz")
    assert "cine.nii.gz" in str(err.value) and "channel" in str(err.value)


def test_4d_with_one_frame_is_3d(tmp_path):
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(_ramp((3, 4, 5)))]), str(tmp_path / "one.nrrd"))
    assert read_volume(tmp_path / "one.nrrd").shape == (3, 4, 5)


def test_vector_volume_rejected(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), np.float32), isVector=True),
                    str(tmp_path / "vec.mha"))
    with pytest.raises(InputError, match="2 values per voxel"):
        read_volume(tmp_path / "vec.mha")


def test_non_finite_voxels_counted(tmp_path):
    array = np.ones((3, 4, 5), np.float32)
    array[0, 0, :3] = np.nan
    array[1, 1, 1] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nrrd"))
    with pytest.raises(InputError, match=r"nan.nrrd: 4 voxel value\(s\) are NaN or infinite"):
        read_volume(tmp_path / "nan.nrrd")


def test_single_voxel_and_zero_size(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 1, 1), np.int16)), str(tmp_path / "dot.nrrd"))
    with pytest.raises(InputError, match="single voxel"):
        read_volume(tmp_path / "dot.nrrd")
    with pytest.raises(InputError, match="empty"):
        Volume(np.zeros((0, 4, 4), np.float32), source="/x/empty.nii").validate()


def test_constant_volume_reads_but_is_not_segmentable(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 4, 5), 42, np.int16)), str(tmp_path / "flat.nii.gz"))
    vol = read_volume(tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="constant intensity"):
        vol.check_segmentable()


def test_volume_shape_rules():
    assert Volume(np.zeros((4, 5))).shape == (1, 4, 5)
    assert Volume(np.zeros((4, 5, 3)), is_rgb=True).array.shape == (1, 4, 5, 3)
    with pytest.raises(InputError):
        Volume(np.zeros((2, 3, 4, 5)))


# ---- label maps -------------------------------------------------------------------------------------------
@pytest.fixture
def reference() -> Volume:
    return Volume(_ramp().astype(np.float32), GEOM, "ref.nii.gz")


def test_read_label_map_checks_grid(tmp_path, reference):
    labels = (_ramp() % 3).astype(np.uint8)
    sitk.WriteImage(_image(labels), str(tmp_path / "ok.nii.gz"))
    np.testing.assert_array_equal(read_label_map(tmp_path / "ok.nii.gz", reference), labels)

    sitk.WriteImage(_image(labels[:, :, :-1]), str(tmp_path / "small.nii.gz"))
    with pytest.raises(InputError, match=r"small.nii.gz: label map size \(6, 6, 5\).*\(7, 6, 5\)"):
        read_label_map(tmp_path / "small.nii.gz", reference)

    moved = Geometry(GEOM.spacing, np.asarray(GEOM.origin) + [0, 0, 1.0], GEOM.direction)
    sitk.WriteImage(_image(labels, moved), str(tmp_path / "moved.nrrd"))
    with pytest.raises(InputError, match="moved.nrrd: label map grid differs.*origin"):
        read_label_map(tmp_path / "moved.nrrd", reference)

    finer = Geometry(np.asarray(GEOM.spacing) * [1, 1, 1.01], GEOM.origin, GEOM.direction)
    sitk.WriteImage(_image(labels, finer), str(tmp_path / "finer.nrrd"))
    with pytest.raises(InputError, match="spacing"):
        read_label_map(tmp_path / "finer.nrrd", reference)

    tilted = Geometry(GEOM.spacing, GEOM.origin, np.eye(3))
    sitk.WriteImage(_image(labels, tilted), str(tmp_path / "tilted.nrrd"))
    with pytest.raises(InputError, match="direction"):
        read_label_map(tmp_path / "tilted.nrrd", reference)


def test_label_map_values_validated(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 3, 4), 0.5, np.float32)), str(tmp_path / "frac.nrrd"))
    with pytest.raises(InputError, match="whole numbers"):
        read_label_map(tmp_path / "frac.nrrd")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 3, 4), -1, np.int16)), str(tmp_path / "neg.nrrd"))
    with pytest.raises(InputError, match=">= 0"):
        read_label_map(tmp_path / "neg.nrrd")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 3, 4), 300, np.int32)), str(tmp_path / "big.nrrd"))
    assert read_label_map(tmp_path / "big.nrrd").dtype == np.uint16


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"])
def test_write_label_map_round_trip(tmp_path, reference, suffix):
    labels = (_ramp() % 4).astype(np.uint8)
    out = write_label_map(labels, GEOM, tmp_path / f"seg{suffix}")
    back = read_label_map(out, reference)
    np.testing.assert_array_equal(back, labels)
    assert _files(tmp_path) == [f"seg{suffix}"]  # no temporary left behind


def test_seg_nrrd_has_slicer_segment_metadata(tmp_path):
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 1:3, 2:4] = 1
    labels[2, 3, 4] = 3
    path = write_label_map(labels, GEOM, tmp_path / "case.seg.nrrd", {1: "Liver", 2: "Spleen", 3: "Tumor"},
                           {1: (1.0, 0.0, 0.0), 3: (0.2, 0.4, 0.6)})
    image = sitk.ReadImage(str(path))
    meta = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys()}
    assert meta["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert meta["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    assert meta["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    expected = {
        0: ("Segment_1", "Liver", "1 0 0", "1"),
        1: ("Segment_2", "Spleen", None, "2"),  # named but empty: still listed, default colour
        2: ("Segment_3", "Tumor", "0.2 0.4 0.6", "3"),
    }
    for n, (sid, name, color, value) in expected.items():
        assert meta[f"Segment{n}_ID"] == sid
        assert meta[f"Segment{n}_Name"] == name
        assert meta[f"Segment{n}_LabelValue"] == value
        assert meta[f"Segment{n}_Layer"] == "0"
        assert meta[f"Segment{n}_Extent"] == "0 5 0 4 0 3"
        assert meta[f"Segment{n}_NameAutoGenerated"] == "0"
        assert meta[f"Segment{n}_ColorAutoGenerated"] == "0"
        assert f"Segment{n}_Tags" in meta
        assert len(meta[f"Segment{n}_Color"].split()) == 3
        if color:
            assert meta[f"Segment{n}_Color"] == color
    assert "Segment3_ID" not in meta
    assert meta["NRRD_space"] == "left-posterior-superior"
    assert Geometry.from_sitk(image).mismatch(GEOM) is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)


def test_write_png_label_map_only_for_2d(tmp_path):
    labels = np.zeros((1, 6, 7), np.uint8)
    labels[0, 2:4, 3:5] = 2
    write_label_map(labels, Geometry(), tmp_path / "mask.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "mask.png", Volume(np.zeros((1, 6, 7)))), labels)
    with pytest.raises(InputError, match="PNG holds one slice"):
        write_label_map(np.zeros((2, 6, 7), np.uint8), Geometry(), tmp_path / "vol.png")
    with pytest.raises(InputError, match="cannot write a label map as '.jpg'"):
        write_label_map(labels, Geometry(), tmp_path / "mask.jpg")
    with pytest.raises(InputError, match="whole numbers"):
        write_label_map(np.full((1, 2, 2), 0.5), Geometry(), tmp_path / "bad.nii.gz")


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch, reference):
    labels = (_ramp() % 2).astype(np.uint8)
    target = tmp_path / "out.nii.gz"

    def broken_writer(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a file")
        raise RuntimeError("sitk::ERROR: disk full")

    monkeypatch.setattr(V.sitk, "WriteImage", broken_writer)
    with pytest.raises(InputError, match="out.nii.gz: cannot be written.*disk full"):
        write_label_map(labels, GEOM, target)
    assert _files(tmp_path) == []

    monkeypatch.undo()
    write_label_map(labels, GEOM, target)
    before = target.read_bytes()
    monkeypatch.setattr(V.sitk, "WriteImage", broken_writer)
    with pytest.raises(InputError):
        write_label_map(1 - labels, GEOM, target)
    assert target.read_bytes() == before and _files(tmp_path) == ["out.nii.gz"]


# ---- overlay ----------------------------------------------------------------------------------------------
def test_overlay_png_keeps_physical_aspect_and_colours(tmp_path):
    array = np.tile(np.linspace(0, 100, 40, dtype=np.float32), (10, 20, 1))  # (k, j, i)
    vol = Volume(array, Geometry((1.0, 1.0, 4.0)))
    labels = np.zeros(vol.shape, np.uint8)
    labels[3:7, 5, 10:30] = 1
    path = write_overlay_png(vol, labels, tmp_path / "qc.png", axis=1, colors={1: (1.0, 0.0, 0.0)})
    picture = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    h, w, _ = picture.shape
    assert h == w  # 10 slices x 4 mm == 40 columns x 1 mm
    reddish = (picture[..., 0].astype(int) - picture[..., 1]) > 60
    rows, cols = np.nonzero(reddish)
    assert rows.min() >= 3 * h / 10 - 1 and rows.max() <= 7 * h / 10 + 1
    assert cols.min() >= 10 * w / 40 - 1 and cols.max() <= 30 * w / 40 + 1
    assert _files(tmp_path) == ["qc.png"]


def test_overlay_defaults_to_middle_labelled_slice(tmp_path):
    vol = Volume(np.random.default_rng(0).normal(size=(9, 16, 16)).astype(np.float32))
    labels = np.zeros(vol.shape, np.uint8)
    labels[6:9, 4:8, 4:8] = 2
    assert V._pick_index(labels, 0) == 7
    assert V._pick_index(np.zeros_like(labels), 0) == 4
    write_overlay_png(vol, labels, tmp_path / "o.png")
    rgb = Volume(np.random.default_rng(0).uniform(0, 255, (1, 12, 20, 3)), is_rgb=True)
    write_overlay_png(rgb, np.ones((1, 12, 20), np.uint8), tmp_path / "rgb.png")
    assert sitk.ReadImage(str(tmp_path / "rgb.png")).GetNumberOfComponentsPerPixel() == 3
    with pytest.raises(InputError, match="differs"):
        write_overlay_png(vol, labels[:-1], tmp_path / "bad.png")
