"""Intensity normalisation and the mapping between a 2D slice and the square model input.

Two stages, kept separate so the expensive one runs once per volume:

1. ``volume_to_display_range``: whole volume -> float32 in [0, 255] with one policy (CT window, percentiles,
   min-max), so every slice of a volume is normalised the same way (MedSAM's data preparation does this per
   volume, not per slice).
2. ``prepare_slice``: one [0, 255] slice -> (3, S, S) model tensor plus a ``SliceTransform`` that maps prompts
   into model space and low-resolution logits back onto the slice (segment-anything's ResizeLongestSide and
   ``Sam.postprocess_masks``, reimplemented here without torchvision).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

PolicyKind = Literal["auto", "minmax", "window", "percentile"]
Normalization = Literal["minmax01", "sam_imagenet"]

#: Standard radiology CT windows, (level/centre, width) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "ct-soft-tissue": (40.0, 400.0),
    "ct-abdomen": (50.0, 400.0),
    "ct-mediastinum": (50.0, 350.0),
    "ct-liver": (30.0, 150.0),
    "ct-lung": (-600.0, 1500.0),
    "ct-bone": (400.0, 1800.0),
    "ct-brain": (40.0, 80.0),
}

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # segment-anything, on the 0-255 scale
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
#: Magnitude of the logits produced by ``mask_to_model_logits`` (a fully inside / outside low-res pixel).
MASK_PROMPT_LOGIT = 8.0
_SAMPLE_VOXELS = 4_000_000


def _fmt(v: float) -> str:
    return f"{v:g}"


@dataclass(frozen=True)
class IntensityPolicy:
    """How raw voxel values become [0, 255]: ``auto``, ``minmax``, ``window`` (centre, width) or ``percentile``."""

    kind: PolicyKind = "auto"
    window_center: float | None = None
    window_width: float | None = None
    low_pct: float = 0.5
    high_pct: float = 99.5

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "minmax", "window", "percentile"):
            raise InputError(f"unknown intensity policy kind {self.kind!r}")
        if self.kind == "window":
            if self.window_center is None or self.window_width is None or not self.window_width > 0:
                raise InputError(
                    f"a window needs a centre and a positive width, got {self.window_center}, {self.window_width}"
                )
        if not 0.0 <= self.low_pct < self.high_pct <= 100.0:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.low_pct}, {self.high_pct}")

    @property
    def id(self) -> str:
        """Short stable string for cache keys, e.g. ``auto``, ``minmax``, ``pct0.5-99.5``, ``win40w400``."""
        if self.kind == "window":
            return f"win{_fmt(self.window_center)}w{_fmt(self.window_width)}"  # type: ignore[arg-type]
        if self.kind == "percentile":
            return f"pct{_fmt(self.low_pct)}-{_fmt(self.high_pct)}"
        return self.kind

    @classmethod
    def window(cls, center: float, width: float) -> "IntensityPolicy":
        return cls("window", float(center), float(width))

    @classmethod
    def parse(cls, text: "str | IntensityPolicy") -> "IntensityPolicy":
        """Parse ``auto``, ``minmax``, ``percentile[:low,high]``, ``window:center,width`` or a CT preset name
        (``ct-lung``, also ``ct:lung`` / ``lung``)."""
        if isinstance(text, IntensityPolicy):
            return text
        raw = str(text).strip().lower()
        name, _, args = raw.partition(":")
        if raw in ("auto", "minmax"):
            return cls(raw)  # type: ignore[arg-type]
        if name == "percentile":
            low, high = _parse_pair(args, raw) if args else (0.5, 99.5)
            return cls("percentile", low_pct=low, high_pct=high)
        if name == "window":
            return cls.window(*_parse_pair(args, raw))
        preset = _preset_name(raw)
        if preset is not None:
            return cls.window(*CT_WINDOWS[preset])
        choices = ", ".join(["auto", "minmax", "percentile[:low,high]", "window:center,width", *CT_WINDOWS])
        raise InputError(f"unknown intensity policy {text!r}; use one of: {choices}")


def _parse_pair(args: str, raw: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in args.split(","))
    except ValueError:
        raise InputError(f"cannot parse {raw!r}: expected two numbers separated by a comma") from None
    return a, b


def _preset_name(raw: str) -> str | None:
    for candidate in (raw, "ct-" + raw.removeprefix("ct:"), "ct-" + raw):
        if candidate in CT_WINDOWS:
            return candidate
    return None


# ---- whole-volume intensity ---------------------------------------------------------------------------------
def _sample(array: np.ndarray) -> np.ndarray:
    """Deterministic strided subsample (bounded size) for statistics on large volumes."""
    flat = np.asarray(array).reshape(-1)
    step = max(1, math.ceil(flat.size / _SAMPLE_VOXELS))
    return flat[::step]


def looks_like_ct(array: np.ndarray) -> bool:
    """Hounsfield units: integer-valued with air (<= -500) and dense tissue (>= 300) present."""
    if array.size == 0:
        return False
    sample = _sample(array)
    return bool(array.min() <= -500 and array.max() >= 300 and np.all(sample == np.round(sample)))


def resolve_policy(array: np.ndarray, policy: "IntensityPolicy | str") -> IntensityPolicy:
    """Replace ``auto`` by what it means for this data: soft-tissue window for CT, 0.5-99.5 percentiles otherwise."""
    policy = IntensityPolicy.parse(policy)
    if policy.kind != "auto":
        return policy
    if looks_like_ct(array):
        return IntensityPolicy.window(*CT_WINDOWS["ct-soft-tissue"])
    return IntensityPolicy("percentile", low_pct=policy.low_pct, high_pct=policy.high_pct)


def intensity_bounds(array: np.ndarray, policy: "IntensityPolicy | str") -> tuple[float, float]:
    """(low, high) raw values that map to 0 and 255 under ``policy`` for this whole array."""
    policy = resolve_policy(array, policy)
    if policy.kind == "window":
        half = policy.window_width / 2.0  # type: ignore[operator]
        return policy.window_center - half, policy.window_center + half  # type: ignore[operator]
    if policy.kind == "percentile":
        lo, hi = np.percentile(_sample(array), [policy.low_pct, policy.high_pct])
        return float(lo), float(hi)
    return float(np.min(array)), float(np.max(array))


def _rescale(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = np.asarray(array, dtype=np.float32) - np.float32(lo)
    if hi <= lo:
        return np.zeros_like(out)
    out *= np.float32(255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0, out=out)


def volume_to_display_range(
    array: np.ndarray, policy: "IntensityPolicy | str" = "auto", is_rgb: bool | None = None
) -> np.ndarray:
    """Whole volume -> float32 in [0, 255], one mapping for all slices.

    RGB arrays (``(..., 3)``; inferred for 4D arrays when ``is_rgb`` is None) get a min-max over all channels
    jointly, which keeps the colour balance (a per-channel stretch would tint the picture).
    """
    array = np.asarray(array)
    if array.size == 0:
        raise InputError("cannot normalise an empty image")
    rgb = array.ndim == 4 if is_rgb is None else is_rgb
    if rgb:
        return _rescale(array, float(array.min()), float(array.max()))
    return _rescale(array, *intensity_bounds(array, policy))


volume_to_uint8_range = volume_to_display_range  # name used in docs/ARCHITECTURE.md


# ---- slice <-> model space ------------------------------------------------------------------------------------
def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """segment-anything's ResizeLongestSide.get_preprocess_shape: scale the long side to ``long_side``."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass(frozen=True)
class SliceTransform:
    """Geometry of one slice's trip into the model: resize longest side to ``image_size``, pad bottom/right.

    ``low_res_size`` is the side of the decoder's low-res logits / mask prompt, 4 x the embedding grid:
    256 for SAM ViT (1024 input) and for LiteMedSAM (256 input, 64x64 embedding). None means
    ``image_size // 4`` (SAM's ratio); pass ``4 * model.embedding_size`` when the encoder stride is not 16.
    """

    original_hw: tuple[int, int]
    image_size: int
    low_res_size: int | None = None
    scale: float = field(init=False)
    resized_hw: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        h, w = (int(v) for v in self.original_hw)
        if h < 1 or w < 1 or self.image_size < 1:
            raise InputError(f"slice size must be positive, got {self.original_hw} for image size {self.image_size}")
        object.__setattr__(self, "original_hw", (h, w))
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "low_res_size", int(self.low_res_size or max(self.image_size // 4, 1)))
        object.__setattr__(self, "scale", self.image_size / max(h, w))
        rh, rw = preprocess_shape(h, w, self.image_size)
        object.__setattr__(self, "resized_hw", (max(rh, 1), max(rw, 1)))

    @classmethod
    def for_shape(cls, hw: Sequence[int], image_size: int, low_res_size: int | None = None) -> "SliceTransform":
        """Transform for a slice of shape ``hw`` (extra trailing dims, e.g. RGB, are ignored)."""
        return cls((int(hw[0]), int(hw[1])), int(image_size), low_res_size)

    @property
    def ratios_yx(self) -> tuple[float, float]:
        """Per-axis new/old size ratios, exactly as ResizeLongestSide.apply_coords uses them."""
        return self.resized_hw[0] / self.original_hw[0], self.resized_hw[1] / self.original_hw[1]

    def to_model_xy(self, rc: Any) -> np.ndarray:
        """(N, 2) slice (row, col) -> (N, 2) model (x, y); equals ``ResizeLongestSide.apply_coords`` on (col, row)."""
        rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
        ry, rx = self.ratios_yx
        return np.stack([rc[:, 1] * rx, rc[:, 0] * ry], axis=1)

    def box_rc_to_model(self, r0: float, c0: float, r1: float, c1: float) -> tuple[float, float, float, float]:
        """Box corners (rows/cols, as MedSAM passes bounding-box indices) -> model (x0, y0, x1, y1)."""
        (x0, y0), (x1, y1) = self.to_model_xy([[r0, c0], [r1, c1]])
        return float(x0), float(y0), float(x1), float(y1)

    box_to_model = box_rc_to_model  # name used in docs/ARCHITECTURE.md

    def logits_to_slice(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(B, K, L, L) low-res logits -> (B, K, H, W) on the slice: Sam.postprocess_masks (upsample to
        image_size, crop the padding, resize to the original size; bilinear, align_corners=False)."""
        x = F.interpolate(low_res_logits.float(), (self.image_size, self.image_size), mode="bilinear",
                          align_corners=False)
        x = x[..., : self.resized_hw[0], : self.resized_hw[1]]
        return F.interpolate(x, self.original_hw, mode="bilinear", align_corners=False)

    def mask_to_model_logits(self, mask2d: Any, low_res_size: int | None = None) -> torch.Tensor:
        """Binary (H, W) mask -> (1, 1, L, L) logits for the decoder's mask prompt.

        The mask is resized like the image, padded by edge replication (so ``logits_to_slice`` reproduces the
        border pixels instead of blurring them into the padding), area-averaged to L x L and mapped linearly to
        ``MASK_PROMPT_LOGIT * (2 p - 1)``: +8 inside, -8 outside, 0 on the boundary, so the sub-pixel boundary
        survives the bilinear round trip.
        """
        mask = torch.as_tensor(np.asarray(mask2d, dtype=np.float32))
        if tuple(mask.shape) != self.original_hw:
            raise InputError(f"mask shape {tuple(mask.shape)} does not match slice shape {self.original_hw}")
        x = resize_bilinear(mask[None, None], self.resized_hw).clamp_(0.0, 1.0)  # antialiasing may overshoot
        pad_h, pad_w = self.image_size - self.resized_hw[0], self.image_size - self.resized_hw[1]
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        size = int(low_res_size or self.low_res_size)  # type: ignore[arg-type]
        x = F.interpolate(x, (size, size), mode="area")
        return (x * 2.0 - 1.0) * MASK_PROMPT_LOGIT


def resize_bilinear(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) bilinear resize with antialiasing (area-like when shrinking); no-op when the size matches.

    torch's antialiased kernel returns garbage when input and output are both 1 pixel wide (a one-column slice),
    so that case is resized transposed, which gives the same result as the 2-column equivalent.
    """
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    if x.shape[-1] == 1 and hw[1] == 1:
        return resize_bilinear(x.transpose(-1, -2), (hw[1], hw[0])).transpose(-1, -2)
    return F.interpolate(x, hw, mode="bilinear", align_corners=False, antialias=True)


def _spec_args(image_size: Any, normalization: str | None) -> tuple[int, str, int | None]:
    """Accept either (image_size, normalization) or a model / spec object carrying both (and embedding_size)."""
    low_res = None
    if hasattr(image_size, "image_size"):
        normalization = normalization or getattr(image_size, "normalization", None)
        if getattr(image_size, "embedding_size", None):
            low_res = 4 * int(image_size.embedding_size)
        image_size = image_size.image_size
    if normalization not in ("minmax01", "sam_imagenet"):
        raise InputError(f"normalization must be 'minmax01' or 'sam_imagenet', got {normalization!r}")
    return int(image_size), normalization, low_res


def prepare_slice(
    plane: np.ndarray, image_size: "int | Any", normalization: "Normalization | None" = None
) -> tuple[torch.Tensor, SliceTransform]:
    """[0, 255] slice (H, W) or (H, W, 3) -> ((3, S, S) float32 model input, SliceTransform).

    Resize longest side to S (bilinear, antialiased), then normalise and pad bottom/right with 0:
    ``minmax01`` = per-image min-max to [0, 1] after the resize (LiteMedSAM's inference);
    ``sam_imagenet`` = (x - mean) / std on the 0-255 scale (segment-anything). Grey slices become 3 channels.
    ``image_size`` may also be a model spec with ``image_size``, ``normalization`` (and ``embedding_size``, which
    sets the transform's ``low_res_size``) attributes.
    """
    size, norm, low_res = _spec_args(image_size, normalization)
    arr = np.asarray(plane, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    elif arr.ndim == 2:
        x = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    else:
        raise InputError(f"a slice must be (H, W) or (H, W, 3), got {arr.shape}")
    transform = SliceTransform.for_shape(arr.shape, size, low_res)
    x = resize_bilinear(x, transform.resized_hw).expand(1, 3, *transform.resized_hw)
    if norm == "minmax01":
        x = (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8)
    else:
        mean = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
    pad_h, pad_w = size - transform.resized_hw[0], size - transform.resized_hw[1]
    x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
    return x[0].contiguous(), transform


def prepare_slices_batch(
    planes: Sequence[np.ndarray], image_size: "int | Any", normalization: "Normalization | None" = None
) -> tuple[torch.Tensor, list[SliceTransform]]:
    """Many slices -> ((B, 3, S, S), [SliceTransform]) for batched encoding (slices may differ in shape)."""
    if len(planes) == 0:
        raise InputError("no slices to prepare")
    prepared = [prepare_slice(p, image_size, normalization) for p in planes]
    return torch.stack([t for t, _ in prepared]), [tr for _, tr in prepared]
