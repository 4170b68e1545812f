"""engine.preprocessing: intensity policies, per-volume normalisation, slice <-> model space (vs segment-anything)."""

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from MedSAMAdapterLib.engine.preprocessing import (
    CT_WINDOWS,
    IntensityPolicy,
    SliceTransform,
    intensity_bounds,
    prepare_slice,
    prepare_slices_batch,
    resolve_policy,
    volume_to_display_range,
)
from MedSAMAdapterLib.errors import InputError

SHAPES = [(471, 562), (562, 471), (1, 562), (300, 1), (256, 256), (1024, 1024), (3000, 17), (7, 5)]


def _sam_file(*parts: str) -> Path:
    spec = importlib.util.find_spec("segment_anything")  # finds without executing the package __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("segment-anything not installed")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


@pytest.fixture
def resize_longest_side(monkeypatch):
    """segment-anything's ResizeLongestSide, loaded under a private name with a stand-in for torchvision
    (only ``apply_image`` needs it, and torchvision is not a dependency of this project)."""
    fake = types.ModuleType("torchvision.transforms.functional")
    fake.resize = fake.to_pil_image = None
    for name, module in {"torchvision": types.ModuleType("torchvision"),
                         "torchvision.transforms": types.ModuleType("torchvision.transforms"),
                         "torchvision.transforms.functional": fake}.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("_sam_transforms_under_test", _sam_file("utils", "transforms.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ResizeLongestSide


@pytest.fixture(scope="module")
def sam_class():
    """segment_anything.modeling.sam.Sam loaded as a private package (its __init__ would import torchvision)."""
    folder = _sam_file("modeling")
    name = "_sam_modeling_under_test"
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module.Sam
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


# ---- policies ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, extra", [
    ("auto", "auto", {}),
    ("minmax", "minmax", {}),
    ("percentile", "percentile", {"low_pct": 0.5, "high_pct": 99.5}),
    ("percentile:1,99", "percentile", {"low_pct": 1.0, "high_pct": 99.0}),
    ("window:40,400", "window", {"window_center": 40.0, "window_width": 400.0}),
    ("ct-lung", "window", {"window_center": -600.0, "window_width": 1500.0}),
    ("CT:Bone", "window", {"window_center": 400.0, "window_width": 1800.0}),
    (" brain ", "window", {"window_center": 40.0, "window_width": 80.0}),
])
def test_policy_parse(text, kind, extra):
    policy = IntensityPolicy.parse(text)
    assert policy.kind == kind
    for key, value in extra.items():
        assert getattr(policy, key) == value
    assert IntensityPolicy.parse(policy) is policy


@pytest.mark.parametrize("bad", ["nonsense", "window:40", "window:40,-5", "percentile:99,1", "window:a,b"])
def test_policy_parse_errors(bad):
    with pytest.raises(InputError):
        IntensityPolicy.parse(bad)


def test_policy_ids_are_short_stable_and_distinct():
    texts = ["auto", "minmax", "percentile", "percentile:1,99", "window:40,400", *CT_WINDOWS]
    ids = [IntensityPolicy.parse(t).id for t in texts]
    assert ids[:5] == ["auto", "minmax", "pct0.5-99.5", "pct1-99", "win40w400"]
    assert IntensityPolicy.parse("ct-soft-tissue").id == "win40w400"  # same mapping, same cache key
    assert len(set(ids)) == len(ids) - 1
    assert all(len(i) <= 16 and "/" not in i for i in ids)


def test_standard_ct_windows():
    assert CT_WINDOWS["ct-soft-tissue"] == (40, 400)
    assert CT_WINDOWS["ct-lung"] == (-600, 1500)
    assert CT_WINDOWS["ct-bone"] == (400, 1800)
    assert CT_WINDOWS["ct-brain"] == (40, 80)


# ---- whole-volume normalisation ---------------------------------------------------------------------------
def _ct_volume():
    rng = np.random.default_rng(0)
    vol = rng.integers(-1024, 1500, size=(4, 16, 16)).astype(np.float32)
    vol[0, 0, :3] = [40, -160, 240]
    return vol


