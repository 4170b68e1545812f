"""Volumetric commands: ``train-auto --arch autoprosam`` (options added to the ``train-auto`` parser) and
``distill TEACHER --data DATASET_DIR -o STUDENT``.

Wiring (in ``cli_auto.add_auto_parsers`` / ``MedSAMAdapterLib/cli.py``)::

    add_volumetric_options(train_auto_parser)     # --arch, --patch-size, --steps-per-epoch, --resume ...
    add_distill_parser(commands)                  # handler=run_distill
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import InputError

ARCH_CHOICES = ("autosam", "autoprosam")


def _triple(text: str | None, what: str) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"{what} must be D,H,W integers, got {text!r}") from None
    if len(values) != 3:
        raise InputError(f"{what} must be three integers D,H,W, got {text!r}")
    return values  # type: ignore[return-value]


def add_volumetric_options(p: argparse.ArgumentParser) -> None:
    """Options of ``train-auto`` that only the volumetric architecture uses."""
    g = p.add_argument_group("volumetric (--arch autoprosam)")
    g.add_argument("--arch", choices=ARCH_CHOICES, default="autosam",
                   help="autosam: 2D head on cached embeddings (--head); autoprosam: 3D AutoProSAM on the frozen "
                        "encoder, trained on random patches (default: %(default)s)")
    g.add_argument("--patch-size", metavar="D,H,W", help="training patch and sliding window (default: 64,128,128)")
    g.add_argument("--steps-per-epoch", type=int, default=50)
    g.add_argument("--foreground-fraction", type=float, default=0.5, help="patches centred on a labelled voxel")
    g.add_argument("--depth-window", type=int, default=4, help="AutoProSAM attention window along depth (tokens)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute the 3D blocks in backward")
    g.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on CUDA")
    g.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last.pt")
    g.add_argument("--overwrite", action="store_true", help="start over in a RUN_DIR that has a last.pt")


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    from .volumetric_train import STATE_FILE

    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if (run_dir / STATE_FILE).exists() and not (resume or overwrite):
        raise InputError(f"{run_dir} already holds a training run ({STATE_FILE}); use --resume to continue it or "
                         f"--overwrite to start over")


def volumetric_config(args: argparse.Namespace, arch: str, network: dict[str, Any]) -> Any:
    from ..engine.preprocessing import IntensityPolicy
    from .cli_finetune import comma_items
    from .volumetric_train import VolumetricTrainConfig

    patch = _triple(args.patch_size, "--patch-size") or (64, 128, 128)
    return VolumetricTrainConfig(
        arch=arch, model=args.model, weights=str(args.weights) if getattr(args, "weights", None) else None,
        network=network, patch_size=patch, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size or 2, lr=args.lr, weight_decay=args.weight_decay,
        foreground_fraction=args.foreground_fraction, val_every=args.val_every, patience=args.patience or None,
        seed=args.seed, device=args.device, bf16=not args.no_bf16, gradient_checkpointing=args.gradient_checkpointing,
        intensity=IntensityPolicy.parse(args.intensity).id, store_dtype=getattr(args, "store_dtype", "float32"),
        single_component=tuple(comma_items(getattr(args, "single_component", [])) or ()))


def run_train_volumetric(args: argparse.Namespace) -> int:
    """``train-auto --arch autoprosam``: split like the 2D heads, train with ``VolumetricTrainer``."""
    from .auto_train import build_auto_split
    from .cli_auto import AutoRichProgress, print_split
    from .cli_finetune import comma_items, split_options
    from .volumetric_train import VolumetricTrainer

    _check_run_dir(args.out, args.resume, args.overwrite)
    config = volumetric_config(args, "autoprosam", {"depth_window": args.depth_window})
    split = build_auto_split(args.dataset, comma_items(args.labels), split_options(args), config.intensity)
    print_split(split)
    started = time.perf_counter()
    trainer = VolumetricTrainer(config, split.train, split.val, args.out, split.labels,
                                data_description=split.description)
    with AutoRichProgress() as display:
        trainer.fit(progress=display, resume=args.resume)
    _print_best(trainer.best)
    print(f"model: {trainer.model_path} (+ .json card); {time.perf_counter() - started:.0f} s")
    return 0


def _print_best(best: dict[str, Any] | None) -> None:
    if best:
        dice = "  ".join(f"{k[len('val_dice_'):]} {v:.3f}" for k, v in best["metrics"].items()
                         if k.startswith("val_dice_") and v is not None)
        print(f"best epoch {best['epoch']}" + (f": {dice}" if dice else ""))


# ---------------------------------------------------------------------------------------------- distill
def add_distill_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..models.students import STUDENT_ARCHS
    from .cli_finetune import add_split_options

    p = subparsers.add_parser(
        "distill", help="distil an automatic model into a small UNet student",
        description="Train a MONAI UNet student from an automatic model's soft outputs (KL + soft Dice at "
                    "temperature T) plus the labels (DiceCE) on an nnU-Net raw folder. The student keeps the "
                    "teacher's classes and intensity policy and runs with `medsam-adapter auto`. Prints Dice and "
                    "seconds per volume of teacher and student on the held-out cases.")
    p.add_argument("teacher", type=Path, metavar="TEACHER", help="automatic model (2D head or AutoProSAM)")
    p.add_argument("--data", type=Path, required=True, metavar="DATASET_DIR", help="nnU-Net raw dataset folder")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="STUDENT",
                   help="student model path (<stem>.safetensors + <stem>.json)")
    p.add_argument("--arch", choices=STUDENT_ARCHS, help="unet (3D) or unet2d (slice-wise); default: unet2d for a "
                                                         "2D-head teacher, unet for a volumetric one")
    p.add_argument("--channels", default="16,32,64,128", metavar="C0,C1,...", help="UNet widths per level")
    p.add_argument("--patch-size", metavar="D,H,W", help="default: the teacher's patch, else 16,128,128")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--distill-weight", type=float, default=0.5, help="weight of the teacher term (labels: 1 - w)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, help="peak learning rate (default: 2e-3)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--foreground-fraction", type=float, default=0.5)
    add_split_options(p)
    p.add_argument("--val-every", type=int, default=1)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--run-dir", type=Path, help="resume state and history (default: <STUDENT>_run)")
    p.add_argument("--weights", type=Path, help="explicit weights file of the teacher's base model")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=run_distill)
    return p


def run_distill(args: argparse.Namespace) -> int:
    import torch

    from ..engine.auto import AutoSegmenter
    from .cli_auto import AutoRichProgress, _int_list
    from .common import resolve_device
    from .cli_finetune import split_options
    from .distill import DistillOptions, distill
    from .volumetric_train import VolumetricTrainConfig

    if args.threads:
        torch.set_num_threads(int(args.threads))
    output = Path(args.output)
    run_dir = args.run_dir or output.with_name(output.name.split(".")[0] + "_run")
    _check_run_dir(run_dir, args.resume, args.overwrite)
    channels = tuple(_int_list(args.channels, "--channels") or ())
    options = DistillOptions(args.arch, channels, _triple(args.patch_size, "--patch-size"),
                             split_options(args))  # bad options fail before the teacher loads
    device = str(resolve_device(args.device))
    teacher = AutoSegmenter(args.teacher, device, weights=args.weights)
    config = VolumetricTrainConfig(arch="unet", patch_size=(8, 8, 8), epochs=args.epochs,
                                   steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr,
                                   weight_decay=args.weight_decay, foreground_fraction=args.foreground_fraction,
                                   val_every=args.val_every, patience=args.patience or None, device=device,
                                   bf16=not args.no_bf16, temperature=args.temperature,
                                   distill_weight=args.distill_weight, seed=args.seed)
    with AutoRichProgress() as display:
        result = distill(teacher, args.data, output, options, config, run_dir, display, args.resume)
    _print_comparison(result.comparison)
    print(f"student: {result.model_path} (+ .json card)")
    return 0


def _print_comparison(comparison: dict[str, Any]) -> None:
    for name in ("teacher", "student"):
        row = comparison.get(name)
        if row:
            dice = "  ".join(f"{k} {v:.3f}" for k, v in row["dice"].items())
            print(f"{name:8s} Dice {dice}  mean {row['dice_mean']:.3f}  {row['seconds_per_volume']:.2f} s/volume")
    if "speedup" in comparison:
        print(f"student is {comparison['speedup']:.1f}x faster than the teacher")
