"""Evaluation runner: simulated prompts on an nnU-Net raw dataset, metrics per case, summary + report.

Protocols (slices are along array axis 0, i.e. planes of constant k):
- ``box``: per label, a tight box around the ground truth. 2D: on the image. 3D: on the slice with the largest
  GT area, then ``session.propagate`` through the volume; the label's result is the whole 3D mask.
- ``clicks``: per label, on the image (2D) or the largest-area slice (3D): a first click at the object centre,
  then up to four corrective clicks on the largest error, each call given all clicks so far plus the previous
  mask (``use_previous_mask``). Metrics after 1, 3 and 5 clicks (on that slice for 3D); Dice after
  every click for the Dice-vs-clicks curve.
- ``auto``: no prompts; ``model_name`` is an automatic model file (2D head, AutoProSAM or a distilled student,
  ``engine.auto.AutoSegmenter``); its label map is scored per class, every class on every case.

Multi-label datasets: each label is its own binary segment, prompted independently, and the per-label metrics
are those of that binary segment against ``gt == label`` (so one label's error never hides another's). A
composed label map (labels in increasing value; a later label overwrites an earlier one where they overlap) is
scored too, under ``composed``, for the whole image/volume domain (box, and clicks on 2D data).
Labels absent from a case's ground truth cannot be prompted (no box, no click): they are skipped for that case
and listed under ``absent_labels``, so they neither count as perfect nor as failures in the means.

Regions (``regions={"optic_disc": (1, 2), "optic_cup": (2,)}``, box and clicks): the structures prompted and
scored are unions of label values instead of single labels, as a user would segment them (the whole optic disc
rather than the rim ring; BraTS whole tumour / tumour core / enhancing). Regions may overlap, so no composed
label map is scored; overlays draw later regions over earlier ones.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..engine.focus import DEFAULT_FOCUS, FocusPolicy
from ..errors import InputError, PromptError
from . import metrics as M
from .auto_protocol import auto_session_factory, run_auto_case
from .clicks import first_click, largest_slice, next_click, tight_box
from .targets import Targets

PROTOCOLS = ("box", "clicks", "auto")
CLICK_LEVELS = (1, 3, 5)
MAX_CLICKS = max(CLICK_LEVELS)
SLICE_AXIS = 0
SUMMARY_FORMAT = "medsam-adapter-evaluation/1"
SessionFactory = Callable[[Any], Any]  # Volume -> object with the InteractiveSession API


def level_names(protocol: str) -> list[str]:
    """Keys of the metric sets each case gets: ``["box"]``, ``["auto"]`` or ``["clicks_1", "clicks_3", "clicks_5"]``."""
    _check_protocol(protocol)
    return [protocol] if protocol in ("box", "auto") else [f"clicks_{n}" for n in CLICK_LEVELS]


def evaluate_dataset(
    dataset_root: str | Path,
    protocol: str,
    model_name: str,
    adapter: str | Path | None = None,
    out_dir: str | Path | None = None,
    cases: Sequence[str] | None = None,
    max_cases: int | None = None,
    progress: bool = True,
    session_factory: SessionFactory | None = None,
    device: str = "cpu",
    intensity: Any = None,
    nsd_tolerance_mm: float = 2.0,
    save_predictions: bool = True,
    n_examples: int = 3,
    regions: Mapping[str, Sequence[int]] | None = None,
    cache_on_disk: bool = False,
    refine_boxes: str | None = None,
    turn_search: bool | None = None,
    names_as_text: bool = True,
    focus: FocusPolicy | None = DEFAULT_FOCUS,
) -> dict[str, Any]:
    """Run ``protocol`` on the dataset's cases; write ``summary.json`` (atomically), ``report.md`` and plots.

    ``out_dir`` defaults to ``runs/eval/<dataset>-<protocol>-<model>``. ``session_factory`` (volume -> session)
    replaces model loading, e.g. in tests. ``cache_on_disk``: read and write the embedding disk cache shared with
    sessions and training (a second evaluation of the same encoder on the same cases skips the encoder); by
    default embeddings live in memory for one case. ``regions``: score unions of labels instead of the labels (see the
    module docstring; ``data.nnunet.parse_regions`` reads ``NAME=A,B`` text). ``refine_boxes`` (``auto`` only):
    redraw the automatic result from boxes with the base model and this adapter (``default``, ``none`` or a file;
    ``engine/refine.py``). ``turn_search`` (``auto`` only): try the quarter turns of each plane (None: as the model
    card says; ``engine.auto.AutoSegmenter``). ``names_as_text``: each target's name goes with its prompts when the
    adapter knows it (``models/peft/text.py``; each case and the summary list the names used under
    ``text_prompts``). ``focus``: how corrective clicks zoom in on small objects (``engine/focus.py``; None: whole planes).
    Returns the summary
    dict (NaN where JSON has null).
    """
    from ..data.nnunet import open_dataset

    _check_protocol(protocol)
    if regions and protocol == "auto":
        raise InputError("regions apply to the box and clicks protocols; an automatic model predicts its classes")
    if (refine_boxes is not None or turn_search is not None) and protocol != "auto":
        raise InputError("box refinement and turn search apply to the auto protocol")
    if protocol == "auto":
        adapter_path = None
        session_factory = session_factory or auto_session_factory(model_name, device, cache_on_disk, refine_boxes,
                                                                 turn_search)
    elif session_factory is None:
        from ..models.loading import resolve_adapter

        adapter_path = resolve_adapter(model_name, adapter)  # records the shipped default when one is used
    else:
        adapter_path = _check_adapter(adapter)
    dataset = open_dataset(dataset_root)
    targets = (Targets({n: tuple(int(v) for v in vs) for n, vs in regions.items()}, regions=True) if regions
               else Targets.of_labels(dataset.labels))
    selected = _select_cases(dataset.cases, cases, max_cases)
    out = Path(out_dir) if out_dir is not None else \
        Path("runs") / "eval" / f"{dataset.name}-{protocol}-{Path(model_name).name.split('.')[0]}"
    factory = session_factory or default_session_factory(model_name, adapter_path, device, intensity, cache_on_disk,
                                                         names_as_text, focus)
    summary = _new_summary(dataset, protocol, model_name, adapter_path, nsd_tolerance_mm, len(selected), targets)
    if protocol == "auto":
        summary["box_refinement"] = refine_boxes
        summary["turn_search"] = "as the model card says" if turn_search is None else turn_search
    started = time.perf_counter()
    for case in _progress(selected, progress, f"{protocol} {dataset.name}"):
        record, prediction = evaluate_case(dataset, case, protocol, factory, nsd_tolerance_mm, targets)
        summary["focus"] = record["focus"]  # one factory: the same for every case
        summary["cases"].append(record)
        if save_predictions:
            _save_prediction(out / "predictions" / f"{case}.npz", prediction, record["overlay_index"])
        _finish_summary(summary, time.perf_counter() - started, complete=False)
        write_summary(summary, out / "summary.json")  # a crash keeps the cases done so far
    _finish_summary(summary, time.perf_counter() - started, complete=True)
    if save_predictions:
        summary["examples"] = _render_examples(dataset, summary, out, n_examples, targets)
    write_summary(summary, out / "summary.json")
    from .report import write_report

    write_report(summary, out)
    return summary


def default_session_factory(
    model_name: str, adapter: Path | None = None, device: str = "cpu", intensity: Any = None,
    cache_on_disk: bool = False, names_as_text: bool = True, focus: FocusPolicy | None = None,
) -> SessionFactory:
    """Load the model once; each case gets a fresh session with an embedding cache of its own (memory only) or,
    with ``cache_on_disk``, one shared disk-backed cache.

    The cache lets every label and every click on a slice reuse one encoder pass; it needs a frozen encoder
    (the session refuses to cache a trainable one), and nothing is trained here, so all weights are frozen.
    """
    from ..engine.cache import EmbeddingCache
    from ..engine.preprocessing import IntensityPolicy
    from ..engine.session import InteractiveSession
    from ..models.loading import NO_ADAPTER, open_model

    model = open_model(model_name, adapter=adapter or NO_ADAPTER, device=device)
    policy = IntensityPolicy.parse(intensity) if intensity is not None else None

    shared = EmbeddingCache() if cache_on_disk else None

    def factory(volume: Any) -> Any:
        return InteractiveSession(volume, model, cache=shared or EmbeddingCache(use_disk=False), intensity=policy,
                                  names_as_text=names_as_text, focus=focus)

    return factory


def evaluate_case(
    dataset: Any, case: str, protocol: str, session_factory: SessionFactory, nsd_tolerance_mm: float = 2.0,
    targets: Targets | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Prompt every target (default: every label) present in the case; returns (record for summary.json,
    predicted map of target codes)."""
    from ..data.nnunet import read_case

    t0 = time.perf_counter()
    image, label_map = read_case(dataset, case)
    gt = np.asarray(label_map)
    spacing = _metric_spacing(dataset, case, image, gt.shape)
    targets = targets or Targets.of_labels(dataset.labels)
    present = targets.present_in(gt)
    t1 = time.perf_counter()
    session = session_factory(image)
    try:
        if protocol == "auto":
            outcome = run_auto_case(session, gt, dataset.labels, spacing, nsd_tolerance_mm)
        elif protocol == "box":
            outcome = _run_box(session, gt, present, spacing, nsd_tolerance_mm)
        else:
            outcome = _run_clicks(session, gt, present, spacing, nsd_tolerance_mm)
        text_prompts = _text_prompts(session)
        focus = getattr(session, "focus", None)
    finally:
        _close(session)
    t2 = time.perf_counter()
    record = {
        "case": case,
        "text_prompts": text_prompts,
        "focus": None if focus is None else dataclasses.asdict(focus),
        "shape": list(gt.shape),
        "spacing": [float(s) for s in spacing],
        "absent_labels": [name for name in targets.values if name not in present.values],
        **outcome["record"],
        "seconds": {"read": t1 - t0, "segment_and_score": t2 - t1, "total": t2 - t0},
    }
    record["mean_dice"] = {
        level: M.nanmean(m["dice"] for m in per_label.values()) for level, per_label in record["metrics"].items()
    }
    return record, outcome["prediction"]


