"""Mouse gestures -> prompts and view pixel <-> RAS mapping (numpy only; one check against a real slice node)."""

from __future__ import annotations

import numpy as np
import pytest

from MedSAMAdapterLib.errors import InputError
from MedSAMAdapterLib.web.interaction import (DRAG_PIXELS, Gesture, Press, classify, display_to_page, ras_to_xy,
                                              slice_normal, xy_to_ras)


def test_click_box_and_negative_gestures():
    assert classify(Press((10, 10)), (11, 12)) == Gesture("click", ((10.0, 10.0),), 1)
    assert classify(Press((10, 10)), (10 + DRAG_PIXELS, 10)) == Gesture("box", ((10.0, 10.0), (15.0, 10.0)))
    assert classify(Press((10, 10), negative_modifier=True), (10, 10)).label == 0  # shift / ctrl click
    assert classify(Press((10, 10), "right"), (10, 10)).label == 0
    assert classify(Press((10, 10), "right"), (40, 40)).kind == "click"  # right drag is still a negative click
    assert classify(Press((10, 10)), (10, 10), negative_mode=True).label == 0  # the page's "-" toggle
    assert classify(Press((10, 10)), (30, 40), negative_mode=True).kind == "box"


def test_xy_ras_round_trip_on_an_oblique_view():
    angle = np.deg2rad(30)
    matrix = np.eye(4)
    matrix[:3, :3] = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]) * 0.7
    matrix[:3, 3] = (10, -20, 5)
    ras = xy_to_ras(matrix, (120, 45))
    np.testing.assert_allclose(ras_to_xy(matrix, ras), (120, 45), atol=1e-9)
    np.testing.assert_allclose(slice_normal(matrix), [np.sin(angle), 0, np.cos(angle)], atol=1e-12)
    with pytest.raises(InputError):
        xy_to_ras(np.eye(3), (0, 0))


def test_display_pixels_map_to_page_with_y_flipped_and_scaled():
    # element at (100, 50) of 200x100 CSS px, render window 400x200 (device pixel ratio 2)
    assert display_to_page((0, 0), (400, 200), (100, 50, 200, 100)) == (100.0, 150.0)
    assert display_to_page((400, 200), (400, 200), (100, 50, 200, 100)) == (300.0, 50.0)


def test_same_mapping_as_the_slicer_effect_uses():
    pytest.importorskip("slicer", reason="slicer-core not installed")
    from MedSAMAdapterLib.scene import volumes
    from Testing.helpers import new_scene, slice_node

    node = slice_node(new_scene(), "Sagittal", (12.0, -30.0, 8.0))
    matrix = volumes.matrix_to_numpy(node.GetXYToRAS())
    for xy in [(0, 0), (100, 37), (255, 255)]:
        np.testing.assert_allclose(xy_to_ras(matrix, xy), volumes.xy_to_ras(node, xy))
    np.testing.assert_allclose(np.abs(slice_normal(matrix)), np.abs(volumes.slice_normal(node)), atol=1e-9)
