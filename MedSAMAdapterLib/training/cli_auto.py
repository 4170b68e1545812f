"""``medsam-adapter auto`` (automatic segmentation with a trained head) and ``medsam-adapter train-auto``.

Wiring (in ``MedSAMAdapterLib/cli.py``)::

    from .training.cli_auto import add_auto_parsers
    add_auto_parsers(commands)          # adds 'auto' (handler=run_auto_command) and 'train-auto' (run_train_auto)

Handlers raise ``MedSAMAdapterError`` for problems the user can fix and return 0 on success.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from .cli_finetune import RichProgress, add_runtime_options, add_split_options, comma_items, split_options


def add_auto_parsers(subparsers: Any) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Add the ``auto`` and ``train-auto`` subcommands; returns their parsers."""
    from ..models.auto_heads import HEAD_TYPES

    auto = subparsers.add_parser(
        "auto", help="automatic (prompt-free) segmentation with a trained head",
        description="Segment every class of an automatic model: an AutoSAM-style head on a frozen encoder (slice "
                    "by slice along the first array axis) or a volumetric model (AutoProSAM, distilled UNet; "
                    "Gaussian sliding windows). Writes a label map; .seg.nrrd segments carry names, colours "
                    "and SNOMED CT terminology.")
    auto.add_argument("volume", type=Path, help="NIfTI, NRRD, MHA, DICOM folder, PNG/JPG")
    auto.add_argument("--model", type=Path, required=True, metavar="AUTO_MODEL_PATH",
                      help="automatic model: <stem>.safetensors + <stem>.json (either name, or the stem)")
    auto.add_argument("-o", "--output", type=Path, required=True, help=".seg.nrrd, .nii.gz, .nrrd, .mha or .png")
    auto.add_argument("--weights", type=Path, help="explicit weights file of the card's base model")
    auto.add_argument("--device", default="cpu", help="cpu|cuda|cuda:N (default: %(default)s)")
    auto.add_argument("--overlay", type=Path, metavar="PNG", help="also save a picture of the middle labelled slice")
    auto.add_argument("--no-cache", action="store_true", help="do not read or write the disk embedding cache")
    auto.add_argument("--cache-dir", type=Path, help="embedding cache folder (default: the user cache)")
    auto.add_argument("--json", action="store_true", help="print the segment summary as JSON")
    add_auto_inference_arguments(auto)
    auto.set_defaults(handler=run_auto_command)

    t = subparsers.add_parser(
        "train-auto", help="train an automatic segmentation head on an nnU-Net raw folder (frozen encoder)",
        description="Train an AutoSAM-style head (vit / cnn / linear) on cached embeddings of a frozen base model. "
                    "All selected labels are classes of one softmax. 3D volumes are trained on their axial planes. "
                    "Writes <out>/auto_model.safetensors + .json (model card), history.json, training_curve.png.")
    t.add_argument("dataset", type=Path, metavar="DATASET_DIR", help="nnU-Net raw dataset folder")
    t.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    t.add_argument("--head", choices=HEAD_TYPES, default="vit",
                   help="vit: SAM-decoder-style class tokens (init from the base decoder); cnn: conv stages; "
                        "linear: 1x1 conv probe (default: %(default)s)")
    t.add_argument("--context", action="store_true", help="2.5D: also feed the embeddings of the neighbouring slices")
    t.add_argument("--epochs", type=int, default=50)
    t.add_argument("--batch-size", type=int, help="planes (2D heads, default 4) or patches (autoprosam, default 2)")
    t.add_argument("--lr", type=float, help="peak learning rate (default: vit 5e-4, cnn 3e-3, linear 1e-2)")
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--patience", type=int, default=10, help="early stop after N epochs without improvement (0: off)")
    t.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    t.add_argument("--labels", action="append", default=[], metavar="NAME|VALUE[,...]",
                   help="classes to train (names or values; comma-separated or repeated); default all labels")
    add_split_options(t)
    t.add_argument("--cnn-channels", metavar="C0,C1,...", help="CNN head stage widths (default: 128,64,32)")
    t.add_argument("--cnn-convs", metavar="N0,N1,...", help="3x3 convs per CNN stage (default: 1,1,0)")
    t.add_argument("--vit-depth", type=int, help="two-way transformer layers of the ViT head (default: 2, as SAM)")
    t.add_argument("--no-base-init", action="store_true", help="ViT head: random init instead of the base decoder")
    t.add_argument("--embedding-dropout", type=float, default=0.0, help="channel dropout on the embeddings")
    t.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="2D heads: validate and save an exponential moving average of the weights (e.g. 0.99 "
                        "per step; default 0 = off)")
    t.add_argument("--single-component", action="append", default=[], metavar="all|NAME|VALUE[,...]",
                   help="classes that are one connected object: predictions keep only their largest 3D component "
                        "(validation and inference; stored in the model card). Not for merged multi-part labels")
    t.add_argument("--augment", type=int, default=0, metavar="N",
                   help="2D heads: N randomly rotated / scaled / contrast-changed copies of each training case, "
                        "embedded once and cached (default: 0)")
    t.add_argument("--augment-rotate", type=float, default=15.0, metavar="DEGREES",
                   help="rotation range of the augmented copies, +/- DEGREES (default: %(default)s); 180 for images "
                        "whose in-plane orientation varies between cases (ACDC's files lost theirs)")
    t.add_argument("--roi-margin", type=float, metavar="FRACTION",
                   help="2D heads: locate, then zoom - a second pass on the square box around what the first found, "
                        "grown by FRACTION x its size per side (e.g. 0.25) but never narrower than the encoder's "
                        "input, for planes larger than it (e.g. 512 px CT); trains on ground-truth crops too and "
                        "picks the epoch on them (default: off, one pass)")
    t.add_argument("--store-dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of the saved head tensors (float16 halves the file)")
    t.add_argument("--model", default="litemedsam", help="base model from `medsam-adapter info` (default: %(default)s)")
    t.add_argument("--weights", type=Path, help="explicit base weights file")
    add_runtime_options(t)
    t.add_argument("--seed", type=int, default=0)
    from .cli_volumetric import add_volumetric_options

    add_volumetric_options(t)
    t.set_defaults(handler=run_train_auto)
    return auto, t


