"""InteractiveSession mechanics: coordinates end to end, undo/redo, propagation, caching, bad input."""

import types

import numpy as np
import pytest
import torch

from MedSAMAdapterLib.engine import geometry
from MedSAMAdapterLib.engine.cache import EmbeddingCache
from MedSAMAdapterLib.engine.prompts import SlicePrompts, VolumePrompts
from MedSAMAdapterLib.engine.session import InteractiveSession, PropagationPolicy
from MedSAMAdapterLib.errors import InputError, PromptError
from Testing.conftest import make_volume, sphere_volume


class EchoModel(torch.nn.Module):
    """Test double: 'segments' a disk around each positive click, or fills a box, in model space.

    It makes the whole chain RAS -> ijk -> slice (row, col) -> model xy -> low-res logits -> slice mask
    checkable exactly, independent of what a neural network would answer.
    """

    def __init__(self, image_size=64, radius=2.0):
        super().__init__()
        self.spec = types.SimpleNamespace(name="echo", image_size=image_size, normalization="minmax01", sha256=None)
        self.image_encoder = torch.nn.Conv2d(3, 4, 16, 16)
        self.radius = radius
        self.weights_sha256 = None  # not from a file: the fingerprint hashes the state dict
        self.requires_grad_(False)  # as load_model returns models: frozen, so embeddings may be cached
        self.encode_calls = 0

    def encode(self, images):
        self.encode_calls += len(images)
        return self.image_encoder(images)

    def decode(self, embedding, points, labels, box, mask_logits, multimask, text=None):
        low = self.spec.image_size // 4  # SAM's low-res logits: a quarter of the model input size
        scale = low / self.spec.image_size
        yy, xx = torch.meshgrid(torch.arange(low) + 0.5, torch.arange(low) + 0.5, indexing="ij")
        logits = torch.full((low, low), -10.0)
        if box is not None:
            x0, y0, x1, y1 = box[0].tolist()
            inside = (xx >= x0 * scale) & (xx <= (x1 + 1) * scale) & (yy >= y0 * scale) & (yy <= (y1 + 1) * scale)
            logits[inside] = 10.0
        if points is not None:
            for (x, y), label in zip(points[0].tolist(), labels[0].tolist()):
                disk = (xx - (x + 0.5) * scale) ** 2 + (yy - (y + 0.5) * scale) ** 2 <= self.radius**2
                logits[disk] = 10.0 if label == 1 else -10.0
        count = 3 if multimask else 1
        return logits.expand(1, count, low, low).clone(), torch.linspace(0.9, 0.8, count)[None]


def oblique_direction():
    a, b = np.deg2rad(20), np.deg2rad(-35)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped": np.diag([-1.0, -1.0, 1.0]),
    "oblique": oblique_direction(),
    "permuted": np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]),
}


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_click_at_physical_point_lands_on_that_voxel(direction, view):
    image, _ = sphere_volume(shape=(20, 30, 26))
    volume = make_volume(image, spacing=(0.8, 1.1, 2.5), origin=(10, -20, 5), direction=DIRECTIONS[direction])
    session = InteractiveSession(volume, EchoModel())
    target_ijk = np.array([[7, 19, 12]])  # (i, j, k)
    ras = volume.geometry.ijk_to_ras(target_ijk)
    axis = geometry.axis_for_view(volume.geometry, view)
    segment = session.add_segment("lesion")
    session.segment_prompts(segment, VolumePrompts(volume.geometry.ras_to_ijk(ras), np.array([1])), axis)
    mask = session.segment_mask(segment)
    i, j, k = target_ijk[0]
    assert mask[k, j, i], f"clicked voxel not in the mask ({direction}, {view})"
    slices_touched = np.unique(np.nonzero(mask)[axis])
    assert slices_touched.tolist() == [target_ijk[0][::-1][axis]]


