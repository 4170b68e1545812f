"""Per-label segmentation metrics (Dice, NSD, HD95), computed by MONAI so numbers match published tooling.

Conventions (MONAI leaves the empty cases to the caller):
- GT and prediction both empty -> dice 1, nsd 1, hd95 0 (nothing to find, nothing found).
- exactly one of them empty   -> dice 0, nsd 0, hd95 NaN (a distance to nothing is undefined).
- an infinite distance from MONAI becomes NaN; every mean here is NaN-aware (``nanmean``).

Index order: arrays are ``(k, j, i)`` and spacings ``(i, j, k)`` (see docs/ARCHITECTURE.md); MONAI wants the
spacing in array-axis order, so it is reversed here. A single-slice array (k == 1) is measured as a 2D image
with spacing ``(j, i)``, since a 3D surface of a one-voxel-thick slab would count the slab faces as boundary.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError

METRIC_NAMES = ("dice", "nsd", "hd95")
Metrics = dict[str, float]


def binary_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], nsd_tolerance_mm: float = 2.0
) -> Metrics:
    """Dice, NSD at ``nsd_tolerance_mm`` and HD95 (mm) of one binary mask against its ground truth."""
    pred_plane, gt_plane, monai_spacing = _to_monai_grid(np.asarray(pred) != 0, np.asarray(gt) != 0, spacing)
    pred_any, gt_any = bool(pred_plane.any()), bool(gt_plane.any())
    if not pred_any and not gt_any:
        return {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}
    if not pred_any or not gt_any:
        return {"dice": 0.0, "nsd": 0.0, "hd95": float("nan")}
    y_pred, y = _tensor(pred_plane), _tensor(gt_plane)
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    with warnings.catch_warnings():  # MONAI warns about empty masks, which cannot happen past the checks above
        warnings.simplefilter("ignore")
        dice = compute_dice(y_pred, y, include_background=True)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=monai_spacing)
        nsd = compute_surface_dice(
            y_pred, y, class_thresholds=[float(nsd_tolerance_mm)], include_background=True, spacing=monai_spacing
        )
    return {"dice": _finite(dice), "nsd": _finite(nsd), "hd95": _finite(hd95)}


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice alone (cheap: no surface distances), with the same empty-mask convention as ``binary_metrics``."""
    pred, gt = np.asarray(pred) != 0, np.asarray(gt) != 0
    if pred.shape != gt.shape:
        raise InputError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if not pred.any() or not gt.any():
        return 1.0 if pred.any() == gt.any() else 0.0
    from monai.metrics import compute_dice

    return _finite(compute_dice(_tensor(pred), _tensor(gt), include_background=True))


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    labels: Mapping[str, int],
    spacing: Sequence[float],
    nsd_tolerance_mm: float = 2.0,
) -> dict[str, Metrics]:
    """Per-label metrics of a predicted label map ``(k, j, i)`` against the ground-truth label map."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise InputError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    return {
        name: binary_metrics(pred == value, gt == value, spacing, nsd_tolerance_mm) for name, value in labels.items()
    }


def nanmean(values: Iterable[float]) -> float:
    """Mean ignoring NaN; NaN (without a RuntimeWarning) when nothing is left."""
    array = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    finite = array[~np.isnan(array)]
    return float(finite.mean()) if finite.size else float("nan")


def mean_metrics(per_case: Iterable[Mapping[str, Metrics]]) -> dict[str, Metrics]:
    """Per-label NaN-aware means over cases; a label missing from a case (absent in its GT) is skipped there."""
    collected: dict[str, dict[str, list[float]]] = {}
    for case in per_case:
        for label, metrics in case.items():
            bucket = collected.setdefault(label, {m: [] for m in METRIC_NAMES})
            for name in METRIC_NAMES:
                bucket[name].append(metrics.get(name, float("nan")))
    return {label: {m: nanmean(v) for m, v in bucket.items()} for label, bucket in collected.items()}


def overall_mean(per_label: Mapping[str, Metrics]) -> Metrics:
    """Macro average: the mean over labels of the per-label means, so small structures weigh as much as big ones."""
    return {m: nanmean(metrics.get(m, float("nan")) for metrics in per_label.values()) for m in METRIC_NAMES}


def _to_monai_grid(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Drop a singleton slice axis and reorder the (i, j, k) spacing to array-axis order for MONAI."""
    if pred.shape != gt.shape:
        raise InputError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) not in (2, 3) or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(f"spacing must be 2 or 3 positive numbers in (i, j, k) order, got {spacing}")
    if pred.ndim == 3 and pred.shape[0] == 1:
        pred, gt = pred[0], gt[0]
    if pred.ndim == 2:
        return pred, gt, (spacing[1], spacing[0])
    if pred.ndim == 3 and len(spacing) == 3:
        return pred, gt, spacing[::-1]
    raise InputError(
        f"need a (k, j, i) or (j, i) array with a matching spacing, got shape {pred.shape}, spacing {spacing}"
    )


def _tensor(mask: np.ndarray) -> torch.Tensor:
    """MONAI's (batch, channel, *spatial) float layout for one binary mask."""
    return torch.from_numpy(mask.reshape(1, 1, *mask.shape).astype(np.float32))


def _finite(value: torch.Tensor) -> float:
    number = float(value.reshape(-1)[0])
    return number if np.isfinite(number) else float("nan")