def _run_box(session: Any, gt: np.ndarray, present: Targets, spacing, tol: float) -> dict[str, Any]:
    from ..engine.prompts import SlicePrompts

    per_label: dict[str, M.Metrics] = {}
    slice_index: dict[str, int] = {}
    prediction = np.zeros(gt.shape, _label_dtype(present.labels))
    for name in present.values:
        target = present.mask(gt, name)
        index = largest_slice(target)
        box = _usable_box(tight_box(target[index]), target.shape[1:])
        segment = session.add_segment(name)
        result = session.segment_slice(segment, SLICE_AXIS, index, SlicePrompts(box_rc=box))
        if gt.shape[0] > 1 and np.asarray(result.mask).any():
            _propagate(session, segment, index)
        mask = np.asarray(session.segment_mask(segment), bool)
        per_label[name] = M.binary_metrics(mask, target, spacing, tol)
        slice_index[name] = index
        prediction[mask] = present.code(name)
    composed = None if present.regions else {"box": M.case_metrics(prediction, gt, present.labels, spacing, tol)}
    overlay = largest_slice(gt > 0) if present.values else 0
    record = {"slice_index": slice_index, "metrics": {"box": per_label}, "composed": composed,
              "overlay_index": overlay}
    return {"record": record, "prediction": prediction}


