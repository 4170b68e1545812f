"""Distil an automatic model (teacher: AutoProSAM, or a 2D AutoSAM head) into a small MONAI UNet student.

    teacher = AutoSegmenter("runs/acdc_3d/auto_model")
    result = distill(teacher, "Dataset001_ACDC", "models/acdc_student", DistillOptions(arch="unet2d"))
    result.comparison    # Dice per class and seconds per volume, teacher vs student, on the held-out cases

Student type (``arch`` None = by teacher): a slice-wise 2D UNet (``unet2d``) for a 2D-head teacher, whose
outputs are per slice anyway; a 3D UNet (``unet``) for a volumetric teacher. The student uses the teacher's
classes (label values, names, terminology) and intensity policy, trains with ``VolumetricTrainer`` (labels +
the teacher's soft outputs, see ``volumetric_train``), and is an ordinary volumetric automatic model:
``medsam-adapter auto VOLUME --model student`` runs it. No base model is needed at inference.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .common import ProgressCallback, nanmean
from .splits import SplitOptions


@dataclasses.dataclass
class DistillOptions:
    """What ``distill`` needs beyond the trainer's settings. ``patch_size`` None = the teacher's patch (rounded
    to the student's multiples) or 16 x 128 x 128; ``channels``: UNet widths per level; ``split``: which cases
    train and which compare teacher and student."""

    arch: str | None = None
    channels: tuple[int, ...] = (16, 32, 64, 128)
    patch_size: tuple[int, int, int] | None = None
    split: SplitOptions = SplitOptions()


@dataclasses.dataclass
class DistillResult:
    model_path: Path
    history: list[dict[str, Any]]
    comparison: dict[str, Any]


def student_arch(teacher: Any, arch: str | None) -> str:
    """The documented default: slice-wise 2D for a 2D-head teacher, 3D for a volumetric one."""
    if arch is not None:
        return arch
    return "unet" if getattr(teacher, "volumetric", None) is not None else "unet2d"


def default_patch(teacher: Any, arch: str, channels: Sequence[int]) -> tuple[int, int, int]:
    from ..models.students import student_multiple

    volumetric = getattr(teacher, "volumetric", None)
    base = volumetric.patch_size if volumetric is not None else (16, 128, 128)
    multiple = student_multiple(arch, channels)
    return tuple(max(m, (int(b) // m) * m) for b, m in zip(base, multiple))  # type: ignore[return-value]


def distill(teacher: Any, dataset: str | Path, output: str | Path, options: DistillOptions,
            config: Any = None, run_dir: str | Path | None = None, progress: ProgressCallback | None = None,
            resume: bool = False) -> DistillResult:
    """Train a student from ``teacher`` (an ``engine.auto.AutoSegmenter``) on the nnU-Net folder ``dataset``.

    ``config``: a ``VolumetricTrainConfig`` whose arch / network / patch / intensity are replaced by the
    student's; ``run_dir`` (resume state, history) defaults to ``<output>_run``. Returns the student's path,
    the training history and the teacher-vs-student comparison on the validation cases (also in the card).
    """
    from .auto_train import build_auto_split
    from .volumetric_train import VolumetricTrainConfig, VolumetricTrainer

    arch = student_arch(teacher, options.arch)
    labels = {c.label_value: c.name for c in teacher.classes}
    split = build_auto_split(dataset, [str(v) for v in labels], options.split, teacher.intensity)
    if set(split.labels) != set(labels):
        raise InputError(f"the teacher's classes {labels} are not all labels of {dataset} ({split.labels})")
    base = dataclasses.asdict(config) if config is not None else {}
    base.update(arch=arch, network={"channels": list(options.channels)}, intensity=teacher.intensity,
                patch_size=options.patch_size or default_patch(teacher, arch, options.channels), seed=options.split.seed,
                single_component=tuple(c.name for c in teacher.classes if c.single_component))
    cfg = VolumetricTrainConfig(**base)
    output = Path(output)
    run_dir = Path(run_dir) if run_dir else output.with_name(output.name.split(".")[0] + "_run")
    description = {**split.description, "teacher": teacher.describe()}
    trainer = VolumetricTrainer(cfg, split.train, split.val, run_dir, labels, teacher=teacher,
                                data_description=description, model_path=output)
    history = trainer.fit(progress, resume=resume)
    comparison = compare_models({"teacher": teacher.predict, "student": trainer.bundle.predict_volume},
                                split.val, labels) if split.val else {}
    _add_to_card(trainer.model_path, comparison)
    return DistillResult(trainer.model_path, history, comparison)


def compare_models(predictors: dict[str, Any], cases: Sequence[Any], labels: dict[int, str]) -> dict[str, Any]:
    """Dice per class (3D, mean over cases) and median seconds per volume of each predictor (volume -> labels)."""
    from .common import dice_np

    out: dict[str, Any] = {"cases": [c.case_id for c in cases]}
    for name, predict in predictors.items():
        seconds, dices = [], {n: [] for n in labels.values()}
        for case in cases:
            started = time.perf_counter()
            pred = predict(case.volume)
            seconds.append(time.perf_counter() - started)
            for value, cname in labels.items():
                dices[cname].append(dice_np(pred == value, case.labels == value))
        per_class = {k: nanmean(v) for k, v in dices.items()}
        out[name] = {"dice": per_class, "dice_mean": nanmean(per_class.values()),
                     "seconds_per_volume": float(np.median(seconds))}
    if "teacher" in out and "student" in out:
        out["speedup"] = out["teacher"]["seconds_per_volume"] / max(out["student"]["seconds_per_volume"], 1e-9)
    return out


def _add_to_card(model_path: Path, comparison: dict[str, Any]) -> None:
    """Record the comparison in the student's card (its tensors, and so their sha256, are unchanged)."""
    import json

    from ..engine.atomic import write_text_atomic
    from ..models.auto_heads import auto_model_paths, jsonable

    if not comparison:
        return
    card_path = auto_model_paths(model_path)[1]
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card.setdefault("metrics", {})["teacher_vs_student"] = jsonable(comparison)
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n")
