"""Focus (zoom-in) for corrective clicks: window choice, exact coordinates through the window, embedding reuse."""

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


@pytest.mark.parametrize("text", ["zoom=2", "margin=x", "margin=-1", "min_zoom=5,max_zoom=4"])
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