def _propagate(session: Any, segment: str, index: int) -> None:
    try:
        session.propagate(segment, SLICE_AXIS, index, direction="both")
    except PromptError:  # the start slice came back empty: the 3D result is that (empty) slice
        pass


def _run_clicks(session: Any, gt: np.ndarray, present: Targets, spacing, tol: float) -> dict[str, Any]:
    levels = level_names("clicks")
    per_level: dict[str, dict[str, M.Metrics]] = {level: {} for level in levels}
    dice_per_click: dict[str, list[float]] = {}
    slice_index: dict[str, int] = {}
    planes: dict[str, dict[int, np.ndarray]] = {}
    for name in present.values:
        target = present.mask(gt, name)
        index = largest_slice(target)
        masks = _click_sequence(session, name, index, target[index])
        dice_per_click[name] = [M.dice_score(m, target[index]) for m in masks]
        for n, level in zip(CLICK_LEVELS, levels):
            per_level[level][name] = M.binary_metrics(masks[n - 1][None], target[index][None], spacing, tol)
        slice_index[name], planes[name] = index, {n: masks[n - 1] for n in CLICK_LEVELS}
    prediction, composed = _compose_clicks(gt, present, planes, slice_index, spacing, tol)
    first = next(iter(slice_index.values()), 0)
    record = {"slice_index": slice_index, "metrics": per_level, "composed": composed,
              "dice_per_click": dice_per_click, "overlay_index": 0 if gt.shape[0] == 1 else first}
    return {"record": record, "prediction": prediction}


