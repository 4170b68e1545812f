"""Fine-tuning settings (``TrainConfig``) and the choices they accept; what each choice means is explained in
``trainer``'s module docstring and in every run's ``report.md``."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import InputError
from .prompts import PromptPolicy

RECIPES = ("decoder", "medsa", "medsa-3d", "lora")
# ``finetune --recipe autosam-*`` trains a prompt-free head instead (``train-auto --head ...``, auto_train.py)
AUTOSAM_RECIPES = {"autosam-vit": "vit", "autosam-cnn": "cnn", "autosam-linear": "linear"}
SELECT_METRICS = ("mean", "box", "clicks_1", "clicks_3", "clicks_5")


@dataclasses.dataclass
class TrainConfig:
    """Fine-tuning settings (see the module docstring for what each choice means).

    ``lr``: 1e-4..5e-4 is the range the Med-SA / SAMUS / AutoSAM recipes use; ``warmup_steps`` None = 5 % of
    all steps. ``cache_embeddings`` None = automatic (on when the recipe leaves the encoder frozen).
    ``depth_chunk``: planes per SD-Trans chunk (``medsa-3d``); a batch is then ``batch_size`` chunks.
    ``peft``: extra :class:`~MedSAMAdapterLib.models.peft.PeftConfig` fields (``adapter_ratio``, ``lora_rank``...).
    ``cache_dir`` None = ``engine.cache.default_cache_dir() / "embeddings"`` (shared with interactive sessions);
    ``cache_on_disk`` False keeps cached embeddings in memory only (``cache_memory_bytes`` must then hold them).
    ``init_adapter``: an adapter file to start from instead of a fresh surgery (e.g. the shipped click adapter, so
    a few-shot run keeps working clicks). Its surgery is kept; ``recipe`` decides what trains (``decoder`` on a
    ``medsa`` adapter trains its decoder side on cached embeddings of its frozen adapted encoder).
    """

    recipe: str = "decoder"
    model: str = "litemedsam"
    weights: str | None = None
    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 4
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    gradient_checkpointing: bool = False
    cache_embeddings: bool | None = None
    cache_dir: str | None = None
    cache_on_disk: bool = True
    cache_memory_bytes: int = 2 * 1024**3
    embed_batch_size: int = 4
    depth_chunk: int = 4
    peft: dict[str, Any] = dataclasses.field(default_factory=dict)
    prompt: PromptPolicy = dataclasses.field(default_factory=PromptPolicy)
    iou_loss_weight: float = 1.0
    val_slices: int | None = 32
    val_every: int = 1
    baseline_validation: bool = True
    patience: int | None = 5
    select_metric: str = "mean"
    intensity: str = "auto"
    init_adapter: str | None = None

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise InputError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if self.select_metric not in SELECT_METRICS:
            raise InputError(f"select_metric must be one of {', '.join(SELECT_METRICS)}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "val_every", "depth_chunk", "embed_batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise InputError("lr must be > 0, weight_decay >= 0 and min_lr_ratio in [0, 1]")
        if isinstance(self.prompt, dict):
            self.prompt = PromptPolicy(**self.prompt)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return max(0, int(self.warmup_steps))
        return max(1, int(round(0.05 * self.total_steps)))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["prompt"] = self.prompt.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
