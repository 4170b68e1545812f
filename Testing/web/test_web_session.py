"""WebSession (what the page's buttons and mouse gestures do) on a real MRML scene with a stand-in model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core (MRML without Qt) is not installed: pip install .[scene]")

import SimpleITK as sitk  # noqa: E402

from MedSAMAdapterLib.engine.cache import EmbeddingCache  # noqa: E402
from MedSAMAdapterLib.errors import InputError, PromptError  # noqa: E402
from MedSAMAdapterLib.scene import SceneController, load_segmentation  # noqa: E402
from MedSAMAdapterLib.scene.volumes import matrix_to_numpy  # noqa: E402
from MedSAMAdapterLib.web.interaction import Gesture, ras_to_xy  # noqa: E402
from MedSAMAdapterLib.web.session import WebSession, hex_to_rgb, rgb_to_hex  # noqa: E402
from Testing.helpers import BrightRegionModel, ball_array, new_scene, slice_node  # noqa: E402

SPACING = (0.8, 1.3, 2.5)


@pytest.fixture
def ball_file(tmp_path):
    image, ball = ball_array(spacing=SPACING)
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing(SPACING)
    itk.SetOrigin((5.0, -7.0, 3.0))
    path = tmp_path / "ball.nrrd"
    sitk.WriteImage(itk, str(path))
    return path, ball


@pytest.fixture
def session(tmp_path, ball_file):
    scene = new_scene()
    controller = SceneController(scene, loader=lambda settings: BrightRegionModel(),
                                 cache=EmbeddingCache(tmp_path / "cache"))
    web = WebSession(scene, controller)
    seen = []
    web.volume_changed.append(seen.append)
    web.load_volume(ball_file[0])
    assert seen == [web.volume_node] and web.volume_node.GetName() == "ball"
    return web


def view_at(session, orientation, ijk):
    """A slice node through voxel ``ijk`` and the display pixel showing it."""
    ras = (session.segmenter().volume.geometry.ijk_to_ras_matrix() @ np.r_[ijk, 1.0])[:3]
    node = slice_node(session.scene, orientation, ras)
    matrix = matrix_to_numpy(node.GetXYToRAS())
    return matrix, tuple(ras_to_xy(matrix, ras))


def test_click_in_a_slice_view_creates_a_segment_with_the_object(session, ball_file):
    ball = ball_file[1]
    matrix, xy = view_at(session, "Axial", (22, 20, 12))
    result = session.gesture(matrix, Gesture("click", (xy,), 1))
    assert result.slices == (12,) and len(session.segment_ids()) == 1  # the first click made "Segment 1"
    mask = session.segmenter().segment_mask(session.active_segment)
    assert mask[12].sum() > 0 and (mask[12] & ~ball[12]).sum() == 0
    rows = session.segment_rows()
    assert rows[0].name == "Segment 1" and rows[0].voxels == int(mask.sum())
    status = session.status()
    assert status["can_undo"] and status["segments"][0]["voxels"] > 0 and "click" in status["last"]["message"]
    assert session.undo() and session.segment_rows()[0].voxels == 0 and session.can_redo()
    assert session.redo() and session.segment_rows()[0].voxels == int(mask.sum())


def test_box_dragged_on_a_sagittal_view_and_propagation(session, ball_file):
    ball = ball_file[1]
    matrix, centre = view_at(session, "Sagittal", (22, 20, 12))
    corners = ((centre[0] - 30, centre[1] - 30), (centre[0] + 30, centre[1] + 30))
    result = session.gesture(matrix, Gesture("box", corners))
    assert result.axis == 2 and result.slices == (22,)  # sagittal = constant i
    session.propagate()
    mask = session.segmenter().segment_mask(session.active_segment)
    assert 2 * (mask & ball).sum() / (mask.sum() + ball.sum()) > 0.8
    assert "stopped at slice" in session.status()["last"]["message"]  # where and why propagation stopped


def test_negative_click_and_errors_reach_the_caller(session):
    matrix, xy = view_at(session, "Axial", (22, 20, 12))
    session.gesture(matrix, Gesture("click", (xy,), 1))
    before = session.segment_rows()[0].voxels
    session.gesture(matrix, Gesture("click", (xy,), 0))
    assert session.segment_rows()[0].voxels < before
    with pytest.raises(PromptError):
        session.gesture(matrix, Gesture("click", ((-5000.0, -5000.0),), 1))  # outside the volume


def test_segment_list_actions(session):
    first = session.add_segment("liver", "#ff0000")
    second = session.add_segment()
    assert session.active_segment == second
    session.rename_segment(first, "  tumour ")
    session.recolor_segment(first, "#00ff00")
    row = session.segment_rows()[0]
    assert (row.name, row.color) == ("tumour", "#00ff00")
    session.select_segment(first)
    session.delete_segment(first)
    assert session.segment_ids() == [second] and session.active_segment == second
    for bad in (lambda: session.rename_segment(second, " "), lambda: session.recolor_segment(second, "red"),
                lambda: session.select_segment("nope"), lambda: session.delete_segment("nope")):
        with pytest.raises(InputError):
            bad()


def test_save_as_seg_nrrd_and_nifti(session, tmp_path):
    with pytest.raises(InputError, match="no segments"):
        session.save_segmentation(tmp_path / "empty.seg.nrrd")
    matrix, xy = view_at(session, "Axial", (22, 20, 12))
    session.gesture(matrix, Gesture("click", (xy,), 1))
    session.rename_segment(session.active_segment, "ball")
    seg_path = session.save_segmentation(tmp_path / "out.seg.nrrd")
    loaded = load_segmentation(session.scene, seg_path)
    assert loaded.GetSegmentation().GetSegment(session.active_segment).GetName() == "ball"
    nii = session.save_segmentation(tmp_path / "out.nii.gz")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(nii)))
    assert labels.shape == session.segmenter().volume.shape and (labels == 1).sum() == session.segment_rows()[0].voxels
    with pytest.raises(InputError, match="save as"):
        session.save_segmentation(tmp_path / "out.png")


def test_unreadable_files_and_missing_volume_are_input_errors(tmp_path):
    web = WebSession(new_scene(), SceneController(new_scene(), loader=lambda s: BrightRegionModel()))
    with pytest.raises(InputError, match="load a volume"):
        web.add_segment()
    bad = tmp_path / "broken.nrrd"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError):
        web.load_volume(bad)
    with pytest.raises(InputError):
        web.load_volume(tmp_path / "missing.nii.gz")
    assert web.status()["volume"] is None


def test_auto_segmentation_offers_the_shipped_model_and_explains_when_none_is_found(session, tmp_path, monkeypatch):
    assert "acdc_heart_autosam" in session.auto_models() and session.auto_unavailable_reason() == ""
    from MedSAMAdapterLib.scene.controller import SceneController

    monkeypatch.setattr(SceneController, "auto_model_folders", staticmethod(lambda: [tmp_path / "empty"]))
    assert session.auto_models() == {}
    assert "train-auto" in session.auto_unavailable_reason()
    with pytest.raises(InputError, match="unknown prompt-free model"):
        session.run_auto("nothing")


def test_auto_segmentation_forwards_box_refinement_and_turn_search(session, monkeypatch):
    calls = []
    monkeypatch.setattr(session.controller, "run_auto",
                        lambda volume, segmentation, model, progress=None, refine_boxes=False, turn_search=None:
                        calls.append((model, refine_boxes, turn_search)) or {1: "s1"})
    assert session.run_auto("acdc_heart_autosam", refine_boxes=True) == {1: "s1"}
    session.run_auto("acdc_heart_autosam", turn_search=True)
    assert calls == [("acdc_heart_autosam", True, None), ("acdc_heart_autosam", False, True)]


def test_embedding_progress_is_reported(session):
    job = session.precompute("axial")
    job.wait(timeout=60)
    progress = session.embedding_progress()
    assert progress["total"] == session.segmenter().volume.shape[0] and progress["done"] == progress["total"]
    assert not progress["running"] and progress["error"] == ""


def test_colour_conversions():
    assert rgb_to_hex((1.0, 0.5, 0.0)) == "#ff8000"
    assert hex_to_rgb("#ff8000") == pytest.approx((1.0, 128 / 255, 0.0))
    assert hex_to_rgb("#ff8000ff") == pytest.approx((1.0, 128 / 255, 0.0))


def test_a_known_segment_name_goes_with_the_click_and_the_status_says_so(tmp_path, ball_file):
    from Testing.helpers import NamedRegionModel

    model = NamedRegionModel()
    scene = new_scene()
    web = WebSession(scene, SceneController(scene, loader=lambda s: model, cache=EmbeddingCache(tmp_path / "cache")))
    web.load_volume(ball_file[0])
    matrix, xy = view_at(web, "Axial", (22, 20, 12))
    web.gesture(matrix, Gesture("click", (xy,), 1))
    assert model.texts[-1] is None and "text prompt" not in web.status()["last"]["message"]  # "Segment 1"
    web.rename_segment(web.active_segment, "ball")
    web.gesture(matrix, Gesture("click", (xy,), 1))
    assert model.texts[-1] == "ball" and "text prompt 'ball'" in web.status()["last"]["message"]
    web.controller.names_as_text = False  # the page's switch
    web.gesture(matrix, Gesture("click", (xy,), 1))
    assert model.texts[-1] is None


def test_with_zoom_on_a_corrective_click_says_how_far_it_zoomed(tmp_path, ball_file):
    from MedSAMAdapterLib.engine.focus import FocusPolicy
    from Testing.helpers import BrightRegionModel

    scene = new_scene()
    web = WebSession(scene, SceneController(scene, loader=lambda s: BrightRegionModel(),
                                            cache=EmbeddingCache(tmp_path / "cache")))
    # the page's "Zoom in on small objects" switch; the ball fills much of its slices, so zoom from 1.2x
    web.controller.focus = FocusPolicy(margin=0.1, min_zoom=1.2)
    web.load_volume(ball_file[0])
    matrix, xy = view_at(web, "Axial", (22, 20, 12))
    web.gesture(matrix, Gesture("click", (xy,), 1))
    assert "zoomed" not in web.status()["last"]["message"]  # the first click sees the whole slice
    _, xy2 = view_at(web, "Axial", (24, 20, 12))
    web.gesture(matrix, Gesture("click", (xy2,), 1))
    assert "zoomed x" in web.status()["last"]["message"], web.status()["last"]


def test_a_box_on_a_small_object_is_zoomed_by_default_and_the_status_says_so(session):
    from MedSAMAdapterLib.engine.focus import DEFAULT_FOCUS

    assert session.controller.focus == DEFAULT_FOCUS is not None  # the page's switch starts on
    matrix, centre = view_at(session, "Axial", (22, 20, 12))
    for half, zoomed in ((2, True), (30, False)):  # 2 x 3 voxels on a 40 x 44 slice, then most of it
        corners = ((centre[0] - half, centre[1] - half), (centre[0] + half, centre[1] + half))
        session.gesture(matrix, Gesture("box", corners))
        assert ("zoomed x" in session.status()["last"]["message"]) is zoomed, session.status()["last"]