def _click_sequence(session: Any, name: str, index: int, target: np.ndarray) -> list[np.ndarray]:
    """Masks after 1..MAX_CLICKS clicks; once the mask is perfect the remaining entries repeat it."""
    from ..engine.prompts import SlicePrompts

    segment = session.add_segment(name)
    points: list[tuple[int, int]] = []
    labels: list[int] = []
    masks: list[np.ndarray] = []
    for n in range(MAX_CLICKS):
        click = (*first_click(target), True) if n == 0 else next_click(target, masks[-1])
        if click is None:
            masks.append(masks[-1])
            continue
        points.append((click[0], click[1]))
        labels.append(1 if click[2] else 0)
        prompts = SlicePrompts(np.asarray(points, np.float32), np.asarray(labels), None, use_previous_mask=True)
        masks.append(np.asarray(session.segment_slice(segment, SLICE_AXIS, index, prompts).mask, bool))
    return masks


def _compose_clicks(gt, present: Targets, planes, slice_index, spacing, tol) -> tuple[np.ndarray, dict | None]:
    """Map of the last click level; composed metrics only for labels on 2D data (3D labels use different slices,
    regions overlap)."""
    prediction = np.zeros(gt.shape, _label_dtype(present.labels))
    for name in present.values:
        prediction[slice_index[name]][planes[name][MAX_CLICKS]] = present.code(name)
    if gt.shape[0] != 1 or present.regions:
        return prediction, None
    composed = {}
    for n, level in zip(CLICK_LEVELS, level_names("clicks")):
        level_map = np.zeros(gt.shape, prediction.dtype)
        for name in present.values:
            level_map[0][planes[name][n]] = present.code(name)
        composed[level] = M.case_metrics(level_map, gt, present.labels, spacing, tol)
    return prediction, composed


def _usable_box(box: tuple[int, int, int, int], plane_shape: Sequence[int]) -> tuple[float, float, float, float]:
    """Widen a one-pixel-thin box to two pixels: prompts reject degenerate boxes, a user would draw wider."""
    r0, c0, r1, c1 = box
    if r1 == r0:
        r0, r1 = (r0, r1 + 1) if r1 + 1 < plane_shape[0] else (r0 - 1, r1)
    if c1 == c0:
        c0, c1 = (c0, c1 + 1) if c1 + 1 < plane_shape[1] else (c0 - 1, c1)
    return float(r0), float(c0), float(r1), float(c1)


