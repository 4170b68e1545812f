"""Patch-based training of volumetric automatic models: AutoProSAM on a frozen encoder, or a UNet student
distilled from a teacher. One loop for both (the teacher only adds a loss term).

    split = build_auto_split("Dataset001_ACDC", split=SplitOptions(val_patients=2))
    trainer = VolumetricTrainer(VolumetricTrainConfig(arch="autoprosam", patch_size=(16, 128, 128)),
                                split.train, split.val, "runs/acdc_3d", split.labels)
    trainer.fit(progress=print)         # or fit(resume=True) after an interruption

Choices:

- **Data**: whole volumes in memory at their native grid (no resampling), mapped to [0, 1] with the intensity
  policy (display range / 255, as at inference); random patches, ``foreground_fraction`` of them centred on a
  voxel of a random class present in the case (``training.patches``). No augmentation.
- **Loss**: MONAI ``DiceCELoss(softmax, to_onehot_y, include_background=False, batch=True)`` against the labels,
  as for the 2D heads (batch Dice keeps classes absent from a patch from collapsing to background).
  **Distillation** (a ``teacher`` is given): ``(1 - distill_weight) * DiceCE(labels) + distill_weight *
  (T^2 * KL(softmax(teacher / T) || softmax(student / T)) + soft Dice(softmax(student / T), softmax(teacher / T)))``
  (Hinton's T^2 keeps the KL gradient scale independent of T). The teacher's logits of every training volume are
  computed once (its own sliding-window or slice-wise inference) and kept in float16.
- **Optimiser**: AdamW (no decay on biases / norms / embeddings), linear warm-up then cosine per step
  (``training.common``), gradient clipping; bf16 autocast on CUDA; optional gradient checkpointing (AutoProSAM's
  3D blocks).
- **Validation** every ``val_every`` epochs: every held-out case predicted exactly as at inference (Gaussian
  sliding windows over the whole volume), 3D Dice per class; the best ``val_dice_mean`` is saved as
  ``<run_dir>/auto_model.safetensors`` + ``.json`` (without validation cases: the last epoch).
- **Resume**: ``<run_dir>/last.pt`` (trained tensors, optimiser, scheduler, history, RNG) after every epoch;
  patches are a function of (seed, epoch, step), so a resumed run continues as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine.atomic import write_text_atomic
from ..engine.sliding import autocast_for
from ..errors import InputError
from .common import (ProgressCallback, TrainEvent, finite_or_none, load_state, lr_lambda, param_groups,
                     resolve_device, restore_rng, rng_state, save_state)
from .datasets import TrainingCase, onto_one_orientation

MODEL_STEM = "auto_model"
STATE_FILE = "last.pt"
STATE_FORMAT = "medsam-adapter/volumetric-train-state"
DEFAULT_LR = {"autoprosam": 5e-4, "unet": 2e-3, "unet2d": 2e-3}
RESUME_FIXED = ("arch", "model", "weights", "network", "patch_size", "batch_size", "steps_per_epoch", "seed",
                "foreground_fraction", "temperature", "distill_weight", "intensity")


@dataclasses.dataclass
class VolumetricTrainConfig:
    """Settings of one volumetric training (see the module docstring).

    ``network``: architecture options (``AutoProSAMConfig`` fields for ``autoprosam``; ``channels`` /
    ``res_units`` for the UNet students). ``lr`` None = per architecture (``DEFAULT_LR``); ``warmup_steps`` None =
    5 % of all steps. ``temperature`` / ``distill_weight`` only matter with a teacher.
    """

    arch: str = "autoprosam"
    model: str = "litemedsam"
    weights: str | None = None
    network: dict[str, Any] = dataclasses.field(default_factory=dict)
    patch_size: tuple[int, int, int] = (64, 128, 128)
    epochs: int = 50
    steps_per_epoch: int = 50
    batch_size: int = 2
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    foreground_fraction: float = 0.5
    val_every: int = 1
    patience: int | None = 10
    overlap: float = 0.25
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    gradient_checkpointing: bool = False
    intensity: str = "auto"
    store_dtype: str = "float32"
    temperature: float = 2.0
    distill_weight: float = 0.5
    single_component: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from ..models.volumetric import ARCHS, check_patch

        if self.arch not in ARCHS:
            raise InputError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        self.patch_size = check_patch(self.arch, self.network, self.patch_size)
        for name in ("epochs", "steps_per_epoch", "batch_size", "val_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr}")
        if not self.temperature > 0 or not 0 <= self.distill_weight <= 1 or not 0 <= self.overlap < 1:
            raise InputError("temperature must be > 0, distill_weight in [0, 1] and overlap in [0, 1)")

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.arch])

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def warmup(self) -> int:
        return int(self.warmup_steps) if self.warmup_steps is not None else max(1, round(0.05 * self.total_steps))

    def network_options(self) -> dict[str, Any]:
        """What rebuilds the network (stored in the card); AutoProSAM also needs the patch and checkpointing."""
        if self.arch != "autoprosam":
            return dict(self.network)
        return {**self.network, "patch_size": list(self.patch_size),
                "gradient_checkpointing": self.gradient_checkpointing}

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        out["lr"] = self.learning_rate
        return out


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T^2 KL(teacher_T || student_T) + soft Dice (foreground classes, batch-wise) between the tempered softmaxes."""
    log_s = F.log_softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    kl = (p_t * (torch.log(p_t.clamp_min(1e-8)) - log_s)).sum(1).mean() * temperature ** 2
    p_s = log_s.exp()[:, 1:]
    dims = (0, *range(2, student.ndim))
    inter = (p_s * p_t[:, 1:]).sum(dims)
    dice = 1.0 - (2.0 * inter + 1e-5) / (p_s.sum(dims) + p_t[:, 1:].sum(dims) + 1e-5)
    return kl + dice.mean()