def add_auto_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """``--refine-boxes [ADAPTER]`` and ``--turn-search``: the same options for ``auto`` and ``evaluate --protocol
    auto``."""
    parser.add_argument("--turn-search", action=argparse.BooleanOptionalAction, default=None,
                        help="try each plane as stored and turned by 90, 180 and 270 degrees and keep the turn the "
                             "model is surest of (4x the work; for images whose in-plane orientation is unknown, "
                             "e.g. cardiac short-axis MRI); default: as the model card says")
    parser.add_argument("--refine-boxes", nargs="?", const="none", metavar="ADAPTER",
                        help="redraw each class plane by plane from a box around the automatic mask with the "
                             "promptable base model (rings such as a myocardium keep the automatic result); "
                             "ADAPTER: none (the plain base model, when given without a value: reuses the "
                             "automatic model's embeddings), default (the shipped click adapter) or an adapter file")


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~.auto_train.AutoTrainConfig` described by parsed ``train-auto`` arguments."""
    from ..engine.preprocessing import IntensityPolicy
    from .auto_train import AutoTrainConfig

    options: dict[str, Any] = {}
    if args.head == "cnn":
        if args.cnn_channels:
            options["channels"] = _int_list(args.cnn_channels, "--cnn-channels")
        if args.cnn_convs:
            options["convs_per_stage"] = _int_list(args.cnn_convs, "--cnn-convs")
    if args.head == "vit" and args.vit_depth:
        options["depth"] = int(args.vit_depth)
    return AutoTrainConfig(
        head=args.head, context=args.context, head_options=options, model=args.model,
        weights=str(args.weights) if args.weights else None, epochs=args.epochs,
        lr=args.lr, weight_decay=args.weight_decay, patience=args.patience or None, val_every=args.val_every,
        seed=args.seed, device=args.device, intensity=IntensityPolicy.parse(args.intensity).id,
        batch_size=args.batch_size or 4,
        cache_dir=str(args.cache_dir) if args.cache_dir else None, cache_on_disk=not args.no_cache,
        init_from_base=not args.no_base_init, embedding_dropout=args.embedding_dropout, store_dtype=args.store_dtype,
        ema=args.ema, roi_margin=args.roi_margin,
        single_component=tuple(comma_items(args.single_component) or ()), augment=args.augment,
        augment_rotate=args.augment_rotate)


def print_split(split: Any) -> None:
    """The patients on each side of an automatic-model split (stderr, before the long work starts)."""
    print(f"training patients: {', '.join(split.description['train_patients'])}", file=sys.stderr)
    print(f"validation patients: {', '.join(split.description['val_patients']) or '(none)'}", file=sys.stderr)


def run_train_auto(args: argparse.Namespace) -> int:
    import torch

    from .auto_train import build_auto_split, train_auto

    if args.threads:
        torch.set_num_threads(int(args.threads))
    if args.arch == "autoprosam":
        from .cli_volumetric import run_train_volumetric

        return run_train_volumetric(args)
    config = config_from_args(args)
    split = build_auto_split(args.dataset, comma_items(args.labels), split_options(args), config.intensity)
    print_split(split)
    started = time.perf_counter()
    with AutoRichProgress() as display:
        result = train_auto(config, split.train, split.val, args.out, split.labels, progress=display,
                            data_description=split.description)
    if result.best:
        dice = dice_text(result.best["metrics"])
        print(f"best epoch {result.best['epoch']}" + (f": {dice}" if dice else ""))
    print(f"model: {result.model_path} (+ .json card); {time.perf_counter() - started:.0f} s")
    return 0


def dice_text(metrics: dict[str, Any]) -> str:
    """'RV 0.61  MYO 0.72 ...' from validation metrics, then the zoom pass's oracle-box Dice when there is one."""
    def line(prefix: str) -> str:
        return "  ".join(f"{k[len(prefix):]} {v:.3f}" for k, v in metrics.items()
                         if k.startswith(prefix) and v is not None)

    whole, zoomed = line("val_dice_"), line("val_roi_dice_")
    return whole + (f"  | zoomed (ground-truth box): {zoomed}" if zoomed else "")


class AutoRichProgress(RichProgress):
    """``RichProgress`` of ``finetune`` with per-class validation Dice in the epoch lines."""

    def __call__(self, event: Any) -> None:
        if event.kind == "validation":
            return  # printed with the epoch line
        if event.kind == "epoch":
            m = event.metrics
            dice = dice_text(m)
            self.console.print(f"epoch {event.epoch}/{event.epochs}: loss {m['loss']:.4f}  "
                               f"{m['train_seconds']:.1f} s" + (f"  val Dice {dice}" if dice else ""))
            return
        if event.kind == "done":
            return
        super().__call__(event)


def run_auto_command(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..engine.auto import AutoSegmenter, open_box_refiner, write_auto_segmentation
    from ..engine.cache import EmbeddingCache
    from ..engine.volume import read_volume, write_overlay_png

    volume = read_volume(args.volume)
    cache = EmbeddingCache(args.cache_dir / "embeddings" if args.cache_dir else None, use_disk=not args.no_cache)
    console = Console(file=sys.stderr)
    started = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("automatic segmentation", total=2 * volume.shape[0])
        segmenter = AutoSegmenter(args.model, args.device, weights=args.weights, cache=cache,
                                  turn_search=args.turn_search)
        refiner = refine_progress = None
        if args.refine_boxes is not None:
            refiner = open_box_refiner(segmenter, args.refine_boxes, args.device)
            refine_task = bar.add_task("box refinement", total=None)
            refine_progress = lambda done, total: bar.update(refine_task, completed=done, total=total)  # noqa: E731
        labels, segments = segmenter.segment(
            volume, lambda done, total: bar.update(task, completed=done, total=total), refiner=refiner,
            refine_progress=refine_progress)
    out = write_auto_segmentation(labels, volume.geometry, args.output, segments)
    if args.overlay:
        write_overlay_png(volume, labels, args.overlay, colors={s.label_value: s.color for s in segments})
    voxel_ml = float(np.prod(volume.geometry.spacing)) / 1000.0
    rows = [{**s.to_dict(), "terminology": (s.terminology or {}).get("type", {}).get("CodeMeaning")}
            for s in segments]
    turned = segmenter.last_turns * 90 if segmenter.turn_search else None  # degrees; None: not searched
    if args.json:
        print(json.dumps({"output": str(out), "segments": rows, "turned_degrees": turned}, indent=2))
    else:
        if turned is not None:
            print(f"planes seen turned by {turned} degrees (the surest of 4 turns)")
        for s in segments:
            size = f"{s.voxel_count} voxels" if volume.is_2d else f"{s.voxel_count * voxel_ml:.1f} ml"
            print(f"{s.label_value:3d}  {s.name:<24s} {size}")
        print(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    return 0