# --- summary --------------------------------------------------------------------------------------------
def _new_summary(dataset, protocol: str, model_name: str, adapter: Path | None, tol: float, n: int,
                 targets: Targets) -> dict[str, Any]:
    notes = [
        "Per-label metrics are those of each label's own binary segment; 'composed' metrics score the label map "
        "in which later labels overwrite earlier ones.",
        "Labels absent from a case's ground truth are not prompted and are left out of that case's metrics.",
        "Means are NaN-aware; HD95 is NaN when exactly one of prediction and ground truth is empty.",
        "Overall = mean over labels of the per-label means (macro average).",
    ]
    if targets.regions:
        notes[0] = ("Regions: each region (a union of label values, under 'regions') is prompted and scored as one "
                    "binary segment; regions overlap, so no composed map is scored.")
    if protocol == "auto":
        notes[1] = ("Automatic protocol: no prompts; every class of the model is scored on every case, including "
                    "cases whose ground truth lacks it (empty prediction there = Dice 1, a false positive = 0).")
    if dataset.dimensionality == "2D" and dataset.metadata.get("pixel_spacing_mm") is None:
        notes.append("2D images without pixel spacing: HD95 is in pixels and the NSD tolerance in pixels.")
    return {
        "format": SUMMARY_FORMAT,
        "complete": False,
        "protocol": protocol,
        "levels": level_names(protocol),
        "click_levels": list(CLICK_LEVELS) if protocol == "clicks" else [],
        "model": model_name,
        "adapter": str(adapter) if adapter is not None else None,
        "dataset": {"name": dataset.name, "root": str(dataset.root), "dimensionality": dataset.dimensionality,
                    "labels": dict(dataset.labels)},
        "regions": {n: list(v) for n, v in targets.values.items()} if targets.regions else None,
        "slice_axis": SLICE_AXIS,
        "nsd_tolerance_mm": float(tol),
        "n_cases_requested": n,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "notes": notes,
        "warnings": [],
        "cases": [],
        "examples": [],
    }


def _finish_summary(summary: dict[str, Any], seconds: float, complete: bool) -> None:
    """(Re)compute every aggregate from the per-case records, so the summary is consistent at any point."""
    records = summary["cases"]
    summary["complete"] = complete
    summary["n_cases"] = len(records)
    if summary["protocol"] != "auto":
        summary["text_prompts"] = list(dict.fromkeys(n for r in records for n in r.get("text_prompts", [])))
    summary["per_label"], summary["overall"] = {}, {}
    summary["composed_per_label"], summary["composed_overall"] = {}, {}
    for level in summary["levels"]:
        per_label = _means_with_counts([r["metrics"].get(level, {}) for r in records])
        summary["per_label"][level], summary["overall"][level] = per_label, M.overall_mean(per_label)
        composed = [r["composed"][level] for r in records if r.get("composed")]
        if composed:
            per_label = _means_with_counts(composed)
            summary["composed_per_label"][level] = per_label
            summary["composed_overall"][level] = M.overall_mean(per_label)
    if summary["protocol"] == "clicks":
        summary["dice_vs_clicks"], summary["overall_dice_vs_clicks"] = _dice_curves(records)
    case_seconds = [r["seconds"]["total"] for r in records]
    summary["timing"] = {"total_seconds": seconds, "mean_case_seconds": M.nanmean(case_seconds),
                         "max_case_seconds": max(case_seconds, default=float("nan"))}


def _means_with_counts(per_case: list[Mapping[str, M.Metrics]]) -> dict[str, dict[str, float]]:
    means = M.mean_metrics(per_case)
    for label, values in means.items():
        values["n"] = sum(1 for case in per_case if label in case)
    return means


def _dice_curves(records: Iterable[Mapping[str, Any]]) -> tuple[dict[str, list[float]], list[float]]:
    collected: dict[str, list[list[float]]] = {}
    for record in records:
        for label, dices in record.get("dice_per_click", {}).items():
            collected.setdefault(label, []).append(dices)
    curves = {label: [M.nanmean(col) for col in zip(*rows)] for label, rows in collected.items()}
    overall = [M.nanmean(col) for col in zip(*curves.values())] if curves else []
    return curves, overall


