"""Focus (zoom-in) on small objects: window choice for clicks and boxes, exact coordinates through the window,
embedding reuse, propagation."""

import numpy as np
import torch
import pytest
from scipy import ndimage

from MedSAMAdapterLib.engine.cache import EmbeddingCache
from MedSAMAdapterLib.engine.focus import FocusPolicy, Window
from MedSAMAdapterLib.engine.prompts import SlicePrompts
from MedSAMAdapterLib.engine.session import InteractiveSession
from MedSAMAdapterLib.errors import InputError
from Testing.conftest import make_volume
from Testing.unit.test_session import EchoModel


def disk(shape, center, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius**2


def test_window_is_a_square_around_mask_and_clicks_with_margin():
    mask = disk((200, 300), (100, 150), 10)
    window = FocusPolicy(margin=0.5, min_zoom=1.5, max_zoom=8).window(mask, np.array([[100.0, 175.0]]))
    # extent rows 90..110, cols 140..175: side 36, doubled by the two half-side margins -> 72
    assert window.shape == (72, 72)
    assert window.contains(90, 140, 110, 175)
    assert abs((window.r0 + window.r1) / 2 - 100) <= 1 and abs((window.c0 + window.c1) / 2 - 157.5) <= 1


def test_no_window_for_large_objects_or_without_extent():
    policy = FocusPolicy(margin=0.4, min_zoom=1.5)
    large = disk((128, 128), (64, 64), 40)
    assert policy.window(large, np.zeros((0, 2))) is None  # an 81-px object with margins is most of the plane
    assert policy.window(np.zeros((64, 64), bool), np.zeros((0, 2))) is None


def test_window_never_magnifies_beyond_max_zoom_and_stays_inside_the_plane():
    mask = np.zeros((256, 256), bool)
    mask[2:5, 250:253] = True  # a tiny object in a corner
    window = FocusPolicy(margin=0.4, min_zoom=1.5, max_zoom=4).window(mask, np.zeros((0, 2)))
    assert window.shape == (64, 64)  # 256 / 4
    assert (window.r0, window.c1) == (0, 256)


def test_previous_window_is_kept_while_the_object_fits():
    policy = FocusPolicy(margin=0.4, min_zoom=1.5, max_zoom=8)
    mask = disk((300, 300), (150, 150), 12)
    first = policy.window(mask, np.array([[150.0, 150.0]]))
    grown = disk((300, 300), (150, 151), 12)
    assert policy.window(grown, np.array([[150.0, 150.0]]), previous=first) is first
    moved = disk((300, 300), (200, 200), 12)
    assert policy.window(moved, np.zeros((0, 2)), previous=first) != first


@pytest.mark.parametrize("text,expected", [
    ("off", None), ("on", FocusPolicy()), ("margin=1,min_zoom=2", FocusPolicy(margin=1.0, min_zoom=2.0)),
])
def test_parse(text, expected):
    assert FocusPolicy.parse(text) == expected


@pytest.mark.parametrize("text", ["zoom=2", "margin=x", "margin=-1", "min_zoom=5,max_zoom=4", "box_min_zoom=9",
                                  "max_spill=1.5"])
def test_parse_rejects_bad_settings(text):
    with pytest.raises(InputError):
        FocusPolicy.parse(text)


def _session(focus):
    volume = make_volume(np.random.default_rng(0).random((1, 128, 128)).astype(np.float32))
    model = EchoModel(image_size=64, radius=2.0)  # answers on 16 x 16 cells: 8 plane pixels per cell
    return InteractiveSession(volume, model, cache=EmbeddingCache(use_disk=False), focus=focus), model


def _click(session, segment, points, labels):
    prompts = SlicePrompts(np.asarray(points, np.float32), np.asarray(labels), None, use_previous_mask=True)
    return session.segment_slice(segment, 0, 0, prompts).mask


def test_corrective_click_is_answered_on_the_window_at_the_exact_place():
    session, model = _session(FocusPolicy(margin=0.4, min_zoom=1.5, max_zoom=8))
    segment = session.add_segment("lesion")
    first = _click(session, segment, [(60, 70)], [1])
    assert model.encode_calls == 1  # the whole plane
    prompts = SlicePrompts(np.asarray([(60, 70), (75, 80)], np.float32), np.asarray([1, 1]), None, True)
    result = session.segment_slice(segment, 0, 0, prompts)
    second = result.mask
    assert model.encode_calls == 2  # plus the window
    window = session._focus_windows[(segment, 0, 0)]
    assert result.zoom == pytest.approx(128 / max(window.shape))
    assert max(window.shape) < 128 / 1.5
    # The echo model's disk has 2 answer cells of radius: 16 px on the plane, fewer on the zoomed window
    assert first.sum() > 2 * second[ndimage.label(second)[0] == ndimage.label(second)[0][75, 80]].sum()
    labelled, _ = ndimage.label(second)
    for row, col in [(60, 70), (75, 80)]:
        component = np.argwhere(labelled == labelled[row, col])
        assert np.allclose(component.mean(0), (row, col), atol=1.0)
    assert not second[~np.pad(np.ones(window.shape, bool), ((window.r0, 128 - window.r1),
                                                             (window.c0, 128 - window.c1)))].any()


def test_window_embedding_is_reused_for_the_next_clicks_and_undo_restores():
    session, model = _session(FocusPolicy(margin=0.4, min_zoom=1.5, max_zoom=8))
    segment = session.add_segment("lesion")
    first = _click(session, segment, [(60, 70)], [1])
    _click(session, segment, [(60, 70), (66, 66)], [1, 1])
    _click(session, segment, [(60, 70), (66, 66), (62, 74)], [1, 1, 0])
    assert model.encode_calls == 2
    session.undo(segment)
    session.undo(segment)
    assert np.array_equal(session.segment_mask(segment)[0], first)


def test_without_focus_every_click_uses_the_whole_plane():
    session, model = _session(None)
    segment = session.add_segment("lesion")
    _click(session, segment, [(60, 70)], [1])
    second = _click(session, segment, [(60, 70), (75, 80)], [1, 1])
    assert model.encode_calls == 1 and (segment, 0, 0) not in session._focus_windows
    assert second[60, 70 + 12] and second[75 + 12, 80]  # plane-sized disks (radius 16 px)


def test_window_paste_keeps_pixels_outside():
    plane = np.zeros((10, 10), bool)
    plane[0, 0] = True
    out = Window(2, 2, 6, 6).paste(plane, np.ones((4, 4), bool))
    assert out[0, 0] and out[2:6, 2:6].all() and out.sum() == 17 and not plane[3, 3]


class MaskEchoModel(EchoModel):
    """Answers with the mask prompt it was given (else EchoModel's disks): the window round trip must be exact."""

    def decode(self, embedding, points, labels, box, mask_logits, multimask, text=None):
        if mask_logits is None:
            return super().decode(embedding, points, labels, box, mask_logits, multimask, text)
        return mask_logits.clone(), torch.ones(1, 1)


def test_previous_mask_goes_through_the_window_in_place():
    volume = make_volume(np.random.default_rng(0).random((1, 200, 160)).astype(np.float32))
    session = InteractiveSession(volume, MaskEchoModel(image_size=64), cache=EmbeddingCache(use_disk=False),
                                 focus=FocusPolicy(margin=0.4, min_zoom=1.5, max_zoom=8))
    segment = session.add_segment("lesion")
    first = _click(session, segment, [(120, 50)], [1])
    second = _click(session, segment, [(120, 50), (118, 54)], [1, 1])  # inside: painting it changes nothing
    assert session._focus_windows[(segment, 0, 0)].r0 > 0  # it did zoom
    assert (first ^ second).sum() <= 0.05 * first.sum()  # only boundary pixels may differ after resampling


def test_a_negative_click_is_painted_out_of_the_mask_prompt():
    """MaskEchoModel answers with its mask prompt: a negative click inside the mask comes back as a hole."""
    volume = make_volume(np.random.default_rng(0).random((1, 96, 96)).astype(np.float32))
    session = InteractiveSession(volume, MaskEchoModel(image_size=64), cache=EmbeddingCache(use_disk=False))
    segment = session.add_segment("lesion")
    first = _click(session, segment, [(48, 48)], [1])
    second = _click(session, segment, [(48, 48), (50, 56)], [1, 0])
    assert first[50, 56] and not second[50, 56] and second[48, 40]


def test_box_window_covers_box_and_clicks_and_only_small_boxes_zoom():
    policy = FocusPolicy(margin=0.5, box_min_zoom=5, max_zoom=8)
    none = np.zeros((0, 2))
    window = policy.box_window((100, 100, 119, 109), none, (800, 800))
    assert window.shape == (100, 100) and window.contains(100, 100, 119, 109)  # at most x8: 800 / 8
    assert policy.box_window((100, 100, 129, 109), none, (200, 200)) is None  # 30 px + margins: 60 > 200 / 5
    window = policy.box_window((100, 100, 119, 109), none, (200, 200))  # 20 px + two half-side margins: 40
    assert window.shape == (40, 40) and window.contains(100, 100, 119, 109)
    with_click = policy.box_window((100, 100, 119, 109), np.array([[116.0, 90.0]]), (300, 300))
    assert with_click.shape == (40, 40) and with_click.contains(100, 90, 119, 109)


def test_crop_prompts_moves_box_and_clicks_into_the_window():
    prompts = SlicePrompts(np.array([[12.0, 30.0]], np.float32), np.array([1]), (10.0, 20.0, 15.0, 40.0), True)
    cropped = Window(8, 16, 48, 56).crop_prompts(prompts)
    assert cropped.box_rc == (2.0, 4.0, 7.0, 24.0)
    assert np.array_equal(cropped.points_rc, [[4.0, 14.0]]) and cropped.use_previous_mask


class SpillModel(EchoModel):
    """Loses small boxes the way a coarse model does: a box under a quarter of the model input is answered with a
    square three times its size (leaking out of it); larger boxes are filled as EchoModel does."""

    def decode(self, embedding, points, labels, box, mask_logits, multimask, text=None):
        logits, iou = super().decode(embedding, points, labels, box, mask_logits, multimask, text)
        if box is not None:
            x0, y0, x1, y1 = box[0].tolist()
            if max(x1 - x0, y1 - y0) < self.spec.image_size / 4:
                scale = logits.shape[-1] / self.spec.image_size
                cx, cy, half = (x0 + x1) / 2 * scale, (y0 + y1) / 2 * scale, 1.5 * max(x1 - x0, y1 - y0) * scale
                yy, xx = torch.meshgrid(torch.arange(logits.shape[-1]) + 0.5, torch.arange(logits.shape[-1]) + 0.5,
                                        indexing="ij")
                logits[..., (abs(xx - cx) <= half) & (abs(yy - cy) <= half)] = 10.0
        return logits, iou


def test_doubts_box_answer_when_it_is_empty_or_spills_out_of_the_box():
    policy = FocusPolicy(max_spill=0.1)
    box = (10, 10, 19, 19)
    mask = np.zeros((40, 40), bool)
    assert policy.doubts_box_answer(mask, box)  # empty
    mask[10:20, 10:20] = True
    assert not policy.doubts_box_answer(mask, box)
    mask[20, 10:15] = True  # 5 of 105 pixels outside
    assert not policy.doubts_box_answer(mask, box)
    mask[20:23, 10:20] = True  # 30 of 130 outside
    assert policy.doubts_box_answer(mask, box)


def test_a_box_answer_that_spills_is_redone_on_a_window_in_place():
    box_mask = np.zeros((128, 128), bool)
    box_mask[61:67, 70:76] = True
    volume = make_volume(np.random.default_rng(0).random((1, 128, 128)).astype(np.float32))
    for focus, zoomed in ((FocusPolicy(margin=0.5, box_min_zoom=2.5, max_zoom=8), True), (None, False)):
        model = SpillModel(image_size=64)
        session = InteractiveSession(volume, model, cache=EmbeddingCache(use_disk=False), focus=focus)
        segment = session.add_segment("rib")
        result = session.segment_slice(segment, 0, 0, SlicePrompts(box_rc=(61, 70, 66, 75)))
        assert result.zoom == (8.0 if zoomed else 1.0) and model.encode_calls == (2 if zoomed else 1)
        # zoomed x8, the box spans 24 of 64 model pixels: filled cell by cell (one plane pixel per cell)
        assert result.mask[61:66, 70:75].all() and (not result.mask[~box_mask].any()) == zoomed
        assert (segment, 0, 0) not in session._focus_windows  # a box window is not kept for clicks


def test_a_box_answer_inside_the_box_is_kept_without_zooming():
    session, model = _session(FocusPolicy(margin=0.5, box_min_zoom=2.5, max_zoom=8))
    segment = session.add_segment("node")
    result = session.segment_slice(segment, 0, 0, SlicePrompts(box_rc=(64, 72, 71, 79)))  # one 8-px answer cell
    assert result.zoom == 1.0 and model.encode_calls == 1
    inside = np.zeros((128, 128), bool)
    inside[64:72, 72:80] = True
    assert result.mask.any() and not result.mask[~inside].any()


def test_propagation_answers_on_whole_slices():
    """A box grown from the previous slice is loose, so a leaking answer there is no sign of a lost object."""
    from MedSAMAdapterLib.engine.session import PropagationPolicy

    volume = make_volume(np.random.default_rng(0).random((5, 128, 128)).astype(np.float32))
    model = SpillModel(image_size=64)
    session = InteractiveSession(volume, model, cache=EmbeddingCache(use_disk=False),
                                 focus=FocusPolicy(margin=0.5, box_min_zoom=2.5, max_zoom=8))
    segment = session.add_segment("rib")
    assert session.segment_slice(segment, 0, 2, SlicePrompts(box_rc=(61, 70, 66, 75))).zoom == 8.0
    permissive = PropagationPolicy(max_area_growth=100.0, min_iou=0.0, min_overlap_dice=0.0,
                                  min_appearance_contrast=None)
    assert sorted(session.propagate(segment, 0, 2, policy=permissive, limits=(1, 3)).written) == [1, 3]
    assert model.encode_calls == 4  # the start slice and its window, then two whole slices
    areas = session.segment_mask(segment).sum(axis=(1, 2))
    assert areas[1] > 2 * areas[2] and areas[3] > 2 * areas[2]  # the whole-slice answers leak: nothing redone
