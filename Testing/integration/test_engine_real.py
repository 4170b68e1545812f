"""The engine on real weights and real data: propagation through a 3D lesion, geometry on oblique volumes."""

import numpy as np
import pytest

from MedSAMAdapterLib.engine import geometry
from MedSAMAdapterLib.engine.cache import EmbeddingCache
from MedSAMAdapterLib.engine.prompts import VolumePrompts
from MedSAMAdapterLib.engine.session import InteractiveSession
from MedSAMAdapterLib.evaluation.clicks import tight_box
from MedSAMAdapterLib.evaluation.metrics import dice_score
from Testing.conftest import SHARED_DATA, make_volume, requires_shared_data, sphere_volume

pytestmark = pytest.mark.integration


@requires_shared_data
def test_box_then_propagation_segments_a_ct_lesion_in_3d(litemedsam):
    from MedSAMAdapterLib.data.nnunet import open_dataset, read_case

    dataset = open_dataset(SHARED_DATA / "Dataset004_DeepLesionCT")
    volume, labels = read_case(dataset, "CT_Lesion_000001_02_01_008-023")
    truth = labels == 1
    start = int(np.argmax(truth.sum(axis=(1, 2))))
    session = InteractiveSession(volume, litemedsam, cache=EmbeddingCache(use_disk=False))
    segment = session.add_segment("lesion")
    from MedSAMAdapterLib.engine.prompts import SlicePrompts

    first = session.segment_slice(segment, 0, start, SlicePrompts(box_rc=tight_box(truth[start])))
    assert dice_score(first.mask, truth[start]) > 0.8
    written = session.propagate(segment, 0, start).written
    predicted = session.segment_mask(segment)
    assert len(written) >= 3, "propagation stopped right away"
    assert set(np.nonzero(predicted.any(axis=(1, 2)))[0]) <= set(range(truth.shape[0]))
    assert dice_score(predicted, truth) > 0.6
    assert session.undo(segment)
    assert np.array_equal(session.segment_mask(segment).any(axis=(1, 2)).nonzero()[0], [start])


@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_physical_box_on_oblique_flipped_volume_contains_the_target(litemedsam, view):
    """A box drawn in RAS around a ball on a flipped, oblique, anisotropic grid segments that ball."""
    image, ball = sphere_volume(shape=(40, 48, 44), center=(20, 24, 22), radius=9.0)
    a = np.deg2rad(25)
    oblique = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) @ np.diag([-1.0, -1, 1])
    volume = make_volume(image, spacing=(0.9, 1.2, 1.0), origin=(3, -7, 11), direction=oblique)
    axis = geometry.axis_for_view(volume.geometry, view)
    center_ijk = np.array([22.0, 24.0, 20.0])
    half = np.array([11.0, 11.0, 11.0])
    half[2 - axis] = 0  # a 2D box: both corners on the slice through the centre
    corners_ras = volume.geometry.ijk_to_ras(np.stack([center_ijk - half, center_ijk + half]))
    box_ijk = volume.geometry.ras_to_ijk(corners_ras)
    session = InteractiveSession(volume, litemedsam)
    segment = session.add_segment("ball")
    result = session.segment_prompts(segment, VolumePrompts(box_ijk=(box_ijk[0], box_ijk[1])), axis)
    mask = session.segment_mask(segment)
    assert mask[20, 24, 22], "the voxel at the box centre is not in the segment"
    truth_plane = geometry.slice_plane(ball, axis, result.index)
    assert dice_score(result.mask, truth_plane) > 0.85



@requires_shared_data
def test_propagation_stops_where_the_answer_stops_looking_like_the_lesion():
    """With the shipped click adapter, box + propagation through this DeepLesion case runs off the lesion at its
    ends (twice its volume); the appearance check stops it there (README "Propagation watches ...")."""
    from MedSAMAdapterLib.data.nnunet import open_dataset, read_case
    from MedSAMAdapterLib.engine.prompts import SlicePrompts
    from MedSAMAdapterLib.engine.session import PropagationPolicy
    from MedSAMAdapterLib.models.loading import open_model

    dataset = open_dataset(SHARED_DATA / "Dataset004_DeepLesionCT")
    volume, labels = read_case(dataset, "CT_Lesion_000009_03_01_036-048")
    truth = np.asarray(labels) == 1
    start = int(np.argmax(truth.sum(axis=(1, 2))))
    session = InteractiveSession(volume, open_model("litemedsam"), cache=EmbeddingCache(use_disk=False))
    scores = {}
    for name, policy in {"blind": PropagationPolicy(min_appearance_contrast=None), "watching": None}.items():
        segment = session.add_segment(f"lesion {name}")
        session.segment_slice(segment, 0, start, SlicePrompts(box_rc=tight_box(truth[start])))
        session.propagate(segment, 0, start, policy=policy)
        predicted = session.segment_mask(segment)
        scores[name] = dice_score(predicted, truth), predicted.sum() / truth.sum()
    assert scores["blind"][1] > 1.5  # the run-off this guards against
    assert scores["watching"][0] > scores["blind"][0] + 0.15 and scores["watching"][1] < 1.2