def test_undo_redo_restore_exact_masks():
    image, _ = sphere_volume()
    session = InteractiveSession(make_volume(image), EchoModel())
    segment = session.add_segment("a")
    session.segment_slice(segment, 0, 6, SlicePrompts([[20, 20]], [1]))
    first = session.segment_mask(segment)
    session.segment_slice(segment, 0, 6, SlicePrompts([[20, 20], [30, 10]], [1, 1]))
    second = session.segment_mask(segment)
    assert second.sum() > first.sum()
    assert session.undo(segment) and np.array_equal(session.segment_mask(segment), first)
    assert session.undo(segment) and not session.segment_mask(segment).any()
    assert not session.undo(segment)
    assert session.redo(segment) and np.array_equal(session.segment_mask(segment), first)
    assert session.redo(segment) and np.array_equal(session.segment_mask(segment), second)
    assert not session.redo(segment)


class MaskPromptRecorder(EchoModel):
    """EchoModel that remembers the mask prompt of each call."""

    def __init__(self):
        super().__init__()
        self.mask_prompts = []

    def decode(self, embedding, points, labels, box, mask_logits, multimask, text=None):
        self.mask_prompts.append(mask_logits)
        return super().decode(embedding, points, labels, box, mask_logits, multimask)


def test_the_mask_prompt_is_the_segment_as_it_stands_after_edits_and_undo():
    image, _ = sphere_volume()
    model = MaskPromptRecorder()
    session = InteractiveSession(make_volume(image), model)
    drawn = np.zeros(session.volume.shape, bool)
    drawn[6, 10:30, 12:40] = True  # e.g. painted by hand or imported from an automatic model
    segment = session.add_segment_from_mask("a", drawn)
    click = SlicePrompts([[20, 20]], [1], use_previous_mask=True)
    session.segment_slice(segment, 0, 6, click)
    expected = session.embedder.transform(0, 6).mask_to_model_logits(drawn[6])
    assert torch.equal(model.mask_prompts[-1], expected)
    after_click = session.segment_mask(segment)[6]
    session.segment_slice(segment, 0, 6, click)  # the model's own result is fed back as a mask, not as logits
    assert torch.equal(model.mask_prompts[-1], session.embedder.transform(0, 6).mask_to_model_logits(after_click))
    while session.undo(segment):  # back to empty (an unchanged result adds no undo step)
        pass
    assert not session.segment_mask(segment).any()
    session.segment_slice(segment, 0, 6, click)
    assert model.mask_prompts[-1] is None  # nothing left to refine: a plain click


def test_segments_are_independent_and_composed_into_a_label_map():
    image, _ = sphere_volume()
    session = InteractiveSession(make_volume(image), EchoModel())
    a, b = session.add_segment("a"), session.add_segment("b")
    session.segment_slice(a, 0, 6, SlicePrompts([[20, 20]], [1]))
    before = session.segment_mask(a)
    session.segment_slice(b, 0, 6, SlicePrompts([[30, 30]], [1]))
    session.undo(b)
    assert np.array_equal(session.segment_mask(a), before)
    labels = session.label_volume()
    assert set(np.unique(labels)) == {0, 1}


def test_new_edit_clears_redo():
    image, _ = sphere_volume()
    session = InteractiveSession(make_volume(image), EchoModel())
    s = session.add_segment("a")
    session.segment_slice(s, 0, 6, SlicePrompts([[20, 20]], [1]))
    session.undo(s)
    session.segment_slice(s, 0, 5, SlicePrompts([[20, 20]], [1]))
    assert not session.redo(s)


# EchoModel fills any box, sphere or not, so the mechanics tests below turn the appearance check off
BOX_FILLER_POLICY = PropagationPolicy(min_appearance_contrast=None)


def test_propagation_follows_box_both_ways_as_one_undo_step():
    image, _ = sphere_volume(shape=(12, 40, 40))
    session = InteractiveSession(make_volume(image), EchoModel())
    s = session.add_segment("a")
    session.segment_slice(s, 0, 6, SlicePrompts(box_rc=(10, 10, 25, 25)))
    written = session.propagate(s, 0, 6, policy=BOX_FILLER_POLICY).written
    assert sorted(written) == [i for i in range(12) if i != 6]
    assert session.segment_mask(s)[[0, 11]].any(axis=(1, 2)).all()
    session.undo(s)
    assert session.segment_mask(s)[6].any() and not session.segment_mask(s)[[0, 11]].any()


