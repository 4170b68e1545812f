"""``medsam-adapter finetune``: PEFT fine-tuning on nnU-Net raw folders, with a rich progress display.

Wiring (in ``MedSAMAdapterLib/cli.py``)::

    from .training.cli_finetune import add_finetune_parser
    add_finetune_parser(commands)          # sets handler=run_finetune

``run_finetune`` raises ``MedSAMAdapterError`` for problems the user can fix (the CLI's ``main`` prints them and
exits with 2) and returns 0 on success.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from .config import AUTOSAM_RECIPES




def route_autosam_recipes(argv: Sequence[str]) -> list[str]:
    """``finetune DATASET --recipe autosam-vit|autosam-cnn|autosam-linear ...`` is ``train-auto DATASET --head
    vit|cnn|linear ...``: the same prompt-free head trainer, with all of train-auto's options."""
    out = list(argv)
    if not out or out[0] != "finetune":
        return out
    for i, arg in enumerate(out):
        recipe = out[i + 1] if arg == "--recipe" and i + 1 < len(out) else arg.partition("=")[2]
        if (arg == "--recipe" or arg.startswith("--recipe=")) and recipe in AUTOSAM_RECIPES:
            out[i: i + (2 if arg == "--recipe" else 1)] = ["--head", AUTOSAM_RECIPES[recipe]]
            return ["train-auto", *out[1:]]
    return out


