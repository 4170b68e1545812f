"""Markdown report and plots from an evaluation summary (the dict in ``summary.json``).

Separate from the runner so a report can be rebuilt, restyled or compared without re-running a model:
``rebuild_report("runs/eval/.../summary.json")``. Plots use matplotlib's object API (``Figure``, Agg canvas),
never pyplot, so no global backend is switched inside a host application such as 3D Slicer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError

DICE_PLOT = "dice_per_label.png"
CLICKS_PLOT = "dice_vs_clicks.png"
MAX_CASE_ROWS = 500


def load_summary(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"summary file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(summary, dict) or "levels" not in summary or "cases" not in summary:
        raise InputError(f"{path} is not an evaluation summary (no 'levels' / 'cases')")
    return summary


def rebuild_report(summary_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Re-render report.md and plots from a summary.json (next to it unless ``out_dir`` is given)."""
    summary_path = Path(summary_path)
    return write_report(load_summary(summary_path), out_dir if out_dir is not None else summary_path.parent)


def write_report(summary: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.md`` plus its PNG plots into ``out_dir``; returns the report path."""
    from ..engine.atomic import write_text_atomic

    out = Path(out_dir)
    plots: dict[str, str] = {}
    if summary.get("cases"):
        plot_dice_per_label(summary, out / DICE_PLOT)
        plots["dice"] = DICE_PLOT
        if summary.get("protocol") == "clicks" and summary.get("dice_vs_clicks"):
            plot_dice_vs_clicks(summary, out / CLICKS_PLOT)
            plots["clicks"] = CLICKS_PLOT
    report = out / "report.md"
    write_text_atomic(report, render_markdown(summary, plots))
    return report


# --- markdown -------------------------------------------------------------------------------------------
def render_markdown(summary: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    plots = plots or {}
    dataset = summary.get("dataset", {})
    what = "automatic (no prompts)" if summary.get("protocol") == "auto" else f"`{summary.get('protocol')}` prompts"
    title = f"{what}, {dataset.get('name')}, model `{summary.get('model')}`"
    lines = [f"# Evaluation: {title}", ""]
    if summary.get("regions"):
        lines += ["Scored regions (unions of label values): " + ", ".join(
            f"{name} = {{{', '.join(str(v) for v in values)}}}" for name, values in summary["regions"].items()), ""]
    if not summary.get("complete", True):
        lines += ["> **Incomplete run**: these numbers cover only the cases finished so far.", ""]
    lines += _run_table(summary) + [""]
    for level in summary.get("levels", []):
        lines += _level_section(summary, level)
    if summary.get("dice_vs_clicks"):
        lines += _clicks_section(summary, plots.get("clicks"))
    if plots.get("dice"):
        lines += ["## Dice per label", "", f"![Dice per label]({plots['dice']})", ""]
    lines += _examples_section(summary.get("examples", []))
    lines += _cases_section(summary)
    lines += _bullets("Notes", summary.get("notes", [])) + _bullets("Warnings", summary.get("warnings", []))
    versions = summary.get("versions", {})
    if versions:
        lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def _run_table(summary: Mapping[str, Any]) -> list[str]:
    dataset, timing = summary.get("dataset", {}), summary.get("timing", {})
    rows = [
        ("dataset", f"{dataset.get('name')} ({dataset.get('dimensionality')}, `{dataset.get('root')}`)"),
        ("model", f"`{summary.get('model')}`"),
        ("adapter", f"`{summary['adapter']}`" if summary.get("adapter") else "none"),
        ("protocol", f"{summary.get('protocol')} (levels: {', '.join(summary.get('levels', []))})"),
        ("cases", str(summary.get("n_cases", len(summary.get("cases", []))))),
        ("NSD tolerance", f"{_fmt(summary.get('nsd_tolerance_mm'), 1)} mm"),
        ("date", str(summary.get("date"))),
        ("time", f"{_fmt(timing.get('total_seconds'), 1)} s total, "
                 f"{_fmt(timing.get('mean_case_seconds'), 2)} s per case"),
    ]
    if summary.get("protocol") == "auto":
        rows += _auto_rows(summary)
    elif "text_prompts" in summary:
        rows.append(("text prompts", ", ".join(summary["text_prompts"]) or "none (names unknown to the adapter, "
                                                                           "or --no-names)"))
    if summary.get("protocol") in ("clicks", "box") and "focus" in summary:
        focus = summary["focus"]
        rows.append(("zoom on small objects", "off" if focus is None else
                     ", ".join(f"{k} {v:g}" for k, v in focus.items())))
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _auto_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Box refinement and turn search of an ``auto`` run: which, and how many cases were seen turned."""
    turns = [c.get("quarter_turns") for c in summary.get("cases", []) if c.get("quarter_turns") is not None]
    searched = f"{summary.get('turn_search', 'as the model card says')}"
    if turns:
        searched += f" ({sum(1 for t in turns if t)} of {len(turns)} cases seen turned)"
    return [("box refinement", str(summary.get("box_refinement") or "none")), ("turn search", searched)]


def _level_section(summary: Mapping[str, Any], level: str) -> list[str]:
    lines = [f"## Results: {_level_title(level)}", "", _metric_header(), _metric_rule()]
    per_label = summary.get("per_label", {}).get(level, {})
    for label, values in per_label.items():
        dices = [_case_value(r, level, label, "dice") for r in summary.get("cases", [])]
        lines.append(_metric_row(label, values, [d for d in dices if not math.isnan(d)]))
    overall = summary.get("overall", {}).get(level, {})
    lines.append(_metric_row("**overall** (mean of labels)", overall, None))
    composed = summary.get("composed_overall", {}).get(level)
    if composed:
        lines += ["", f"Composed label map (later labels overwrite earlier ones): Dice {_fmt(composed.get('dice'))}, "
                  f"NSD {_fmt(composed.get('nsd'))}, HD95 {_fmt(composed.get('hd95'), 2)}"]
    return lines + [""]


def _metric_header() -> str:
    return "| label | n | Dice mean | Dice sd | Dice median | NSD mean | HD95 mean (mm) |"


def _metric_rule() -> str:
    return "|---|---:|---:|---:|---:|---:|---:|"


def _metric_row(label: str, values: Mapping[str, Any], dices: Sequence[float] | None) -> str:
    sd = _fmt(float(np.std(dices)) if dices else None)
    median = _fmt(float(np.median(dices)) if dices else None)
    n = values.get("n", "")
    if dices is None:
        sd = median = n = ""
    return (f"| {label} | {n} | {_fmt(values.get('dice'))} | {sd} | {median} | {_fmt(values.get('nsd'))} | "
            f"{_fmt(values.get('hd95'), 2)} |")


def _clicks_section(summary: Mapping[str, Any], plot: str | None) -> list[str]:
    curves: Mapping[str, Sequence[Any]] = summary["dice_vs_clicks"]
    count = max(len(c) for c in curves.values())
    lines = ["## Mean Dice vs number of clicks", "", "| label | " + " | ".join(str(n + 1) for n in range(count)) + " |",
             "|---|" + "---:|" * count]
    rows = list(curves.items()) + [("**overall**", summary.get("overall_dice_vs_clicks", []))]
    lines += [f"| {label} | " + " | ".join(_fmt(v) for v in values) + " |" for label, values in rows]
    return lines + ([""] + [f"![Dice vs clicks]({plot})"] if plot else []) + [""]


def _examples_section(examples: Sequence[Mapping[str, Any]]) -> list[str]:
    if not examples:
        return []
    lines = ["## Examples (best, median, worst case by mean Dice)", ""]
    for example in examples:
        files = example.get("files", {})
        lines.append(f"**{example['rank']}**: `{example['case']}`, mean Dice {_fmt(example.get('mean_dice'))}, "
                     f"slice {example.get('slice_index')}")
        lines.append("")
        lines.append(" ".join(f"![{kind}]({path})" for kind, path in files.items()))
        lines.append("")
    return lines


def _cases_section(summary: Mapping[str, Any]) -> list[str]:
    levels = summary.get("levels", [])
    cases = summary.get("cases", [])
    header = " | ".join(f"Dice {_level_title(lv)}" for lv in levels)
    lines = ["## Per case", "", f"| case | {header} | seconds | absent labels |",
             "|---|" + "---:|" * (len(levels) + 1) + "---|"]
    for record in cases[:MAX_CASE_ROWS]:
        dices = " | ".join(_fmt(record.get("mean_dice", {}).get(lv)) for lv in levels)
        absent = ", ".join(record.get("absent_labels", [])) or "-"
        lines.append(f"| {record['case']} | {dices} | {_fmt(record.get('seconds', {}).get('total'), 2)} | {absent} |")
    if len(cases) > MAX_CASE_ROWS:
        lines.append(f"| ... {len(cases) - MAX_CASE_ROWS} more in summary.json | |")
    return lines + [""]


def _bullets(title: str, items: Sequence[str]) -> list[str]:
    return [f"## {title}", ""] + [f"- {item}" for item in items] + [""] if items else []


# --- plots ----------------------------------------------------------------------------------------------
def plot_dice_per_label(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Per-label Dice over cases: a horizontal box plot with the individual cases as jittered dots."""
    levels = list(summary.get("levels", []))
    labels = list(summary.get("regions") or summary.get("dataset", {}).get("labels", {})) or sorted(
        {lb for r in summary["cases"] for lv in levels for lb in r["metrics"].get(lv, {})})
    fig = _figure(width=3.2 * max(len(levels), 1) + 1.8, height=0.38 * max(len(labels), 1) + 1.4)
    axes = fig.subplots(1, max(len(levels), 1), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, level in zip(axes, levels):
        data = [_finite_values(_case_value(r, level, lb, "dice") for r in summary["cases"]) for lb in labels]
        positions = np.arange(len(labels))
        filled = [i for i, d in enumerate(data) if d]
        if filled:
            ax.boxplot([data[i] for i in filled], positions=positions[filled], widths=0.6, showfliers=False,
                       medianprops={"color": "tab:red"}, **_horizontal())
        for i in filled:
            ax.scatter(data[i], i + rng.uniform(-0.18, 0.18, len(data[i])), s=9, alpha=0.6, color="tab:blue", zorder=3)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("Dice")
        ax.set_title(_level_title(level), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(np.arange(len(labels)), labels)
    axes[0].invert_yaxis()
    fig.suptitle(f"{summary.get('dataset', {}).get('name')} - {summary.get('model')}", fontsize=10)
    return _save(fig, path)


def plot_dice_vs_clicks(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Mean Dice after each click, one line per label plus the overall mean."""
    fig = _figure(width=6.0, height=4.0)
    ax = fig.subplots()
    curves: Mapping[str, Sequence[Any]] = summary["dice_vs_clicks"]
    for label, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), [_num(v) for v in values], marker="o", lw=1, alpha=0.7, label=label)
    overall = [_num(v) for v in summary.get("overall_dice_vs_clicks", [])]
    if overall:
        ax.plot(np.arange(1, len(overall) + 1), overall, color="black", lw=2.5, marker="s", label="overall")
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(np.arange(1, max((len(v) for v in curves.values()), default=1) + 1))
    ax.grid(alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{summary.get('dataset', {}).get('name')} - {summary.get('model')}", fontsize=10)
    return _save(fig, path)


def _horizontal() -> dict[str, Any]:
    """matplotlib >= 3.10 spells horizontal box plots ``orientation=``; older ones (e.g. in Slicer) ``vert=``."""
    import matplotlib

    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    from ..engine.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# --- helpers --------------------------------------------------------------------------------------------
def _case_value(record: Mapping[str, Any], level: str, label: str, metric: str) -> float:
    return _num(record.get("metrics", {}).get(level, {}).get(label, {}).get(metric))


def _finite_values(values) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _level_title(level: str) -> str:
    if level.startswith("clicks_"):
        n = level.split("_", 1)[1]
        return f"{n} click" + ("" if n == "1" else "s")
    return level
