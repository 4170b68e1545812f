"""What a training run writes for people to read: the fine-tuning ``report.md`` and the training-curve PNGs.

Figures use matplotlib's object API (``Figure`` + the Agg canvas ``savefig`` picks for PNG): no pyplot, no global
backend switch, so they are safe inside Slicer and in worker threads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..engine.atomic import atomic_path


def save_png(fig: Any, path: str | Path) -> Path:
    """Lay out and write a matplotlib ``Figure`` as PNG, atomically."""
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def finetune_report(trainer: Any, stopped_early: bool = False) -> str:
    """A fine-tuning run's ``report.md`` (a ``trainer.Trainer``): settings, data, parameter counts, history
    table, best epoch, timings."""
    cfg = trainer.config
    lines = [f"# Fine-tuning report: {cfg.model} / {cfg.recipe}", ""]
    best = trainer.best
    if best:
        lines.append(f"Best epoch **{best['epoch']}** by {best['by']} = {best['score']:.4f}; adapter "
                     f"`{trainer.adapter_path.name}` (+ `.json` model card).")
    if trainer.cached:
        embeddings = (f"cached (frozen encoder): {trainer.stats.get('cached_planes', 0)} planes, "
                      f"{trainer.stats['embedded_planes']} computed in {trainer.stats['embedding_seconds']:.1f} s")
    else:
        embeddings = "computed every step (trainable encoder)"
        if trainer.checkpointed_blocks:
            embeddings += f"; gradient checkpointing on {trainer.checkpointed_blocks} blocks"
    autocast = " (bf16 autocast)" if trainer.device.type == "cuda" and cfg.bf16 else ""
    lines += ["", f"Epochs finished: {trainer.epoch} of {cfg.epochs}" + (" (early stop)" if stopped_early else ""),
              "", f"Device: {trainer.device}{autocast}", "", f"Embeddings: {embeddings}", ""]
    lines += ["## Parameters", "", "```", str(trainer.parameter_report), "```", ""]
    lines += ["## Data", ""]
    for ds in trainer.data_description.get("datasets", []) or []:
        if "skipped" in ds:
            lines.append(f"- {ds['name']}: skipped ({ds['skipped']})")
            continue
        lines.append(f"- **{ds['name']}** ({ds.get('dimensionality', '')}) labels {ds.get('labels')}: "
                     f"{len(ds.get('train_cases', []))} training / {len(ds.get('val_cases', []))} validation "
                     f"cases")
    lines.append(f"- training planes: {trainer.train_data.foreground_count} foreground, "
                 f"{trainer.train_data.edge_count} edge; validation planes: {len(trainer.val_items)}")
    lines += ["", "## History", ""]
    cols = ["epoch", "loss", "seg_loss", "lr", "val_box", "val_clicks_1", "val_clicks_3", "val_clicks_5",
            "val_loss", "seconds_per_step"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    if trainer.baseline:
        start = "start adapter" if trainer.config.init_adapter else "base"
        cells = " | ".join(format_cell(trainer.baseline.get(c[4:])) for c in cols[4:9])
        lines.append(f"| 0 ({start}) | | | | {cells} | |")
    for h in trainer.history:
        lines.append("| " + " | ".join(format_cell(h.get(c)) for c in cols) + " |")
    lines += ["", "## Settings", "", "```json", json.dumps(cfg.to_dict(), indent=2, default=str), "```", "",
              "## Method notes", "",
              "- Loss: DiceCE (sigmoid, squared_pred) on the decoder's low-res logits against the label mapped "
              "to model space (area-averaged soft target); BCE only for empty targets; min over the three "
              "masks for single-click prompts; + MSE on the predicted IoU.",
              "- Prompts: mixture of tight / jittered boxes and 1..N clicks with SAM-style simulated corrective "
              f"clicks ({json.dumps(cfg.prompt.to_dict())}).",
              "- Validation: fixed held-out planes (per case and label the largest plane, then random ones); "
              "Dice with a tight box and after 1/3/5 clicks (centre, then largest error, previous logits fed "
              "back) - single-plane numbers, not the 3D propagation protocol of `medsam-adapter evaluate`.",
              "", "Files: `last.pt` (resume state), `best_adapter.safetensors` + `.json`, `history.json`, "
              "`training_curve.png`.", ""]
    return "\n".join(lines)


def format_cell(value: Any) -> str:
    """A history value for a markdown table: blank for None, 4 significant figures for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.4f}"
    return str(value)


def write_curve(history: Sequence[dict[str, Any]], path: str | Path, baseline: dict[str, Any] | None = None) -> Path:
    """Fine-tuning: training loss and validation box / click Dice vs epoch (epoch 0 = ``baseline``)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.6), dpi=110)
    ax_loss, ax_dice = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["loss"] for h in history], "o-", label="train (DiceCE + IoU MSE)")
    if all("seg_loss" in h for h in history):
        ax_loss.plot(epochs, [h["seg_loss"] for h in history], "^:", label="train DiceCE")
    if any("val_loss" in h for h in history):
        ax_loss.plot([h["epoch"] for h in history if "val_loss" in h],
                     [h["val_loss"] for h in history if "val_loss" in h], "s--", label="val DiceCE (box)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    for key, style in (("box", "o-"), ("clicks_1", "^-"), ("clicks_3", "v-"), ("clicks_5", "d-")):
        pts = [(h["epoch"], h[f"val_{key}"]) for h in history if h.get(f"val_{key}") is not None]
        if baseline and baseline.get(key) is not None:
            pts = [(0, baseline[key])] + pts
        if pts:
            ax_dice.plot(*zip(*pts), style, label=key)
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax_dice.lines:
        ax_dice.legend(loc="lower right")
    return save_png(fig, path)


def write_auto_curve(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Training loss and validation Dice per class (+ mean) vs epoch (matplotlib Agg), written atomically.

    (``write_curve`` plots the promptable box / click Dice keys only, hence this variant.)
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=110)
    ax_loss, ax_dice = fig.subplots(1, 2)
    ax_loss.plot([h["epoch"] for h in history], [h["loss"] for h in history], "o-", ms=3, label="train DiceCE")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_loss.legend()
    keys = sorted({k for h in history for k in h if k.startswith("val_dice_")}, key=lambda k: (k == "val_dice_mean", k))
    for key in keys:
        pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        if pts:
            ax_dice.plot(*zip(*pts), "s-" if key == "val_dice_mean" else "o-", ms=3,
                         lw=2 if key == "val_dice_mean" else 1, label=key[len("val_dice_"):])
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="validation Dice (3D, per case)", ylim=(0, 1))
    if ax_dice.lines:
        ax_dice.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)