def test_auto_uses_soft_tissue_window_for_ct():
    vol = _ct_volume()
    assert resolve_policy(vol, "auto").id == "win40w400"
    out = volume_to_display_range(vol, "auto")
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
    np.testing.assert_allclose(out[0, 0, :3], [127.5, 0, 255])


def test_auto_uses_percentiles_for_mr():
    rng = np.random.default_rng(1)
    vol = rng.gamma(2.0, 100.0, size=(6, 20, 20)).astype(np.float32)  # non-negative, not integer
    assert resolve_policy(vol, "auto").kind == "percentile"
    lo, hi = intensity_bounds(vol, "auto")
    np.testing.assert_allclose([lo, hi], np.percentile(vol, [0.5, 99.5]), rtol=1e-5)
    out = volume_to_display_range(vol, "auto")
    assert out.min() == 0 and out.max() == 255


def test_normalisation_is_per_volume_not_per_slice():
    vol = np.zeros((3, 8, 8), np.float32)
    vol[0] = np.linspace(0, 100, 64).reshape(8, 8)
    vol[1] = np.linspace(0, 1000, 64).reshape(8, 8)
    vol[2] = 100.0
    for policy in ("minmax", "percentile", "window:500,1000"):
        out = volume_to_display_range(vol, policy)
        # the same raw value maps to the same display value in every slice
        assert out[0, 7, 7] == out[2, 0, 0] == pytest.approx(out[2, 3, 3])
    out = volume_to_display_range(vol, "minmax")
    assert out[0, 7, 7] == pytest.approx(25.5)
    assert out[0].max() < 30  # the darker slice stays darker: no per-slice stretch


def test_constant_volume_maps_to_zero_without_nan():
    out = volume_to_display_range(np.full((2, 4, 4), 7.0), "minmax")
    assert np.all(out == 0)


def test_rgb_uses_joint_minmax():
    rgb = np.zeros((1, 4, 4, 3), np.float32)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    rgb[..., 2] = 50
    rgb[0, 0, 0] = [10, 10, 10]
    out = volume_to_display_range(rgb, "auto")
    assert out[0, 1, 1, 0] == pytest.approx(255) and out[0, 1, 1, 1] == pytest.approx(90 / 190 * 255)
    assert out[0, 0, 0].tolist() == [0, 0, 0]


# ---- slice transform vs segment-anything ------------------------------------------------------------------
@pytest.mark.parametrize("image_size", [256, 1024])
@pytest.mark.parametrize("hw", SHAPES)
def test_to_model_xy_matches_resize_longest_side(resize_longest_side, hw, image_size):
    ref = resize_longest_side(image_size)
    t = SliceTransform(hw, image_size)
    sam_hw = ref.get_preprocess_shape(hw[0], hw[1], image_size)
    if 0 in sam_hw:  # SAM would shrink a 1-pixel side to 0 and lose it; we keep it 1 pixel wide
        assert t.resized_hw == tuple(max(v, 1) for v in sam_hw)
        return
    assert t.resized_hw == sam_hw
    rng = np.random.default_rng(0)
    rc = rng.uniform(0, 1, size=(9, 2)) * np.array(hw)
    expected = ref.apply_coords(rc[:, ::-1].copy(), hw)  # SAM takes (x, y) = (col, row)
    np.testing.assert_array_equal(t.to_model_xy(rc), expected)
    box = t.box_rc_to_model(*rc[0], *rc[1])
    np.testing.assert_array_equal(box, ref.apply_boxes(np.r_[rc[0, ::-1], rc[1, ::-1]][None], hw)[0])


@pytest.mark.parametrize("hw", [(471, 562), (1, 562), (37, 5)])
def test_logits_to_slice_matches_sam_postprocess(sam_class, hw):
    t = SliceTransform(hw, 1024)
    low = torch.randn(1, 3, 256, 256)
    fake_sam = types.SimpleNamespace(image_encoder=types.SimpleNamespace(img_size=1024))
    expected = sam_class.postprocess_masks(fake_sam, low, t.resized_hw, hw)
    got = t.logits_to_slice(low)
    assert got.shape == (1, 3, *hw)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_sam_imagenet_input_matches_sam_preprocess(sam_class):
    rng = np.random.default_rng(0)
    plane = rng.uniform(0, 255, size=(256, 180, 3)).astype(np.float32)  # longest side already S: no resize
    x, t = prepare_slice(plane, 256, "sam_imagenet")
    fake = types.SimpleNamespace(
        pixel_mean=torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1),
        pixel_std=torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1),
        image_encoder=types.SimpleNamespace(img_size=256),
    )
    expected = sam_class.preprocess(fake, torch.from_numpy(plane).permute(2, 0, 1)[None])[0]
    torch.testing.assert_close(x, expected)
    assert t.resized_hw == (256, 180)


