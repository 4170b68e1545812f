"""Focus (zoom-in) on small objects: boxes and corrective clicks answered on a window around the object.

A model answers on a fixed grid: LiteMedSAM sees a plane at 256 px and returns 64 x 64 logits, so a 36-px
prostate on a 384-px MR slice is about 6 x 6 answer cells, and a rib on a 512-px CT slice is one or two. Where
the object's extent is known - a box, or the mask the first click produced - the prediction can be made on a
square window around it, resized to the model input (the zoom-in of RITM and FocalClick), and pasted back.
A box is answered on the whole plane first and redone on its window only when that answer is empty or leaks out
of the box: magnified, objects the model already gets right often lose. A window costs one encoder pass; for
corrective clicks it is kept while the object stays well inside it and does not shrink much, so a run of clicks
on one object reuses one embedding. The first click has no extent, so it is answered on the whole plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .prompts import SlicePrompts


TRAINING_MARGINS = (0.25, 0.4, 0.7)  # around the session's default margin: inference windows vary with the mask
# Training windows (``finetune --prompts ...,focus=F``) magnify any object under 2/3 of the plane, up to 4x - as v4
# was trained - so the adapter sees the magnified view of mid-sized objects too, not only inference's small ones.
TRAINING_ZOOM = {"min_zoom": 1.5, "max_zoom": 4.0}
KEPT_WINDOW_MAX_RATIO = 1.5  # a window is kept for the next click while at most this much larger than a fresh one


@dataclass(frozen=True)
class Window:
    """Rows ``r0:r1`` and columns ``c0:c1`` (end exclusive) of a plane."""

    r0: int
    c0: int
    r1: int
    c1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.r0, self.r1), slice(self.c0, self.c1)

    @property
    def id(self) -> str:
        return f"{self.r0},{self.c0},{self.r1},{self.c1}"

    @property
    def shape(self) -> tuple[int, int]:
        return self.r1 - self.r0, self.c1 - self.c0

    def contains(self, r0: float, c0: float, r1: float, c1: float) -> bool:
        return self.r0 <= r0 and self.c0 <= c0 and r1 < self.r1 and c1 < self.c1

    def crop_prompts(self, prompts: SlicePrompts) -> SlicePrompts:
        """Clicks, box and the mask-prompt flag in window coordinates."""
        points = np.asarray(prompts.points_rc, np.float32) - np.array([self.r0, self.c0], np.float32)
        box = None
        if prompts.box_rc is not None:
            r0, c0, r1, c1 = prompts.box_rc
            box = (r0 - self.r0, c0 - self.c0, r1 - self.r0, c1 - self.c0)
        return SlicePrompts(points, prompts.point_labels, box, prompts.use_previous_mask)

    def paste(self, plane: np.ndarray, window_mask: np.ndarray) -> np.ndarray:
        """``plane`` with the window's pixels replaced by ``window_mask`` (a copy)."""
        out = np.array(plane, copy=True)
        out[self.slices] = window_mask
        return out