def write_summary(summary: Mapping[str, Any], path: str | Path) -> None:
    """Atomic JSON write; NaN/inf become null so any JSON reader accepts the file."""
    from ..engine.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(to_jsonable(summary), indent=1, allow_nan=False) + "\n")


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    from .. import __version__

    versions = {"medsam_adapter": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in ("torch", "monai", "numpy", "scipy", "SimpleITK"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# --- examples, predictions, helpers ---------------------------------------------------------------------
def _save_prediction(path: Path, prediction: np.ndarray, index: int) -> None:
    from ..engine.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, prediction=prediction, overlay_index=np.int64(index))


def pick_examples(records: Sequence[Mapping[str, Any]], level: str, n: int = 3) -> list[tuple[str, Mapping]]:
    """Best, median and worst case by mean Dice at ``level`` (fewer when there are fewer cases)."""
    scored = sorted(
        (r for r in records if r.get("mean_dice", {}).get(level) is not None and math.isfinite(r["mean_dice"][level])),
        key=lambda r: (-r["mean_dice"][level], r["case"]),
    )
    if not scored or n <= 0:
        return []
    picks = [("best", scored[0]), ("median", scored[len(scored) // 2]), ("worst", scored[-1])][:n]
    unique: dict[str, tuple[str, Mapping]] = {}
    for rank, record in picks:
        unique.setdefault(record["case"], (rank, record))
    return list(unique.values())


def _render_examples(dataset, summary: dict[str, Any], out: Path, n: int, targets: Targets) -> list[dict[str, Any]]:
    """Overlay PNGs (prediction and ground truth) of the best / median / worst case; failures become warnings."""
    from ..data.nnunet import read_case

    examples = []
    for rank, record in pick_examples(summary["cases"], summary["levels"][-1], n):
        case = record["case"]
        try:
            from ..engine.volume import write_overlay_png

            image, label_map = read_case(dataset, case)
            with np.load(out / "predictions" / f"{case}.npz") as saved:
                prediction, index = saved["prediction"], int(saved["overlay_index"])
            files = {}
            for kind, labels in (("prediction", prediction), ("ground_truth", targets.coded_map(label_map))):
                relative = Path("examples") / f"{rank}_{case}_{kind}.png"
                write_overlay_png(image, labels, out / relative, axis=SLICE_AXIS, index=index)
                files[kind] = relative.as_posix()
        except Exception as exc:  # an optional picture must not cost the finished evaluation
            summary["warnings"].append(f"overlay of {case} failed: {type(exc).__name__}: {exc}")
            continue
        examples.append({"rank": rank, "case": case, "mean_dice": record["mean_dice"][summary["levels"][-1]],
                         "slice_index": index, "files": files})
    return examples


def _metric_spacing(dataset, case: str, image, shape: Sequence[int]) -> tuple[float, float, float]:
    """(i, j, k) spacing from the image; a 2D dataset's ``pixel_spacing_mm`` (e.g. HC18) overrides the file's."""
    spacing = tuple(float(s) for s in np.asarray(image.geometry.spacing).reshape(-1)[:3])
    pixel = dataset.pixel_spacing_mm(case)
    if pixel is not None and shape[0] == 1:
        spacing = (pixel, pixel, spacing[2])
    return spacing  # type: ignore[return-value]


def _select_cases(available: list[str], cases: Sequence[str] | None, max_cases: int | None) -> list[str]:
    selected = list(available) if cases is None else list(dict.fromkeys(cases))
    unknown = [c for c in selected if c not in available]
    if unknown:
        raise InputError(f"unknown case(s) {unknown[:5]}; the dataset has e.g. {available[:3]}")
    if max_cases is not None:
        if max_cases < 1:
            raise InputError(f"max_cases must be at least 1, got {max_cases}")
        selected = selected[:max_cases]
    if not selected:
        raise InputError("no cases selected")
    return selected


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def _check_adapter(adapter: str | Path | None) -> Path | None:
    if adapter is None:
        return None
    path = Path(adapter).expanduser()
    if not path.exists():
        raise InputError(f"adapter file {path} does not exist")
    return path


def _label_dtype(labels: Mapping[str, int]) -> type:
    return np.uint8 if max(labels.values(), default=0) < 256 else np.uint16


def _progress(items: list[str], enabled: bool, description: str) -> Iterable[str]:
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, unit="case")


def _text_prompts(session: Any) -> list[str]:
    """The segment names the session sent with the prompts as text (``InteractiveSession.text_prompt``)."""
    text_prompt = getattr(session, "text_prompt", None)
    if text_prompt is None:  # automatic sessions and stand-ins
        return []
    return [segment.name for segment_id, segment in session.segments.items() if text_prompt(segment_id)]


def _close(session: Any) -> None:
    close = getattr(session, "close", None)
    if callable(close):
        close()
