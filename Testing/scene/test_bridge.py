"""Scene bridge against the real MRML library (slicer-core): volume/segmentation/markups/slice nodes, no mocks."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (MRML without Qt) is not installed: pip install .[scene]")

from MedSAMAdapterLib.engine.geometry import Geometry  # noqa: E402
from MedSAMAdapterLib.errors import InputError, PromptError  # noqa: E402
from MedSAMAdapterLib.scene import (SceneSegmenter, Terminology, add_volume_node, axis_for_normal,  # noqa: E402
                                    load_segmentation, point_label, prompts_from_markups, save_segmentation,
                                    slice_normal, volume_from_node, xy_to_ras)
from MedSAMAdapterLib.scene.labelmaps import VoxelGrid  # noqa: E402
from MedSAMAdapterLib.scene.volumes import numpy_to_matrix  # noqa: E402
from Testing.conftest import requires_litemedsam  # noqa: E402
from Testing.helpers import (BrightRegionModel, ball_array, new_scene, oblique_flipped_ijk_to_ras,  # noqa: E402
                             slice_node)

CENTER = (12, 20, 22)  # ball centre (k, j, i)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture
def world():
    """Scene, ball volume node (flipped + oblique, anisotropic), empty segmentation node, segmenter, truth."""
    scene = new_scene()
    image, ball = ball_array()
    matrix = oblique_flipped_ijk_to_ras()
    volume = add_volume_node(scene, image, matrix, "ball")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    segmenter = SceneSegmenter(scene, volume, segmentation, BrightRegionModel())
    return dict(scene=scene, volume=volume, segmentation=segmentation, segmenter=segmenter, ball=ball,
                image=image, matrix=matrix)


def ras_of(matrix: np.ndarray, ijk) -> np.ndarray:
    return (matrix @ np.r_[np.asarray(ijk, float), 1.0])[:3]


def all_masks(segmenter: SceneSegmenter) -> dict[str, np.ndarray]:
    return {sid: segmenter.segment_mask(sid) for sid in segmenter.segment_ids()}


def same_masks(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def plane(mask: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(mask, index, axis=axis)


# ---- volumes and views -----------------------------------------------------------------------------------------
def test_volume_from_node_keeps_voxels_and_any_orientation(world):
    volume = volume_from_node(world["volume"])
    assert volume.shape == world["image"].shape
    assert np.array_equal(volume.array, world["image"])
    np.testing.assert_allclose(volume.geometry.ijk_to_ras_matrix(), world["matrix"], atol=1e-9)
    world["volume"].GetImageData().GetPointData().GetScalars().Fill(0)  # the Volume is a copy, not a view
    assert volume.array.max() > 100


def test_volume_under_a_linear_transform_is_placed_in_world(world):
    shift = np.eye(4)
    shift[:3, 3] = (5.0, -7.0, 3.0)
    transform = world["scene"].AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(numpy_to_matrix(shift))
    world["volume"].SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(volume_from_node(world["volume"]).geometry.ijk_to_ras_matrix(),
                               shift @ world["matrix"], atol=1e-9)
    segmenter = SceneSegmenter(world["scene"], world["volume"], world["segmentation"], BrightRegionModel())
    sid = segmenter.add_segment("ball")
    segmenter.click_ras(sid, [shift[:3, 3] + ras_of(world["matrix"], CENTER[::-1])], axis=0)
    assert segmenter.segment_mask(sid)[CENTER]


def test_axis_for_normal_picks_the_voxel_axis_closest_to_the_view_normal():
    permuted = Geometry((1, 1, 1), (0, 0, 0), np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]))  # LPS columns
    assert axis_for_normal(permuted, (0, 0, 1)) == 1  # S is the j axis -> numpy axis 1
    assert axis_for_normal(permuted, (-1, 0, 0)) == 0  # R/L is the k axis -> numpy axis 0
    assert axis_for_normal(permuted, (0, 0.9, 0.1)) == 2  # A/P is the i axis -> numpy axis 2
    with pytest.raises(InputError):
        axis_for_normal(permuted, (0, 0, 0))


@pytest.mark.parametrize("orientation", ["Axial", "Coronal", "Sagittal"])
def test_click_in_a_slice_view_segments_the_clicked_voxel(world, orientation):
    matrix, ball = world["matrix"], world["ball"]
    target = (11, 17, 25)  # (k, j, i) inside the ball, off-centre on purpose
    view = slice_node(world["scene"], orientation, ras_of(matrix, target[::-1]), size=(300, 200))
    ras = xy_to_ras(view, (150, 100))  # the pixel at the centre of the view
    np.testing.assert_allclose(ras, ras_of(matrix, target[::-1]), atol=1e-6)
    normal = slice_normal(view)
    segmenter = world["segmenter"]
    sid = segmenter.add_segment("ball")
    result = segmenter.click_ras(sid, [ras], [1], normal=normal)

    # the axis is the voxel axis most parallel to the view normal, worked out here independently
    columns = world["matrix"][:3, :3] / np.linalg.norm(world["matrix"][:3, :3], axis=0)
    expected_axis = 2 - int(np.argmax(np.abs(normal @ columns)))
    assert result.axis == expected_axis and result.slices == (target[expected_axis],)
    mask = segmenter.segment_mask(sid)
    assert mask[target], f"clicked voxel not segmented ({orientation})"
    assert np.unique(np.nonzero(mask)[expected_axis]).tolist() == [target[expected_axis]]
    cut = plane(ball, expected_axis, target[expected_axis])
    assert dice(plane(mask, expected_axis, target[expected_axis]), cut) > 0.9


def test_negative_click_accumulates_and_undo_restores_clicks_and_voxels(world):
    segmenter, ras = world["segmenter"], ras_of(world["matrix"], CENTER[::-1])
    sid = segmenter.add_segment("ball")
    segmenter.click_ras(sid, [ras], axis=0)
    first = segmenter.segment_mask(sid)
    assert first[CENTER]
    outside = ras_of(world["matrix"], (2, 2, CENTER[0]))  # same k slice, background
    segmenter.click_ras(sid, [outside], [0], axis=0)
    assert len(segmenter.prompts_on(sid, 0, CENTER[0]).points_ijk) == 2
    segmenter.click_ras(sid, [ras], [0], axis=0)  # negative on the object itself: the object goes
    assert not segmenter.segment_mask(sid).any()
    assert segmenter.undo() and segmenter.undo()
    assert np.array_equal(segmenter.segment_mask(sid), first)
    assert segmenter.prompts_on(sid, 0, CENTER[0]).labels == (1,)
    assert segmenter.redo() and segmenter.prompts_on(sid, 0, CENTER[0]).labels == (1, 0)


# ---- boxes, ROI, propagation -----------------------------------------------------------------------------------
def test_box_dragged_on_a_slice(world):
    segmenter, matrix, ball = world["segmenter"], world["matrix"], world["ball"]
    sid = segmenter.add_segment("ball")
    k = CENTER[0]
    result = segmenter.box_ras(sid, ras_of(matrix, (5, 5, k)), ras_of(matrix, (40, 36, k)), axis=0)
    assert result.slices == (k,)
    mask = segmenter.segment_mask(sid)
    assert dice(mask[k], ball[k]) > 0.9 and not mask[k - 1].any()


def test_roi_node_gives_a_3d_box_limited_to_its_slices(world):
    segmenter, matrix, ball = world["segmenter"], world["matrix"], world["ball"]
    roi = world["scene"].AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    # an ROI aligned with the voxel axes, covering i 6..38, j 4..36, k 7..17
    lo, hi = np.array([6, 4, 7]), np.array([38, 36, 17])
    axes = matrix[:3, :3]
    orientation = np.eye(4)
    orientation[:3, :3] = axes / np.linalg.norm(axes, axis=0)
    roi.SetAndObserveObjectToNodeMatrix(numpy_to_matrix(orientation))  # rotated like the voxel axes
    roi.SetCenter(*ras_of(matrix, (lo + hi) / 2.0))
    roi.SetSize(*((hi - lo) * np.linalg.norm(axes, axis=0)))
    sid = segmenter.add_segment("ball")
    result = segmenter.roi(sid, roi, axis=0)
    mask = segmenter.segment_mask(sid)
    touched = np.nonzero(mask.any(axis=(1, 2)))[0]
    assert touched.min() >= 7 and touched.max() <= 17 and len(result.slices) >= 8
    assert dice(mask[7:18], ball[7:18]) > 0.9
    assert segmenter.undo() and not segmenter.segment_mask(sid).any()


def test_propagation_through_the_bridge_is_one_undo_step(world):
    segmenter, ball = world["segmenter"], world["ball"]
    sid = segmenter.add_segment("ball")
    segmenter.click_ras(sid, [ras_of(world["matrix"], CENTER[::-1])], view="axial", axis=0)
    single = segmenter.segment_mask(sid)
    result = segmenter.propagate(sid)
    assert result.axis == 0 and CENTER[0] not in result.slices and len(result.slices) >= 7  # the ball spans 9 slices
    assert len(result.stops) == 2 and all("the object ended" in stop for stop in result.stops)  # said why, both ways
    assert dice(segmenter.segment_mask(sid), ball) > 0.95
    assert segmenter.undo() and np.array_equal(segmenter.segment_mask(sid), single)
    assert segmenter.redo() and dice(segmenter.segment_mask(sid), ball) > 0.95


def test_propagation_needs_a_prompted_slice(world):
    segmenter = world["segmenter"]
    sid = segmenter.add_segment("ball")
    with pytest.raises(PromptError, match="first"):
        segmenter.propagate(sid)


# ---- existing segments, outside edits --------------------------------------------------------------------------
def test_existing_segment_is_loaded_and_refined_without_losing_its_voxels(world):
    segmenter = world["segmenter"]
    grid: VoxelGrid = segmenter.grid
    sid = segmenter.add_segment("painted")
    painted = np.zeros(world["ball"].shape, bool)
    painted[3, 5:9, 5:9] = True  # painted by hand far from the ball, before the bridge saw the segment
    grid.write(sid, grid.full, painted)
    segmenter.click_ras(sid, [ras_of(world["matrix"], CENTER[::-1])], axis=0)
    mask = segmenter.segment_mask(sid)
    assert mask[CENTER] and np.array_equal(mask[3], painted[3])
    # an outside edit (e.g. Paint/Erase) after the bridge wrote: the engine must follow the node
    grid.write(sid, grid.full, np.zeros_like(painted))
    with pytest.raises(PromptError, match="empty on slice"):
        segmenter.propagate(sid)


# ---- overlap policies -------------------------------------------------------------------------------------------
@pytest.fixture
def crowded(world):
    """Segment 'other' holds the left half of the ball on the centre slice, 'far' a block elsewhere."""
    segmenter, ball = world["segmenter"], world["ball"]
    grid = segmenter.grid
    other, far = segmenter.add_segment("other", (0, 1, 0)), segmenter.add_segment("far", (0, 0, 1))
    half = np.zeros_like(ball)
    half[CENTER[0], :, : CENTER[2]] = ball[CENTER[0], :, : CENTER[2]]
    block = np.zeros_like(ball)
    block[20:23, 2:6, 2:6] = True
    grid.write(other, grid.full, half)
    grid.write(far, grid.full, block)
    target = segmenter.add_segment("target")
    return dict(world, other=other, far=far, target=target, half=half, block=block)


@pytest.mark.parametrize("policy", ["overwrite", "keep_others", "only_empty"])
def test_overlap_policies_never_lose_a_segment(crowded, policy):
    segmenter, ball, k = crowded["segmenter"], crowded["ball"], CENTER[0]
    target, other, far = crowded["target"], crowded["other"], crowded["far"]
    ids_before = segmenter.segment_ids()
    before = all_masks(segmenter)
    result = segmenter.click_ras(target, [ras_of(crowded["matrix"], CENTER[::-1])], axis=0, overlap=policy)
    masks = all_masks(segmenter)
    assert segmenter.segment_ids() == ids_before
    assert np.array_equal(masks[far], crowded["block"])  # untouched by every policy
    if policy == "overwrite":
        assert dice(masks[target][k], ball[k]) > 0.9
        assert not (masks[other] & masks[target]).any() and not masks[other][k].any()
        assert set(result.changed_segments) == {target, other}
    else:
        assert not (masks[target] & crowded["half"]).any()
        assert np.array_equal(masks[other], crowded["half"])
        assert masks[target][k].sum() > 0.3 * ball[k].sum()
    assert segmenter.undo()
    assert same_masks(all_masks(segmenter), before)  # the other segments included


def test_only_empty_never_removes_voxels_keep_others_does(crowded):
    segmenter, k, ras = crowded["segmenter"], CENTER[0], ras_of(crowded["matrix"], CENTER[::-1])
    target = crowded["target"]
    segmenter.click_ras(target, [ras], axis=0, overlap="only_empty")
    grown = segmenter.segment_mask(target)
    segmenter.click_ras(target, [ras], [0], axis=0, overlap="only_empty")  # negative: removes nothing here
    assert np.array_equal(segmenter.segment_mask(target), grown)
    segmenter.click_ras(target, [ras], [0], axis=0, overlap="keep_others")  # ... but does with keep_others
    assert not segmenter.segment_mask(target)[k].any()


def test_random_edits_undo_and_redo_exactly_with_shared_layers(crowded):
    segmenter, matrix = crowded["segmenter"], crowded["matrix"]
    segmentation = crowded["segmentation"].GetSegmentation()
    segmentation.CollapseBinaryLabelmaps(False)  # non-overlapping segments now share one layer
    rng = np.random.default_rng(3)
    ids = [crowded["target"], crowded["other"], crowded["far"]]
    snapshots = [all_masks(segmenter)]
    for step in range(12):
        sid = ids[step % 3]
        k, j, i = CENTER[0] + int(rng.integers(-3, 4)), CENTER[1] + int(rng.integers(-4, 5)), CENTER[2] + int(rng.integers(-4, 5))
        policy = ("overwrite", "keep_others", "only_empty")[int(rng.integers(3))]
        if step % 4 == 3:
            segmenter.propagate(sid, axis=0, start_index=k, overlap=policy) if segmenter.segment_mask(sid)[k].any() \
                else segmenter.click_ras(sid, [ras_of(matrix, (i, j, k))], axis=0, overlap=policy)
        else:
            accumulate = bool(step % 2)
            earlier = segmenter.prompts_on(sid, 0, k).labels if accumulate else ()
            label = int(rng.integers(2)) if 1 in earlier else 1  # a negative click needs a positive one first
            segmenter.click_ras(sid, [ras_of(matrix, (i, j, k))], [label], axis=0, overlap=policy,
                                accumulate=accumulate)
        snapshots.append(all_masks(segmenter))
    done = len(snapshots) - 1
    for n in range(done, 0, -1):
        assert segmenter.undo()
        assert same_masks(all_masks(segmenter), snapshots[n - 1]), f"undo to step {n - 1} not exact"
    assert not segmenter.undo()
    for n in range(1, done + 1):
        assert segmenter.redo()
        assert same_masks(all_masks(segmenter), snapshots[n]), f"redo to step {n} not exact"


# ---- names, colours, terminology, files -------------------------------------------------------------------------
LIVER = Terminology(("SCT", "123037004", "Anatomical Structure"), ("SCT", "10200004", "Liver"))


def test_segment_names_colours_and_terminology(world):
    segmenter = world["segmenter"]
    sid = segmenter.add_segment("liver", (0.8, 0.4, 0.2), terminology=LIVER)
    segment = world["segmentation"].GetSegmentation().GetSegment(sid)
    assert segment.GetName() == "liver"
    np.testing.assert_allclose(segment.GetColor(), (0.8, 0.4, 0.2))
    assert segment.GetTerminology() == LIVER.serialize()
    assert Terminology.parse(segment.GetTerminology()) == LIVER
    assert "~SCT^10200004^Liver~" in LIVER.serialize()
    segmenter.set_segment_properties(sid, name="Liver (edited)", color=(0, 1, 0))
    assert segment.GetName() == "Liver (edited)" and segment.GetColor() == (0.0, 1.0, 0.0)
    with pytest.raises(InputError):
        segmenter.set_segment_properties(sid, color=(0, 300, 0))
    with pytest.raises(InputError):
        segmenter.set_segment_properties(sid, terminology="not a terminology")


def test_seg_nrrd_save_and_reload_in_a_fresh_scene(world, tmp_path):
    segmenter = world["segmenter"]
    a = segmenter.add_segment("ball", (1, 0, 0), terminology=LIVER)
    b = segmenter.add_segment("corner", (0, 0, 1))
    segmenter.click_ras(a, [ras_of(world["matrix"], CENTER[::-1])], axis=0)
    segmenter.propagate(a)
    block = np.zeros(world["ball"].shape, bool)
    block[1:4, 2:5, 3:9] = True
    segmenter.grid.write(b, segmenter.grid.full, block)
    path = save_segmentation(world["segmentation"], tmp_path / "out.seg.nrrd")
    assert path.is_file() and not list(tmp_path.glob(".*partial*"))

    scene = new_scene()
    volume = add_volume_node(scene, world["image"], world["matrix"], "ball again")
    loaded = load_segmentation(scene, path)
    grid = VoxelGrid(world["image"].shape, world["matrix"], loaded)
    segmentation = loaded.GetSegmentation()
    assert [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())] == [a, b]
    assert segmentation.GetSegment(a).GetName() == "ball" and segmentation.GetSegment(b).GetName() == "corner"
    assert segmentation.GetSegment(a).GetColor() == (1.0, 0.0, 0.0)
    assert segmentation.GetSegment(a).GetTerminology() == LIVER.serialize()
    assert np.array_equal(grid.read(a), segmenter.segment_mask(a))
    assert np.array_equal(grid.read(b), block)
    # and the reloaded segmentation can be edited further through a new bridge
    again = SceneSegmenter(scene, volume, loaded, BrightRegionModel())
    again.click_ras(b, [ras_of(world["matrix"], (30, 30, 20))], axis=0, overlap="keep_others")
    assert np.array_equal(again.segment_mask(b)[1:4], block[1:4])
    with pytest.raises(InputError, match="seg.nrrd"):
        save_segmentation(world["segmentation"], tmp_path / "out.nii.gz")


# ---- markups ------------------------------------------------------------------------------------------------------
def test_markups_points_become_labelled_clicks(world):
    import vtk

    matrix = world["matrix"]
    points = world["scene"].AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    points.AddControlPoint(vtk.vtkVector3d(*ras_of(matrix, CENTER[::-1])), "in")
    points.AddControlPoint(vtk.vtkVector3d(*ras_of(matrix, (3, 3, CENTER[0]))), "out")
    points.SetNthControlPointDescription(1, "negative")
    unselected = points.AddControlPoint(vtk.vtkVector3d(*ras_of(matrix, (4, 36, CENTER[0]))), "off")
    points.SetNthControlPointSelected(unselected, False)
    ras, labels = prompts_from_markups(points)
    assert labels.tolist() == [1, 0, 0]
    np.testing.assert_allclose(ras[0], ras_of(matrix, CENTER[::-1]))
    assert point_label(" Positive ", False) == 1 and point_label("", True) == 1 and point_label("bg", True) == 0
    segmenter = world["segmenter"]
    sid = segmenter.add_segment("ball")
    segmenter.markups(sid, points, axis=0)
    assert segmenter.segment_mask(sid)[CENTER]
    with pytest.raises(PromptError):
        prompts_from_markups(world["scene"].AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "empty"))


# ---- refusals -----------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_with_a_reason(world):
    segmenter, matrix = world["segmenter"], world["matrix"]
    sid = segmenter.add_segment("ball")
    with pytest.raises(PromptError, match="outside the volume"):
        segmenter.click_ras(sid, [ras_of(matrix, (-30, 5, 5))], axis=0)
    with pytest.raises(PromptError, match="different slices"):
        segmenter.click_ras(sid, [ras_of(matrix, (5, 5, 5)), ras_of(matrix, (5, 5, 9))], axis=0)
    with pytest.raises(InputError, match="overlap policy"):
        segmenter.click_ras(sid, [ras_of(matrix, CENTER[::-1])], axis=0, overlap="merge")
    with pytest.raises(InputError, match="not in segmentation"):
        segmenter.click_ras("nope", [ras_of(matrix, CENTER[::-1])], axis=0)
    other_scene = new_scene()
    with pytest.raises(InputError, match="not in the given scene"):
        SceneSegmenter(other_scene, world["volume"], world["segmentation"], BrightRegionModel())
    assert not segmenter.undo()  # refused prompts leave nothing to undo


# ---- the real network -------------------------------------------------------------------------------------------
@requires_litemedsam
@pytest.mark.integration
def test_litemedsam_box_on_the_oblique_ball(world, litemedsam):
    segmenter = SceneSegmenter(world["scene"], world["volume"], world["segmentation"], litemedsam)
    sid = segmenter.add_segment("ball")
    k, matrix, ball = CENTER[0], world["matrix"], world["ball"]
    lo, hi = np.argwhere(ball[k]).min(0), np.argwhere(ball[k]).max(0)  # (j, i) tight box on the centre slice
    segmenter.box_ras(sid, ras_of(matrix, (lo[1] - 2, lo[0] - 2, k)), ras_of(matrix, (hi[1] + 2, hi[0] + 2, k)), axis=0)
    mask = segmenter.segment_mask(sid)
    assert mask[CENTER] and dice(mask[k], ball[k]) > 0.85