def test_propagation_needs_a_mask_on_the_start_slice():
    image, _ = sphere_volume()
    session = InteractiveSession(make_volume(image), EchoModel())
    s = session.add_segment("a")
    with pytest.raises(PromptError, match="empty on slice"):
        session.propagate(s, 0, 3)


def test_3d_box_is_limited_to_its_slice_range():
    image, _ = sphere_volume(shape=(12, 40, 40))
    session = InteractiveSession(make_volume(image), EchoModel())
    s = session.add_segment("a")
    outcome = session.segment_box_3d(s, 0, (10, 10, 25, 25), 3, 8, policy=BOX_FILLER_POLICY)
    assert outcome.written[0] == 5 and sorted(outcome.written) == list(range(3, 9)) and outcome.stops == ()
    touched = np.nonzero(session.segment_mask(s).any(axis=(1, 2)))[0]
    assert touched.min() == 3 and touched.max() == 8


def test_embeddings_are_cached_and_reused(tmp_path):
    image, _ = sphere_volume()
    model = EchoModel()
    cache = EmbeddingCache(tmp_path)
    session = InteractiveSession(make_volume(image), model, cache=cache)
    s = session.add_segment("a")
    for _ in range(3):
        session.segment_slice(s, 0, 4, SlicePrompts([[20, 20]], [1]))
    assert model.encode_calls == 1
    other = InteractiveSession(make_volume(image), model, cache=EmbeddingCache(tmp_path))
    other.segment_slice(other.add_segment("b"), 0, 4, SlicePrompts([[20, 20]], [1]))
    assert model.encode_calls == 1  # served from disk by a fresh cache
    changed = image.copy()
    changed[0, 0, 0] += 1
    third = InteractiveSession(make_volume(changed), model, cache=EmbeddingCache(tmp_path))
    third.segment_slice(third.add_segment("c"), 0, 4, SlicePrompts([[20, 20]], [1]))
    assert model.encode_calls == 2  # new content, never a stale embedding


def test_trainable_encoder_bypasses_the_cache(tmp_path):
    image, _ = sphere_volume()
    model = EchoModel()
    model.image_encoder.weight.requires_grad_(True)
    session = InteractiveSession(make_volume(image), model, cache=EmbeddingCache(tmp_path))
    s = session.add_segment("a")
    session.segment_slice(s, 0, 4, SlicePrompts([[20, 20]], [1]))
    session.segment_slice(s, 0, 4, SlicePrompts([[20, 20]], [1]))
    assert model.encode_calls == 2


def test_background_precompute_embeds_every_slice_nearest_first(tmp_path):
    image, _ = sphere_volume()
    model = EchoModel()
    session = InteractiveSession(make_volume(image), model, cache=EmbeddingCache(tmp_path))
    seen = []
    job = session.precompute(axis=0, center=5, progress=lambda done, total: seen.append((done, total)))
    assert job.wait(timeout=60) and job.error is None
    assert all(session.embedder.is_ready(0, i) for i in range(12))
    assert seen[-1] == (12, 12) and job.order[:3] == [5, 6, 4]


def test_bad_inputs_are_refused():
    image, _ = sphere_volume()
    session = InteractiveSession(make_volume(image), EchoModel())
    s = session.add_segment("a")
    with pytest.raises(PromptError):
        session.segment_slice(s, 0, 99, SlicePrompts([[1, 1]], [1]))
    with pytest.raises(PromptError, match="only negative"):
        session.segment_slice(s, 0, 3, SlicePrompts([[1, 1]], [0]))
    with pytest.raises(InputError, match="no segment"):
        session.segment_slice("nope", 0, 3, SlicePrompts([[1, 1]], [1]))
    with pytest.raises(InputError, match="constant"):
        InteractiveSession(make_volume(np.ones((3, 8, 8))), EchoModel())