def add_finetune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    from .config import RECIPES, SELECT_METRICS

    p = subparsers.add_parser(
        "finetune", help="fine-tune a model (PEFT adapter) on nnU-Net raw dataset folders",
        description="Fine-tune with a parameter-efficient recipe on one or more nnU-Net raw folders (2D PNG or 3D "
                    "NIfTI; 3D volumes are trained on axial planes). Writes <out>/best_adapter.safetensors + .json "
                    "(model card), last.pt (resume state), report.md, training_curve.png, history.json.")
    p.add_argument("datasets", nargs="+", type=Path, metavar="DATASET_DIR", help="nnU-Net raw dataset folder(s)")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("--recipe", choices=(*RECIPES, *AUTOSAM_RECIPES), default="decoder",
                   help="decoder: decoder adapters + HyP-Adpt on cached embeddings (fast on CPU); medsa: Med-SA "
                        "encoder adapters + decoder; medsa-3d: + SD-Trans depth adapters (3D data); lora: encoder "
                        "LoRA + decoder; autosam-vit|autosam-cnn|autosam-linear: a prompt-free AutoSAM head, run "
                        "as `train-auto --head vit|cnn|linear` (see its --help) (default: %(default)s)")
    p.add_argument("--model", default="litemedsam", help="base model from `medsam-adapter info` (default: %(default)s)")
    p.add_argument("--weights", type=Path, help="explicit base weights file")
    p.add_argument("--init-adapter", metavar="FILE|default",
                   help="start from this adapter (`default`: the model's shipped click adapter) instead of a fresh "
                        "one; --recipe decides what trains (decoder: its decoder side, on cached embeddings)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4, help="planes per step (SD-Trans chunks for medsa-3d)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate, 1e-4..5e-4 usual (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--labels", action="append", default=[], metavar="NAME|VALUE[,...]",
                   help="train only these labels (names or values; comma-separated or repeated); default all")
    p.add_argument("--region", action="append", default=[], metavar="NAME=LABEL[,LABEL...]",
                   help="train on a union of labels instead of the labels (repeatable; as `evaluate --region`), "
                        "e.g. --region optic_disc=1,2 --region optic_cup=2")
    add_split_options(p)
    p.add_argument("--val-slices", type=int, default=32, help="validation planes (fixed subset; default: 32)")
    p.add_argument("--patience", type=int, default=5, help="early stop after N epochs without improvement (0: off)")
    p.add_argument("--select-metric", choices=SELECT_METRICS, default="mean",
                   help="validation Dice that picks the best epoch (default: mean of box and 1/3/5 clicks)")
    p.add_argument("--max-cases", type=int, help="use at most N cases per dataset (seeded random subset)")
    p.add_argument("--foreground-fraction", type=float, default=0.8, metavar="F",
                   help="3D data: share of samples on planes with the object; the rest are 'nothing here' planes "
                        "just past its ends, prompted from the neighbour (what propagation asks). Use 1.0 for "
                        "few-shot runs: with one patient the edge samples teach the decoder to stop propagation "
                        "early (default: %(default)s)")
    p.add_argument("--prompts", default=None, metavar="SPEC",
                   help="prompt mixture, e.g. 'box=0.5,clicks=5,jitter=0.1,tight=0.25,center=0.5'; text=0.5 also "
                        "sends each target's label / region name with half the prompts and teaches the adapter "
                        "those names as text prompts; focus=0.5 shows half the samples through a zoomed window "
                        "around the target, as the session's zoom on small objects does (one more encoder pass per "
                        "window, cached)")
    p.add_argument("--depth-chunk", type=int, default=4, help="planes per SD-Trans chunk (medsa-3d; default: 4)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute encoder blocks in the backward pass (encoder recipes; saves GPU memory)")
    p.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on CUDA")
    add_runtime_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--overwrite", action="store_true", help="start over in a RUN_DIR that has a last.pt")
    p.set_defaults(handler=run_finetune)
    return p


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """Embedding cache, intensity policy, device and threads: the same for every trainer."""
    p.add_argument("--no-cache", action="store_true", help="keep cached embeddings in memory only (no disk cache)")
    p.add_argument("--cache-dir", type=Path, help="embedding cache folder (default: the user cache)")
    p.add_argument("--intensity", default="auto",
                   help="auto, minmax, percentile[:lo,hi], window:center,width or a CT preset (default: auto)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def add_split_options(p: argparse.ArgumentParser) -> None:
    """How cases are split into training and validation (``splits.choose_split``); shared by the trainers."""
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out fraction of patients (default: 0.2)")
    p.add_argument("--train-cases", action="append", default=[], metavar="CASE|PATIENT[,...]",
                   help="train only on these cases or patients (e.g. patient002 = both ACDC frames)")
    p.add_argument("--val-cases", action="append", default=[], metavar="CASE|PATIENT[,...]",
                   help="validate on these cases or patients (instead of the random split)")
    p.add_argument("--max-train-patients", type=int, metavar="N",
                   help="few-shot: keep N training patients (seeded choice; frames of a patient stay together)")
    p.add_argument("--val-patients", type=int, metavar="N", help="hold out N patients (instead of --val-fraction)")


def split_options(args: argparse.Namespace) -> Any:
    """The ``splits.SplitOptions`` of parsed ``add_split_options`` flags (+ ``--seed``)."""
    from .splits import SplitOptions

    return SplitOptions(args.val_fraction, args.seed, tuple(comma_items(args.train_cases) or ()),
                        tuple(comma_items(args.val_cases) or ()), args.max_train_patients, args.val_patients)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` described by parsed ``finetune`` arguments."""
    from ..engine.preprocessing import IntensityPolicy
    from .prompts import PromptPolicy
    from .config import TrainConfig

    IntensityPolicy.parse(args.intensity)  # fail early on a typo; the trainer keeps (and re-parses) the text
    return TrainConfig(
        recipe=args.recipe, model=args.model, weights=str(args.weights) if args.weights else None,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, device=args.device, bf16=not args.no_bf16,
        gradient_checkpointing=args.gradient_checkpointing, cache_on_disk=not args.no_cache,
        cache_dir=str(args.cache_dir) if args.cache_dir else None, depth_chunk=args.depth_chunk,
        prompt=PromptPolicy.parse(args.prompts), val_slices=args.val_slices, patience=args.patience or None,
        select_metric=args.select_metric, intensity=args.intensity,
        init_adapter=_init_adapter(args.model, args.init_adapter),
    )


def _init_adapter(model: str, choice: str | None) -> str | None:
    """``--init-adapter``: a file, ``default`` (the model's shipped adapter), or nothing (a fresh surgery)."""
    if choice is None:
        return None
    from ..models.loading import resolve_adapter

    path = resolve_adapter(model, None if choice == "default" else choice)
    if path is None:
        raise InputError(f"model {model!r} ships no default adapter; give an adapter file to --init-adapter")
    return str(path)


def comma_items(items: list[str]) -> list[str] | None:
    """Repeated and/or comma-separated option values -> one list (None when empty)."""
    labels = [part.strip() for item in items for part in item.split(",") if part.strip()]
    return labels or None


def run_finetune(args: argparse.Namespace) -> int:
    """Build the data split and the trainer from ``args`` and train with a rich progress display."""
    import torch

    from .datasets import build_nnunet_split
    from .trainer import STATE_FILE, Trainer

    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    state = args.out / STATE_FILE
    if state.exists() and not (args.resume or args.overwrite):
        raise InputError(f"{args.out} already holds a training run ({STATE_FILE}); use --resume to continue it "
                         f"or --overwrite to start over")
    if args.threads:
        torch.set_num_threads(int(args.threads))
    config = config_from_args(args)
    split = build_nnunet_split(args.datasets, split_options(args), args.max_cases,
                               comma_items(args.labels), config.intensity, regions=args.region,
                               foreground_fraction=args.foreground_fraction)
    trainer = Trainer(config, split.train, split.val, args.out, data_description=split.description)
    display = RichProgress()
    with display:
        trainer.fit(progress=display, resume=args.resume)
    best = trainer.best
    if best:
        print(f"best epoch {best['epoch']}: {best['by']} = {best['score']:.4f}")
    print(f"adapter: {trainer.adapter_path}")
    print(f"report: {args.out / 'report.md'}")
    return 0


class RichProgress:
    """A progress callback rendering ``TrainEvent``s with rich: an embedding bar, a step bar per epoch, and one
    printed line per epoch (loss, validation Dice, seconds per step)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = console or Console(file=sys.stderr)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=self.console, transient=False)
        self._embed_task = None
        self._epoch_task = None
        self._epoch = 0

    def __enter__(self) -> "RichProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Any) -> None:
        kind = event.kind
        if kind == "setup":
            self.console.print(event.message)
        elif kind == "embed":
            if self._embed_task is None:
                self._embed_task = self.progress.add_task("embedding", total=event.total, info="")
            self.progress.update(self._embed_task, completed=event.done, total=event.total)
        elif kind == "step":
            if self._epoch_task is None or event.epoch != self._epoch:
                if self._epoch_task is not None:
                    self.progress.remove_task(self._epoch_task)
                self._epoch = event.epoch
                self._epoch_task = self.progress.add_task(f"epoch {event.epoch}/{event.epochs}", total=event.steps,
                                                          info="")
            self.progress.update(self._epoch_task, completed=event.step,
                                 info=f"loss {event.loss:.4f}  lr {event.lr:.2e}")
        elif kind == "validation" and event.epoch == 0:
            self.console.print("before training: " + _dice_text(event.metrics))
        elif kind == "epoch":
            m = event.metrics
            val = _dice_text({k[4:]: v for k, v in m.items() if k.startswith("val_")})
            self.console.print(f"epoch {event.epoch}/{event.epochs}: loss {m['loss']:.4f}  "
                               f"{m['seconds_per_step']:.2f} s/step" + (f"  val {val}" if val else ""))
        elif kind == "early_stop":
            self.console.print(f"early stop: {event.message}")


def _dice_text(metrics: dict[str, Any]) -> str:
    keys = [k for k in ("box", "clicks_1", "clicks_3", "clicks_5") if metrics.get(k) is not None]
    return "  ".join(f"{k} {metrics[k]:.3f}" for k in keys) + (" Dice" if keys else "")