@dataclass(frozen=True)
class FocusPolicy:
    """When and how far to zoom.

    ``margin``: context on each side of the object, as a fraction of its larger side (the model needs to see
    what surrounds an object to find its border). ``min_zoom``: corrective clicks zoom only when the object with
    its margins is at most 1 / ``min_zoom`` of the plane's larger side; ``box_min_zoom``: the same for boxes.
    ``max_zoom``: never magnify more (a handful of pixels blown up to 256 shows the model texture it was never
    trained on). ``max_spill``: a box is first answered on the whole plane, and that answer is kept unless more
    than this fraction of it lies outside the box (or it is empty). Magnified, objects the model already gets
    right often lose (it picks an inner structure), while an answer that leaks out of a tight box has lost the
    object; clicks have no such check, hence their stricter size limit (README "Zoom in on small objects").
    """

    margin: float = 0.5
    min_zoom: float = 5.0
    max_zoom: float = 8.0
    box_min_zoom: float = 2.5
    max_spill: float = 0.1

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise InputError(f"focus margin must be >= 0, got {self.margin}")
        for name in ("min_zoom", "box_min_zoom"):
            if not 1.0 <= getattr(self, name) <= self.max_zoom:
                raise InputError(f"focus zoom limits need 1 <= {name} <= max_zoom, got {getattr(self, name)}, "
                                 f"{self.max_zoom}")
        if not 0.0 <= self.max_spill <= 1.0:
            raise InputError(f"focus max_spill must be in [0, 1], got {self.max_spill}")

    @classmethod
    def parse(cls, text: str | None) -> "FocusPolicy | None":
        """``on`` (the defaults), ``off`` (None) or ``margin=0.4,min_zoom=1.5,max_zoom=4`` (any subset); None gives
        ``DEFAULT_FOCUS``, what every shell uses unless told otherwise."""
        if text is None:
            return DEFAULT_FOCUS
        text = text.strip().lower()
        if text in ("off", "none", "no"):
            return None
        if text in ("on", "default", "yes"):
            return cls()
        values: dict[str, float] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in cls.__dataclass_fields__:
                raise InputError(f"focus: expected on, off or {', '.join(f'{k}=X' for k in cls.__dataclass_fields__)}"
                                 f", got {item!r}")
            try:
                values[key] = float(value)
            except ValueError:
                raise InputError(f"focus: {key} must be a number, got {value!r}") from None
        return cls(**values)

    def window(self, mask: np.ndarray, points_rc: np.ndarray, previous: Window | None = None) -> Window | None:
        """The window for the next prediction, or None to use the whole plane.

        The object's extent is the mask plus every click (a positive click outside the mask is part of the
        object the user wants; a negative click must be seen to be obeyed). ``previous`` is reused while the
        extent, with half the margin, still fits in it and it has not become much too large for the object.
        """
        extent = _extent(mask, points_rc)
        return None if extent is None else self._fit(extent, mask.shape, self.min_zoom, previous)

    def box_window(self, box_rc: tuple[float, float, float, float], points_rc: np.ndarray,
                   plane_shape: tuple[int, int]) -> Window | None:
        """The window for a box prompt (the box and any clicks given with it), or None to use the whole plane."""
        r0, c0, r1, c1 = box_rc
        corners = np.array([[r0, c0], [r1, c1]], np.float64)
        extent = _extent(np.zeros((0, 0), bool), np.concatenate([corners, np.asarray(points_rc).reshape(-1, 2)]))
        return self._fit(extent, plane_shape, self.box_min_zoom, None)  # type: ignore[arg-type]

    def doubts_box_answer(self, mask: np.ndarray, box_rc: tuple[float, float, float, float]) -> bool:
        """True when a box's whole-plane answer is empty or spills out of the box by more than ``max_spill``."""
        area = int(np.count_nonzero(mask))
        if area == 0:
            return True
        r0, c0, r1, c1 = (int(round(v)) for v in box_rc)
        inside = int(np.count_nonzero(mask[max(r0, 0) : r1 + 1, max(c0, 0) : c1 + 1]))
        return (area - inside) / area > self.max_spill

    def _fit(self, extent: tuple[float, float, float, float], plane_shape: tuple[int, int], min_zoom: float,
             previous: Window | None) -> Window | None:
        height, width = plane_shape
        r0, c0, r1, c1 = extent
        side_needed = max(r1 - r0 + 1, c1 - c0 + 1)
        side = max(side_needed * (1.0 + 2.0 * self.margin), max(height, width) / self.max_zoom)
        if max(height, width) / side < min_zoom:
            return None
        half_margin = self.margin * side_needed / 2.0
        if previous is not None and previous.contains(r0 - half_margin, c0 - half_margin, r1 + half_margin,
                                                      c1 + half_margin) and \
                max(previous.shape) <= KEPT_WINDOW_MAX_RATIO * side:
            return previous
        side_px = int(np.ceil(side))
        return _square(r0, c0, r1, c1, side_px, height, width)


def _extent(mask: np.ndarray, points_rc: np.ndarray) -> tuple[float, float, float, float] | None:
    rows, cols = np.nonzero(mask)
    points = np.asarray(points_rc, np.float64).reshape(-1, 2)
    all_rows = np.concatenate([rows.astype(np.float64), points[:, 0]])
    all_cols = np.concatenate([cols.astype(np.float64), points[:, 1]])
    if all_rows.size == 0:
        return None
    return all_rows.min(), all_cols.min(), all_rows.max(), all_cols.max()


def _square(r0: float, c0: float, r1: float, c1: float, side: int, height: int, width: int) -> Window:
    """A ``side`` x ``side`` window centred on the extent, moved (not shrunk) to lie inside the plane."""
    top, bottom = _placed((r0 + r1) / 2.0, side, height)
    left, right = _placed((c0 + c1) / 2.0, side, width)
    return Window(top, left, bottom, right)


def _placed(center: float, side: int, size: int) -> tuple[int, int]:
    side = min(side, size)
    start = int(round(center - side / 2.0))
    start = min(max(start, 0), size - side)
    return start, start + side


# On by default: boxes whose whole-slice answer leaks out of the box, on objects under a fifth of the slice, and
# corrective clicks on such objects (README "Zoom in on small objects").
DEFAULT_FOCUS: FocusPolicy | None = FocusPolicy()
