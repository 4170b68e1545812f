"""CLI contract: usage errors exit 2 with one readable line, and no partial output files are left behind."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAMAdapterLib import cli
from MedSAMAdapterLib.models import loading


@pytest.fixture
def tiny_in_registry(monkeypatch, tiny_model):
    """Make `--model tiny-test` load the tiny random model so CLI paths run in milliseconds."""
    monkeypatch.setattr(loading, "load_model", lambda name, weights=None, device="cpu": tiny_model)


@pytest.fixture
def volume_file(tmp_path):
    image = np.zeros((6, 40, 40), np.float32)
    image[2:5, 10:30, 12:28] = 100
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing((0.8, 0.8, 2.0))
    path = tmp_path / "vol.nii.gz"
    sitk.WriteImage(itk, str(path))
    return path


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_segment_writes_seg_nrrd_and_overlay(tmp_path, volume_file, tiny_in_registry, capsys):
    out = tmp_path / "out" / "seg.seg.nrrd"
    code, stdout, _ = run(["segment", volume_file, "-o", out, "--box", "12,10,3,27,29,3", "--name", "tumour",
                           "--model", "tiny-test", "--no-cache"], capsys)
    assert code == 0, stdout
    assert out.exists() and (tmp_path / "out" / "seg_overlay.png").exists()
    header = sitk.ReadImage(str(out))
    assert header.GetMetaData("Segment0_Name") == "tumour"


def test_segment_focus_flag(tmp_path, volume_file, tiny_in_registry, monkeypatch, capsys):
    from MedSAMAdapterLib.engine.focus import DEFAULT_FOCUS, FocusPolicy

    sessions = []
    load = cli.load_session
    monkeypatch.setattr(cli, "load_session", lambda args, volume: sessions.append(load(args, volume)) or sessions[-1])
    box = ["--box", "12,10,3,27,29,3", "--model", "tiny-test", "--no-cache"]
    for flags, expected in (([], DEFAULT_FOCUS), (["--focus", "off"], None),
                            (["--focus", "min_zoom=2"], FocusPolicy(min_zoom=2.0))):
        code, _, err = run(["segment", volume_file, "-o", tmp_path / "seg.nii.gz", *box, *flags], capsys)
        assert code == 0, err
        assert sessions[-1].focus == expected
    code, _, err = run(["segment", volume_file, "-o", tmp_path / "seg.nii.gz", *box, "--focus", "zoom=3"], capsys)
    assert code != 0 and "focus" in err


def test_physical_coordinates_are_accepted(tmp_path, volume_file, tiny_in_registry, capsys):
    out = tmp_path / "seg.nii.gz"
    # voxel (20, 20, 3) in RAS: LPS (16, 16, 6) with identity direction -> RAS (-16, -16, 6)
    code, _, err = run(["segment", volume_file, "-o", out, "--point", "-16,-16,6", "--coords", "ras",
                        "--model", "tiny-test", "--no-cache"], capsys)
    assert code == 0, err
    assert out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give at least one --point or a --box"),
        (["--point", "1,2"], "X,Y,Z"),
        (["--point", "a,b,c"], "comma-separated numbers"),
        (["--point", "500,2,1"], "outside"),
        (["--box", "5,5,3,5,9,3"], "degenerate"),
        (["--negative", "20,20,3"], "only negative"),
        (["--point", "20,20,3", "--axis", "diagonal"], "--axis"),
    ],
)
def test_usage_errors_exit_2_without_output(tmp_path, volume_file, tiny_in_registry, capsys, extra, message):
    out = tmp_path / "seg.seg.nrrd"
    code, _, err = run(["segment", volume_file, "-o", out, "--model", "tiny-test", "--no-cache", *extra], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".seg*"))


def test_unreadable_volume_and_unknown_model(tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    code, _, err = run(["segment", bad, "-o", tmp_path / "x.nii.gz", "--point", "1,1,1"], capsys)
    assert code == 2 and "broken.nii.gz" in err
    code, _, err = run(["info", "--json"], capsys)
    assert code == 0
    code, _, err = run(["segment", bad, "-o", tmp_path / "x.nii.gz", "--point", "1,1,1", "--model", "nope"], capsys)
    assert code == 2


def test_argparse_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["segment"])
    assert stop.value.code == 2


def test_info_lists_models(capsys):
    code, out, _ = run(["info"], capsys)
    assert code == 0 and "litemedsam" in out
    code, out, _ = run(["info", "--json"], capsys)
    rows = {row["name"]: row for row in json.loads(out)["models"]}
    assert code == 0 and rows["sam_vit_b"]["default_adapter"] is None and rows["sam_vit_b"]["text_prompts"] == []
    if rows["litemedsam"]["default_adapter"]:  # the shipped click adapter names what it takes as text prompts
        assert "optic cup" in rows["litemedsam"]["text_prompts"] and "text prompts: " in run(["info"], capsys)[1]


@pytest.mark.parametrize("flags,on_disk,intensity", [([], True, "auto"), (["--no-cache", "--intensity", "minmax"],
                                                                          False, "minmax")])
def test_evaluate_passes_cache_and_intensity_flags(tmp_path, monkeypatch, capsys, flags, on_disk, intensity):
    from MedSAMAdapterLib.evaluation import protocols

    seen = {}
    monkeypatch.setattr(protocols, "evaluate_dataset", lambda *a, **kw: seen.update(kw) or {"overall": {}})
    code, _, _ = run(["evaluate", str(tmp_path), "--out", str(tmp_path / "ev"), *flags], capsys)
    assert code == 0 and seen["cache_on_disk"] is on_disk and seen["intensity"] == intensity
    assert seen["names_as_text"] is True
    run(["evaluate", str(tmp_path), "--out", str(tmp_path / "ev"), "--no-names"], capsys)
    assert seen["names_as_text"] is False


def test_evaluate_focus_flag(tmp_path, monkeypatch, capsys):
    from MedSAMAdapterLib.engine.focus import DEFAULT_FOCUS, FocusPolicy
    from MedSAMAdapterLib.evaluation import protocols

    seen = {}
    monkeypatch.setattr(protocols, "evaluate_dataset", lambda *a, **kw: seen.update(kw) or {"overall": {}})
    for flags, expected in (([], DEFAULT_FOCUS), (["--focus", "off"], None),
                            (["--focus", "margin=1,min_zoom=2"], FocusPolicy(margin=1.0, min_zoom=2.0))):
        run(["evaluate", str(tmp_path), "--out", str(tmp_path / "ev"), *flags], capsys)
        assert seen["focus"] == expected
    code, _, err = run(["evaluate", str(tmp_path), "--out", str(tmp_path / "ev"), "--focus", "zoom=3"], capsys)
    assert code != 0 and "focus" in err


def test_segment_propagate_says_where_and_why_it_stopped(capsys):
    from MedSAMAdapterLib.engine.cache import EmbeddingCache
    from MedSAMAdapterLib.engine.prompts import VolumePrompts
    from MedSAMAdapterLib.engine.session import InteractiveSession
    from Testing.conftest import make_volume
    from Testing.unit.test_session import TissueModel

    image = np.zeros((12, 64, 64), np.float32)
    image[:, 40:, :] = 0.5
    image[2:7, 20:36, 20:36] = 1.0  # the object spans slices 2..6
    session = InteractiveSession(make_volume(image), TissueModel(image_size=128), cache=EmbeddingCache(use_disk=False))
    segment = session.add_segment("a")
    box = (np.array([20.0, 20.0, 4.0]), np.array([35.0, 35.0, 4.0]))  # (i, j, k) corners on slice 4
    written = cli.segment_with_prompts(session, segment, VolumePrompts(np.zeros((0, 3)), np.zeros(0, np.int64), box),
                                       0, propagate=True)
    assert sorted(written) == [2, 3, 4, 5, 6]
    out = capsys.readouterr().out
    assert "propagation stopped at slice 7: the answer no longer looks like the object" in out
    assert "propagation stopped at slice 1:" in out
    box_3d = (np.array([20.0, 20.0, 0.0]), np.array([35.0, 35.0, 8.0]))  # a 3D box over slices 0..8, middle 4
    written = cli.segment_with_prompts(session, session.add_segment("b"),
                                       VolumePrompts(np.zeros((0, 3)), np.zeros(0, np.int64), box_3d), 0, propagate=False)
    assert sorted(written) == [2, 3, 4, 5, 6]
    assert "propagation stopped at slice 7: the answer no longer looks like the object" in capsys.readouterr().out