def test_propagation_stops_when_the_mask_balloons():
    """A model that fills whatever box it gets must not spread through the volume as the box grows."""
    from MedSAMAdapterLib.engine.session import SliceResult, _stop_reason

    policy = PropagationPolicy()
    previous = np.zeros((64, 64), bool)
    previous[20:30, 20:30] = True  # 100 px
    grown = np.zeros_like(previous)
    grown[18:34, 18:34] = True  # 256 px, 2.56x, overlapping
    steady = np.zeros_like(previous)
    steady[19:31, 19:31] = True  # 144 px, 1.44x
    assert _stop_reason(previous, SliceResult(grown, 0.9, 0, 1), policy) == "the mask ballooned"
    assert _stop_reason(previous, SliceResult(steady, 0.9, 0, 1), policy) is None
    tiny = np.zeros_like(previous)
    tiny[20:27, 20:27] = True  # 49 px (under growth_floor_px): an object's end may grow fast
    assert _stop_reason(tiny, SliceResult(steady, 0.9, 0, 1), policy) is None


def test_appearance_contrast_tells_the_object_from_its_background():
    from MedSAMAdapterLib.engine.appearance import ObjectAppearance
    from MedSAMAdapterLib.engine.preprocessing import SliceTransform

    transform = SliceTransform.for_shape((64, 32), 64)  # the image fills the left half of the 16 x 16 grid
    embedding = torch.zeros(1, 3, 16, 16)
    embedding[0, 0] = 1.0  # every cell shares a common component, as real embeddings do
    embedding[0, 1, 4:8, 2:6] = 1.0  # the object's cells (slice rows 16..31, cols 8..23)
    embedding[0, 2, :, 8:] = 5.0  # the padding: must weigh nothing
    obj = np.zeros((64, 32), bool)
    obj[16:32, 8:24] = True
    appearance = ObjectAppearance.learn(embedding, transform, obj)
    assert appearance.contrast(embedding, transform, obj) > 0.25
    elsewhere = np.zeros_like(obj)
    elsewhere[40:56, 8:24] = True
    assert appearance.contrast(embedding, transform, elsewhere) < 0
    assert appearance.contrast(embedding, transform, np.zeros_like(obj)) == float("-inf")
    assert ObjectAppearance.learn(embedding, transform, np.ones_like(obj)) is None  # no background to compare


class TissueModel(EchoModel):
    """EchoModel whose embedding says which tissue each cell holds: the share of dark, mid and bright pixels,
    plus a component all cells share."""

    def encode(self, images):
        self.encode_calls += len(images)
        gray = images[:, :1]
        bins = torch.cat([torch.ones_like(gray), gray < 0.25, (gray >= 0.25) & (gray < 0.75), gray >= 0.75], dim=1)
        return torch.nn.functional.avg_pool2d(bins.float(), 16)


def test_propagation_stops_where_the_object_ends_though_the_model_keeps_answering():
    """EchoModel fills any box, so area and overlap never flag the object's end; what lies under the mask does."""
    image = np.zeros((12, 64, 64), np.float32)
    image[:, 40:, :] = 0.5  # a second tissue the growing box reaches
    image[2:7, 20:36, 20:36] = 1.0  # the object spans slices 2..6
    session = InteractiveSession(make_volume(image), TissueModel(image_size=128), cache=EmbeddingCache(use_disk=False))
    s = session.add_segment("a")
    session.segment_slice(s, 0, 4, SlicePrompts(box_rc=(20, 20, 35, 35)))
    assert sorted(session.propagate(s, 0, 4, policy=BOX_FILLER_POLICY).written) == [i for i in range(12) if i != 4]
    session.undo(s)
    outcome = session.propagate(s, 0, 4)
    assert sorted(outcome.written) == [2, 3, 5, 6]
    assert [str(stop) for stop in outcome.stops] == ["slice 7: the answer no longer looks like the object",
                                                     "slice 1: the answer no longer looks like the object"]