def test_minmax01_input_resized_normalised_padded():
    plane = np.tile(np.linspace(50, 150, 300, dtype=np.float32), (120, 1))  # (120, 300) grey
    x, t = prepare_slice(plane, 256, "minmax01")
    assert x.shape == (3, 256, 256) and x.dtype == torch.float32
    assert t.resized_hw == (102, 256)
    body = x[:, :102, :256]
    assert body.min() == 0 and body.max() == pytest.approx(1.0)
    assert torch.all(x[:, 102:, :] == 0)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    flat, _ = prepare_slice(np.full((10, 10), 9.0), 64, "minmax01")
    assert torch.isfinite(flat).all() and flat.abs().max() == 0


def test_prepare_slice_accepts_spec_and_batches():
    spec = types.SimpleNamespace(image_size=64, normalization="minmax01", embedding_size=16)
    x, t = prepare_slice(np.random.default_rng(0).uniform(size=(30, 40)), spec)
    assert x.shape == (3, 64, 64) and t.low_res_size == 64
    batch, transforms = prepare_slices_batch([np.zeros((30, 40)), np.ones((50, 20, 3))], 64, "sam_imagenet")
    assert batch.shape == (2, 3, 64, 64)
    assert [tr.original_hw for tr in transforms] == [(30, 40), (50, 20)]
    with pytest.raises(InputError):
        prepare_slice(np.zeros((4, 4)), 64, "bogus")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        prepare_slice(np.zeros((4, 4, 2)), 64, "minmax01")


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


ROUND_TRIP_CASES = [
    (hw, size, low)
    for hw in [(471, 562), (562, 471), (1, 562), (400, 1), (97, 1013)]
    for size, low in [(1024, 256), (256, 256), (256, 64)]  # SAM ViT, LiteMedSAM, a tiny test model
    if not (hw == (97, 1013) and low == 64)  # 16 px per low-res pixel: the thin ellipse is not representable
]


@pytest.mark.parametrize("hw, image_size, low_res", ROUND_TRIP_CASES)
def test_mask_round_trip_through_model_space(hw, image_size, low_res):
    rr, cc = np.mgrid[: hw[0], : hw[1]]
    if min(hw) == 1:
        mask = (rr + cc >= max(hw) * 0.2) & (rr + cc < max(hw) * 0.7)
    else:
        mask = ((rr - hw[0] * 0.45) / (hw[0] * 0.3)) ** 2 + ((cc - hw[1] * 0.55) / (hw[1] * 0.25)) ** 2 <= 1
    t = SliceTransform.for_shape(hw, image_size, low_res)
    logits = t.mask_to_model_logits(mask)
    assert logits.shape == (1, 1, low_res, low_res)
    assert logits.max() <= 8 and logits.min() >= -8
    back = t.logits_to_slice(logits)[0, 0].numpy() > 0
    assert back.shape == hw
    assert _iou(back, mask) > 0.98


def test_default_low_res_is_quarter_of_input():
    assert SliceTransform((10, 20), 1024).low_res_size == 256
    assert SliceTransform((10, 20), 64).low_res_size == 16
    with pytest.raises(InputError):
        SliceTransform((10, 20), 64).mask_to_model_logits(np.zeros((20, 10), bool))
    with pytest.raises(InputError):
        SliceTransform((0, 20), 64)


def test_one_pixel_wide_slice_is_resized_correctly():
    """torch's antialiased resize breaks on 1-wide -> 1-wide; the slice must still carry its content."""
    column = np.linspace(0, 255, 400, dtype=np.float32)[:, None]
    x, t = prepare_slice(column, 256, "minmax01")
    assert t.resized_hw == (256, 1)
    values = x[0, :256, 0].numpy()
    assert values[0] < 0.01 and values[-1] > 0.99 and np.all(np.diff(values) > 0)