class VolumetricTrainer:
    """Trains one volumetric model into ``run_dir`` (see the module docstring).

    ``labels``: {label value: class name} in class order. ``base_model``: the frozen base model for AutoProSAM
    (None loads ``config.model``). ``teacher``: anything with ``logits(volume) -> (K, D, H, W)`` and the same
    classes (``engine.auto.AutoSegmenter``) turns the run into distillation.
    """

    def __init__(self, config: VolumetricTrainConfig, train_cases: Sequence[TrainingCase],
                 val_cases: Sequence[TrainingCase] | None, run_dir: str | Path, labels: dict[int, str],
                 base_model: torch.nn.Module | None = None, teacher: Any = None,
                 data_description: dict[str, Any] | None = None, model_path: str | Path | None = None) -> None:
        if not labels:
            raise InputError("no classes to train: give at least one label")
        self.config = config
        # One orientation for every case (a distilled student takes its teacher's); recorded in the card.
        self.orientation, self.train_cases, self.val_cases = onto_one_orientation(
            train_cases, val_cases, getattr(teacher, "orientation", None))
        self.run_dir = Path(run_dir)
        self.labels = dict(sorted(labels.items()))
        self.base_model = base_model
        self.teacher = teacher
        self._model_path = Path(model_path) if model_path is not None else None
        self.data_description = data_description or {"train_cases": [c.case_id for c in self.train_cases],
                                                      "val_cases": [c.case_id for c in self.val_cases]}
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.bad_epochs = 0
        self.epoch = self.global_step = 0
        self.stats: dict[str, Any] = {}
        self._progress: ProgressCallback | None = None

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def model_path(self) -> Path:
        """The best model's tensors file (its card beside it): ``<run_dir>/auto_model.safetensors`` by default."""
        from ..models.auto_heads import auto_model_paths

        return auto_model_paths(self._model_path)[0] if self._model_path else self.run_dir / f"{MODEL_STEM}.safetensors"

    # --- public ---------------------------------------------------------------------------------------
    def fit(self, progress: ProgressCallback | None = None, resume: bool = False) -> list[dict[str, Any]]:
        """Train up to ``config.epochs`` epochs (continuing ``last.pt`` with ``resume``); returns the history."""
        self._progress = progress
        saved = load_state(self.state_path, STATE_FORMAT, self.config.to_dict(), RESUME_FIXED) if resume else None
        self._setup()
        if saved is not None:
            self._restore(saved)
        cfg = self.config
        stopped = False
        while self.epoch < cfg.epochs:
            entry = self._train_epoch(self.epoch + 1)
            if self.val_cases and (entry["epoch"] % cfg.val_every == 0 or entry["epoch"] == cfg.epochs):
                started = time.perf_counter()
                metrics = self.validate()
                entry.update({f"val_{k}": v for k, v in metrics.items()}, val_seconds=time.perf_counter() - started)
                self._emit("validation", epoch=entry["epoch"], metrics=metrics)
            self.epoch = entry["epoch"]
            self.history.append(entry)
            if self._improved(entry):
                self._save_model(entry)
            save_state(self.state_path, self._state())
            self._write_outputs()
            self._emit("epoch", epoch=self.epoch, loss=entry["loss"], lr=entry["lr"], metrics=dict(entry))
            if self.val_cases and cfg.patience and self.bad_epochs >= cfg.patience:
                stopped = True
                self._emit("early_stop", epoch=self.epoch, message=f"no improvement for {cfg.patience} epochs")
                break
        self.stats["stopped_early"] = stopped
        self._write_outputs()
        self._emit("done", epoch=self.epoch, metrics={"best": self.best}, message=str(self.model_path))
        return self.history

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """3D Dice per class over the validation cases, predicted as at inference."""
        from .auto_train import class_lut, clean_class_maps, dice_per_class, to_classes

        lut = class_lut(list(self.labels))
        preds = clean_class_maps([self.bundle.logits(c.volume, bf16=self.config.bf16).argmax(0).numpy()
                                  for c in self.val_cases], self.bundle.classes)
        truths = [to_classes(c.labels, lut) for c in self.val_cases]
        return dice_per_class(preds, truths, list(self.labels.values()))

    # --- setup ----------------------------------------------------------------------------------------
    def _setup(self) -> None:
        from ..models.volumetric import VolumetricAutoModel, build_network, classes_for

        cfg = self.config
        self.device = resolve_device(cfg.device)
        self._emit("setup", message=f"preparing {cfg.arch} on {self.device}")
        base, base_name, base_sha = self._base_model()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            network = build_network(cfg.arch, len(self.labels) + 1, cfg.network_options(), base)
        self.network = network.to(self.device)
        self.bundle = VolumetricAutoModel(self.network, cfg.arch, classes_for(self.labels, cfg.single_component,
                                                                            [c.labels for c in self.train_cases]),
                                          cfg.patch_size,
                                          cfg.intensity, cfg.network_options(), base_name, base_sha,
                                          overlap=cfg.overlap, orientation=self.orientation)
        self.stats["parameters"] = {"total": sum(p.numel() for p in network.parameters()),
                                    "trainable": sum(p.numel() for p in network.parameters() if p.requires_grad)}
        self.sampler = self._sampler()
        self.optimizer = torch.optim.AdamW(param_groups(self.network, cfg.weight_decay), lr=cfg.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.warmup, cfg.total_steps, cfg.min_lr_ratio))
        from monai.losses import DiceCELoss

        self.dice_ce = DiceCELoss(softmax=True, to_onehot_y=True, include_background=False, batch=True)
        torch.manual_seed(cfg.seed)

    def _base_model(self) -> tuple[torch.nn.Module | None, str | None, str | None]:
        if self.config.arch != "autoprosam":
            return None, None, None
        from ..models.checkpoints import base_identity

        base = self.base_model
        if base is None:
            from ..models.registry import load_model

            base = load_model(self.config.model, weights=self.config.weights, device="cpu")
        name, sha = base_identity(base)
        return base, name, sha

    def _sampler(self) -> Any:
        from .auto_train import class_lut, to_classes
        from .patches import PatchCase, PatchSampler

        lut = class_lut(list(self.labels))
        cases = []
        for n, case in enumerate(self.train_cases):
            teacher = None
            if self.teacher is not None:
                self._emit("embed", done=n, total=len(self.train_cases), message="teacher logits (once)")
                teacher = self.teacher.logits(case.volume).numpy().astype(np.float16)
            cases.append(PatchCase(case.case_id, (case.display / np.float32(255.0)).astype(np.float32),
                                   to_classes(case.labels, lut), teacher))
        if self.teacher is not None:
            self._emit("embed", done=len(cases), total=len(cases), message="teacher logits (once)")
        return PatchSampler(cases, self.config.patch_size, self.config.foreground_fraction, self.config.seed)

    # --- training -------------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        self.network.train()
        losses: list[float] = []
        started = time.perf_counter()
        for step in range(cfg.steps_per_epoch):
            losses.append(self._train_step(epoch, step))
            self.global_step += 1
            self._emit("step", epoch=epoch, step=step + 1, steps=cfg.steps_per_epoch, loss=losses[-1],
                       lr=self.scheduler.get_last_lr()[0])
        seconds = time.perf_counter() - started
        return {"epoch": epoch, "loss": float(np.mean(losses)), "loss_first": losses[0], "loss_last": losses[-1],
                "lr": self.scheduler.get_last_lr()[0], "train_seconds": seconds,
                "seconds_per_step": seconds / len(losses), "global_step": self.global_step}

    def _train_step(self, epoch: int, step: int) -> float:
        cfg = self.config
        images, classes, teacher = self.sampler.batch(epoch, step, cfg.batch_size)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.device, cfg.bf16):
            logits = self.network(images.to(self.device))
        logits = logits.float()
        loss = self.dice_ce(logits, classes.to(self.device))
        if teacher is not None:
            soft = distillation_loss(logits, teacher.to(self.device), cfg.temperature)
            loss = (1.0 - cfg.distill_weight) * loss + cfg.distill_weight * soft
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.network.parameters() if p.requires_grad], cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def _improved(self, entry: dict[str, Any]) -> bool:
        score = entry.get("val_dice_mean")
        if not self.val_cases:
            return entry["epoch"] == self.config.epochs
        if score is None or not math.isfinite(score):
            return False
        if self.best is not None and score <= self.best["score"]:
            self.bad_epochs += 1
            return False
        self.bad_epochs = 0
        return True

    # --- files ----------------------------------------------------------------------------------------
    def _save_model(self, entry: dict[str, Any]) -> None:
        from ..models.volumetric import save_volumetric_model

        metrics = {k: v for k, v in entry.items() if k.startswith("val_") or k == "loss"}
        self.best = {"epoch": entry["epoch"], "score": entry.get("val_dice_mean", -entry["loss"]),
                     "by": "val_dice_mean" if self.val_cases else "last_epoch", "metrics": metrics}
        training = {"config": self.config.to_dict(), "data": self.data_description, "stats": self.stats,
                    "teacher": getattr(self.teacher, "describe", lambda: None)()}
        save_volumetric_model(self.model_path, self.bundle, finite_or_none(training),
                              finite_or_none({"selected_epoch": entry["epoch"], **metrics}), self.config.store_dtype)

    def _state(self) -> dict[str, Any]:
        from ..models.volumetric import saved_tensors

        return {"format": STATE_FORMAT, "config": self.config.to_dict(), "epoch": self.epoch,
                "global_step": self.global_step, "bad_epochs": self.bad_epochs,
                "tensors": {k: v.detach().cpu() for k, v in saved_tensors(self.network).items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(), "history": self.history, "best": self.best}

    def _restore(self, state: dict[str, Any]) -> None:
        from ..models.volumetric import load_saved_tensors

        load_saved_tensors(self.network, {k: v.to(self.device) for k, v in state["tensors"].items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.history, self.best = list(state["history"]), state.get("best")
        restore_rng(state["rng"])
        self._emit("setup", epoch=self.epoch, message=f"resumed from {self.state_path} after epoch {self.epoch}")

    def _write_outputs(self) -> None:
        from .reporting import write_auto_curve

        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / "history.json", json.dumps(finite_or_none(
            {"config": self.config.to_dict(), "best": self.best, "stats": self.stats, "history": self.history}),
            indent=2, default=str) + "\n")
        if self.history:
            write_auto_curve(self.history, self.run_dir / "training_curve.png")

    def _emit(self, kind: str, **fields: Any) -> None:
        if self._progress is not None:
            fields.setdefault("epochs", self.config.epochs)
            fields.setdefault("steps", self.config.steps_per_epoch)
            self._progress(TrainEvent(kind, **fields))
