"""Train an automatic (prompt-free) segmentation head on cached embeddings of a frozen encoder (AutoSAM).

    split = build_auto_split("Dataset001_ACDC", split=SplitOptions(max_train_patients=3, val_patients=10))
    result = train_auto(AutoTrainConfig(head="vit"), split.train, split.val, "runs/acdc_vit",
                        labels=split.labels, data_description=split.description)
    result.model_path      # runs/acdc_vit/auto_model.safetensors (+ .json model card)

Choices:

- **Frozen encoder, embeddings cached**: every plane (axis 0) of every training and validation case is embedded
  once with ``VolumeEmbedder`` into the embedding cache (memory + fp16 disk, keyed on the base model's
  fingerprint, so the entries are shared with interactive sessions and with later runs); the head then trains on
  the cached tensors only. All planes are used, with or without labels (the head must also say "nothing here").
  No image-level augmentation (it would invalidate the cache); optional channel dropout on the embeddings.
- **Targets**: every selected label is one class (class 0 = background, other label values -> background), in
  one pass. The label plane is sampled with *nearest* neighbour onto the low-res grid (4x the embedding grid) of
  model space: the geometry of ``prepare_slice`` / ``SliceTransform`` (resize longest side, pad bottom/right;
  the padding is background), low-res pixel centres mapped back to the slice.
- **Loss**: MONAI ``DiceCELoss(softmax=True, to_onehot_y=True, include_background=False, batch=True)`` on the
  (B, K, 4E, 4E) logits (cross-entropy over all K classes). ``batch=True`` computes each class's Dice over the
  whole batch: with per-plane Dice, a class absent from a plane (RV at the apex, any class on an empty plane)
  costs ~1 for *any* probability mass, which drives small classes to "never" - the heads collapsed to all
  background that way. Background is left out of the Dice term (as in AutoSAM); CE still covers it.
- **Optimiser**: AdamW (no decay on biases, norms, tokens), linear warm-up then cosine decay per step (the
  fine-tuning trainer's schedule), gradient clipping.
- **Validation** every ``val_every`` epochs on the held-out cases: each case is predicted plane by plane exactly as
  at inference (logits -> ``SliceTransform.logits_to_slice`` -> argmax on the slice grid), then 3D Dice per class
  per case (both empty = 1), averaged over cases; ``dice_mean`` (over classes) picks the best epoch, which is saved
  as ``<run_dir>/auto_model.safetensors`` + ``.json``; ``patience`` epochs without improvement stop the run.
  Without validation cases the last epoch is saved.
- **Zoom pass** (``roi_margin``, ``engine/roi.py``): the training planes also include one crop of every training
  case (and augmented copy) around its ground truth, with a random margin and shift, never narrower than the
  encoder's input (planes already that small get no crop and the run is an ordinary one-pass run); the validation cases are also
  cropped around their ground truth with the margin itself (what inference draws around a perfect first pass), and
  the Dice on those crops (``val_roi_dice_*``, an oracle-box score of the second pass) picks the best epoch. The
  real two-pass result of the saved model is what ``evaluate --protocol auto`` scores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine.atomic import write_text_atomic
from ..engine.preprocessing import SliceTransform
from ..errors import InputError
from .datasets import SLICE_AXIS, TrainingCase, onto_one_orientation
from .splits import SplitOptions, choose_split
from .common import TrainEvent, dice_np, finite_or_none, lr_lambda, nanmean, param_groups, resolve_device

MODEL_STEM = "auto_model"
DEFAULT_LR = {"vit": 5e-4, "cnn": 3e-3, "linear": 1e-2}
ProgressCallback = Callable[[TrainEvent], None]


@dataclasses.dataclass
class AutoTrainConfig:
    """Settings of one head training (see the module docstring).

    ``lr`` None = per head type (``DEFAULT_LR``). ``warmup_epochs`` of linear warm-up, then cosine to
    ``min_lr_ratio`` x lr. ``patience``: validations without improvement before stopping (None/0 = never),
    not before ``min_epochs`` (a few-shot head is often worse than its random start for the first epochs).
    ``head_options`` go to the head's constructor (e.g. ``{"channels": [64, 32, 16]}`` for the CNN head,
    ``{"depth": 2}`` for the ViT head).
    ``store_dtype`` float16 halves the saved file. ``init_from_base`` (ViT head): start from the base model's mask
    decoder weights. ``single_component``: class names / values (or ``all``) kept to their largest 3D component at
    inference and validation. ``augment``: randomly transformed copies of each training case (``augment.py``),
    embedded once like the originals. ``ema``: decay of an exponential moving average of the head's weights
    (per step, e.g. 0.99; 0 = off); the average is what is validated and saved, which damps the epoch-to-epoch
    swings of few-shot runs. ``roi_margin``: also train (and select) for the zoomed second pass (module docstring).
    """

    head: str = "vit"
    context: bool = False
    head_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: str = "litemedsam"
    weights: str | None = None
    epochs: int = 50
    batch_size: int = 4
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    embedding_dropout: float = 0.0
    patience: int | None = 10
    min_epochs: int = 10
    val_every: int = 1
    seed: int = 0
    device: str = "auto"
    intensity: str = "auto"
    cache_dir: str | None = None
    cache_on_disk: bool = True
    embed_batch_size: int = 2
    init_from_base: bool = True
    store_dtype: str = "float32"
    single_component: tuple[str, ...] = ()
    augment: int = 0
    augment_rotate: float = 15.0
    ema: float = 0.0
    roi_margin: float | None = None

    def __post_init__(self) -> None:
        from ..models.auto_heads import HEAD_TYPES

        if self.head not in HEAD_TYPES:
            raise InputError(f"unknown head {self.head!r}; choose one of {', '.join(HEAD_TYPES)}")
        for name in ("epochs", "batch_size", "val_every", "embed_batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.augment) < 0:
            raise InputError(f"augment must be >= 0, got {self.augment}")
        if not 0 <= float(self.augment_rotate) <= 180:
            raise InputError(f"augment_rotate must be in [0, 180] degrees, got {self.augment_rotate}")
        if self.roi_margin is not None and not 0 <= float(self.roi_margin) <= 2:
            raise InputError(f"roi_margin must be in [0, 2] (a fraction of the structure's size), got {self.roi_margin}")
        if not 0.0 <= float(self.ema) < 1.0:
            raise InputError(f"ema must be in [0, 1) (0 = off), got {self.ema}")
        self.single_component = tuple(str(v) for v in self.single_component)
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1 or not 0 <= self.embedding_dropout < 1:
            raise InputError("weight_decay must be >= 0, min_lr_ratio in [0, 1], embedding_dropout in [0, 1)")
        if self.store_dtype not in ("float32", "float16"):
            raise InputError(f"store_dtype must be float32 or float16, got {self.store_dtype!r}")

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.head])

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lr"] = self.learning_rate
        return out


# ---------------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class AutoSplit:
    """Training / validation cases (``TrainingCase``, all labels as classes) + the description for the card."""

    train: list[TrainingCase]
    val: list[TrainingCase]
    labels: dict[int, str]
    description: dict[str, Any]


def build_auto_split(
    root: str | Path,
    labels: Sequence[str | int] | None = None,
    split: SplitOptions = SplitOptions(),
    intensity: str = "auto",
) -> AutoSplit:
    """Cases of one nnU-Net raw folder, split by patient (``choose_split`` with ``split``), read into memory."""
    from ..data.nnunet import default_group, open_dataset
    from .datasets import load_nnunet_cases, resolve_labels

    dataset = open_dataset(root)
    chosen = resolve_labels(dataset, labels)
    if not chosen:
        raise InputError(f"none of the labels {list(labels or [])} exists in {dataset.name} "
                         f"(labels: {dataset.labels})")
    train, val = choose_split(list(dataset.cases), split)
    if not train:
        raise InputError(f"no training cases left in {dataset.name}")
    description = {
        "source": "nnunet", "dataset": dataset.name, "root": str(Path(root).resolve()),
        "dimensionality": dataset.dimensionality, "labels": {str(v): n for v, n in chosen.items()},
        "modality": next(iter(dataset.channel_names.values()), None), "train_cases": train, "val_cases": val,
        "train_patients": sorted({default_group(c) for c in train}),
        "val_patients": sorted({default_group(c) for c in val}),
        **split.describe(), "licence": dataset.metadata.get("licence"), "intensity": intensity,
        "slice_axis": SLICE_AXIS,
    }
    return AutoSplit(load_nnunet_cases(dataset, train, chosen, intensity),
                     load_nnunet_cases(dataset, val, chosen, intensity) if val else [], chosen, description)


def nearest_model_target(classes2d: np.ndarray, transform: SliceTransform, size: int | None = None) -> np.ndarray:
    """(H, W) class plane -> (L, L) class plane on the low-res grid of model space, nearest neighbour.

    Low-res pixel centres are mapped through the resize-longest-side + bottom/right-pad geometry back to the
    slice; centres in the padding are background (0).
    """
    plane = np.asarray(classes2d)
    if plane.shape != transform.original_hw:
        raise InputError(f"plane shape {plane.shape} does not match the slice {transform.original_hw}")
    size = int(size or transform.low_res_size)
    centres = (np.arange(size) + 0.5) * (transform.image_size / size)  # model-space pixel coordinates
    ry, rx = transform.ratios_yx
    rh, rw = transform.resized_hw
    rows_ok, cols_ok = centres < rh, centres < rw
    rows = np.minimum((centres[rows_ok] / ry).astype(np.int64), plane.shape[0] - 1)
    cols = np.minimum((centres[cols_ok] / rx).astype(np.int64), plane.shape[1] - 1)
    out = np.zeros((size, size), np.uint8)
    out[np.ix_(rows_ok, cols_ok)] = plane[np.ix_(rows, cols)]
    return out


@dataclasses.dataclass
class EmbeddedPlanes:
    """Every axis-0 plane of some cases: embeddings (fp16), low-res class targets, neighbours, transforms."""

    embeddings: Tensor  # (N, C, E, E) float16
    targets: Tensor  # (N, L, L) uint8 class indices
    previous: Tensor  # (N,) index of plane k-1 of the same case (clamped)
    following: Tensor  # (N,) index of plane k+1 of the same case (clamped)
    transforms: list[SliceTransform]
    cases: list[tuple[str, int, int]]  # (case id, first plane index, plane count)
    class_maps: list[np.ndarray]  # per case, (k, j, i) class indices on the image grid

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def inputs(self, index: Tensor, context: bool) -> Tensor:
        """(B, C, E, E) float32, or (B, 3C, E, E) [previous, centre, next] with context."""
        centre = self.embeddings[index].float()
        if not context:
            return centre
        return torch.cat([self.embeddings[self.previous[index]].float(), centre,
                          self.embeddings[self.following[index]].float()], dim=1)


def class_lut(label_values: Sequence[int]) -> np.ndarray:
    """Lookup table label value -> class index (1..K-1 in the given order; everything else 0)."""
    lut = np.zeros(max(int(v) for v in label_values) + 1, np.uint8)
    for k, value in enumerate(label_values, start=1):
        lut[int(value)] = k
    return lut


def to_classes(label_map: np.ndarray, lut: np.ndarray) -> np.ndarray:
    values = np.asarray(label_map).astype(np.int64)
    return np.where(values < len(lut), lut[np.clip(values, 0, len(lut) - 1)], 0).astype(np.uint8)


def embed_planes(cases: Sequence[TrainingCase], label_values: Sequence[int], model: torch.nn.Module, cache: Any,
                 intensity: str, batch_size: int,
                 progress: Callable[[int, int], None] | None = None) -> tuple[EmbeddedPlanes, int]:
    """Embed (once, through the cache) every plane of ``cases``; returns the planes and how many were computed.

    One ``VolumeEmbedder`` per case, as the inference engine uses, so the cache entries are shared with it.
    """
    from ..engine.embedder import VolumeEmbedder
    from ..engine.preprocessing import IntensityPolicy

    policy = IntensityPolicy.parse(intensity)
    embedders = []
    for case in cases:
        emb = VolumeEmbedder(case.volume, model, cache, policy, batch_size)
        emb.display = case.display  # same values (same policy): share the array instead of a second copy
        embedders.append(emb)
    total = sum(c.slice_count for c in cases)
    computed = done = 0
    for emb, case in zip(embedders, cases):
        base = done
        computed += emb.embed_indices(SLICE_AXIS, list(range(case.slice_count)),
                                      (lambda d, _t, _b=base: progress(_b + d, total)) if progress else None)
        done += case.slice_count
    lut = class_lut(label_values)
    embeddings, targets, previous, following, transforms, spans, maps = [], [], [], [], [], [], []
    for emb_source, case in zip(embedders, cases):
        start, n = len(embeddings), case.slice_count
        classes = to_classes(case.labels, lut)
        maps.append(classes)
        spans.append((case.case_id, start, n))
        for s in range(n):
            emb = emb_source.embedding(SLICE_AXIS, s).detach().cpu()
            tr = emb_source.transform(SLICE_AXIS, s)
            embeddings.append(emb[0].to(torch.float16))
            transforms.append(tr)
            targets.append(torch.from_numpy(nearest_model_target(classes[s], tr, 4 * emb.shape[-1])))
            previous.append(start + max(s - 1, 0))
            following.append(start + min(s + 1, n - 1))
    if not embeddings:
        raise InputError("no planes to embed")
    return EmbeddedPlanes(torch.stack(embeddings), torch.stack(targets), torch.tensor(previous),
                          torch.tensor(following), transforms, spans, maps), computed


# ---------------------------------------------------------------------------------------------- training
@dataclasses.dataclass
class AutoTrainResult:
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    model_path: Path
    model: Any  # models.auto_heads.AutoModel (best epoch, eval mode)
    stats: dict[str, Any]


def clean_class_maps(preds: Sequence[np.ndarray], classes: Sequence[Any]) -> list[np.ndarray]:
    """Class-index maps (class k = ``classes[k-1]``) with the single-component classes cleaned as at inference."""
    from ..engine.postprocess import keep_largest_component

    indices = [k for k, c in enumerate(classes, start=1) if c.single_component]
    return [keep_largest_component(p, indices) if indices else p for p in preds]


@torch.no_grad()
def predict_cases(head: torch.nn.Module, planes: EmbeddedPlanes, batch_size: int = 8,
                  classes: Sequence[Any] = ()) -> list[np.ndarray]:
    """Class maps (k, j, i) of every case of ``planes``, predicted as at inference (logits mapped to the slice,
    argmax there, single-component ``classes`` cleaned)."""
    head.eval()
    ref = next(head.parameters())
    out = []
    for _, start, n in planes.cases:
        shape = planes.transforms[start].original_hw
        pred = np.zeros((n, *shape), np.uint8)
        for b in range(0, n, batch_size):
            index = torch.arange(start + b, start + min(n, b + batch_size))
            logits = head(planes.inputs(index, head.context).to(ref.device, ref.dtype)).float().cpu()
            for m, i in enumerate(index.tolist()):
                pred[i - start] = planes.transforms[i].logits_to_slice(logits[m: m + 1])[0].argmax(0).numpy()
        out.append(pred)
    return clean_class_maps(out, classes)


def dice_per_class(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], names: Sequence[str]
                   ) -> dict[str, float]:
    """Mean over cases of the 3D Dice of each class (class k = ``names[k-1]``) + ``dice_mean`` over classes."""
    out: dict[str, float] = {}
    for k, name in enumerate(names, start=1):
        out[f"dice_{name}"] = nanmean(dice_np(p == k, t == k) for p, t in zip(preds, truths))
    out["dice_mean"] = nanmean(out[f"dice_{n}"] for n in names)
    return out


def train_auto(
    config: AutoTrainConfig,
    train_cases: Sequence[TrainingCase],
    val_cases: Sequence[TrainingCase] | None,
    run_dir: str | Path,
    labels: dict[int, str],
    model: torch.nn.Module | None = None,
    progress: ProgressCallback | None = None,
    data_description: dict[str, Any] | None = None,
) -> AutoTrainResult:
    """Train one head (see the module docstring); writes the best model, ``history.json`` and
    ``training_curve.png`` into ``run_dir``. ``labels``: {label value: class name}, in class order.
    ``model``: the frozen base model (None loads ``config.model``)."""
    from monai.losses import DiceCELoss

    from ..engine.cache import EmbeddingCache, default_cache_dir
    from ..models.auto_heads import AutoModel, build_head, save_auto_model
    from ..models.checkpoints import base_identity
    from ..models.registry import load_model, model_fingerprint

    def emit(kind: str, **fields: Any) -> None:
        if progress is not None:
            fields.setdefault("epochs", config.epochs)
            progress(TrainEvent(kind, **fields))

    if not labels:
        raise InputError("no classes to train: give at least one label")
    run_dir = Path(run_dir)
    cfg = config
    device = resolve_device(cfg.device)
    stats: dict[str, Any] = {}
    emit("setup", message=f"preparing {cfg.model} (frozen) + {cfg.head} head on {device}")
    if model is None:
        model = load_model(cfg.model, weights=cfg.weights, device="cpu")
    model.requires_grad_(False)
    model.eval()
    base_name, base_sha = base_identity(model)
    fingerprint = model_fingerprint(model)
    names = [labels[v] for v in sorted(labels)]
    values = sorted(labels)

    # --- one orientation for every case (recorded in the card; inference brings volumes onto it) --------------
    orientation, train_cases, val_cases = onto_one_orientation(train_cases, val_cases)
    stats["orientation"] = orientation

    # --- embeddings (once) -----------------------------------------------------------------------------
    embedded_cases = list(train_cases)  # the given cases (they go to the card) + their augmented copies
    if cfg.augment:
        from .augment import AugmentSettings, augmented_copies

        emit("setup", message=f"making {cfg.augment} augmented copies of each training case")
        copies = augmented_copies(train_cases, cfg.augment, cfg.seed, cfg.intensity,
                                  AugmentSettings(rotate_degrees=float(cfg.augment_rotate)))
        embedded_cases += copies
        stats["augmented_cases"] = len(copies)
    roi_val_cases: list[TrainingCase] = []
    if cfg.roi_margin is not None:
        from .augment import roi_copies

        side = int(model.image_size)
        crops = roi_copies(embedded_cases, cfg.roi_margin, side, cfg.seed, cfg.intensity)
        embedded_cases += crops
        roi_val_cases = roi_copies(val_cases or [], cfg.roi_margin, side, cfg.seed, cfg.intensity, jitter=False)
        stats["roi_cases"] = {"train": len(crops), "val": len(roi_val_cases)}
    directory = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir() / "embeddings"
    cache = EmbeddingCache(directory, memory_bytes=256 * 2**20, use_disk=cfg.cache_on_disk)
    started = time.perf_counter()
    total = sum(c.slice_count for c in [*embedded_cases, *(val_cases or []), *roi_val_cases])

    def report(offset: int) -> Callable[[int, int], None]:
        return lambda done, _t: emit("embed", done=offset + done, total=total, message="embedding planes (once)")

    train, computed = embed_planes(embedded_cases, values, model, cache, cfg.intensity, cfg.embed_batch_size,
                                   report(0))
    val, computed_val = (embed_planes(val_cases, values, model, cache, cfg.intensity,
                                      cfg.embed_batch_size, report(len(train))) if val_cases else (None, 0))
    val_roi, computed_roi = (embed_planes(roi_val_cases, values, model, cache, cfg.intensity, cfg.embed_batch_size,
                                          report(len(train) + (len(val) if val else 0)))
                             if roi_val_cases else (None, 0))
    stats.update(embedded_planes=computed + computed_val + computed_roi, cached_planes=total,
                 embedding_seconds=time.perf_counter() - started, train_planes=len(train),
                 val_planes=len(val) if val is not None else 0)

    # --- head, optimiser ---------------------------------------------------------------------------------
    c, e = int(train.embeddings.shape[1]), int(train.embeddings.shape[-1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = build_head(cfg.head, len(names) + 1, c, e, cfg.context, **cfg.head_options)
    if cfg.head == "vit" and cfg.init_from_base:
        stats["initialised_from_base"] = len(head.init_from_base(model, seed=cfg.seed))
    head.to(device)
    averaged = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        averaged = AveragedModel(head, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    scored_head = averaged.module if averaged is not None else head  # what is validated and saved
    stats["parameters"] = sum(p.numel() for p in head.parameters())
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(param_groups(head, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total_steps, cfg.min_lr_ratio))
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True, include_background=False, batch=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    from ..models.volumetric import classes_for

    classes = classes_for(labels, cfg.single_component, [c.labels for c in train_cases])
    model_path = run_dir / f"{MODEL_STEM}.safetensors"
    training_card = {"config": cfg.to_dict(), "data": data_description or {
        "train_cases": [c.case_id for c in train_cases], "val_cases": [c.case_id for c in (val_cases or [])]},
        "planes": {"train": len(train), "val": stats["val_planes"]}}

    def bundle() -> AutoModel:
        return AutoModel(scored_head, base_name, base_sha, classes, fingerprint, cfg.intensity,
                         orientation=orientation, roi_margin=cfg.roi_margin)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    bad_epochs = 0
    stopped_early = False
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        order = torch.randperm(len(train), generator=generator)
        losses: list[float] = []
        t0 = time.perf_counter()
        for step in range(steps_per_epoch):
            index = order[step * cfg.batch_size: (step + 1) * cfg.batch_size]
            x = train.inputs(index, cfg.context).to(device)
            if cfg.embedding_dropout:
                x = F.dropout2d(x, cfg.embedding_dropout, training=True)
            y = train.targets[index].long().unsqueeze(1).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(head(x), y)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(head)
            losses.append(float(loss.detach()))
            emit("step", epoch=epoch, step=step + 1, steps=steps_per_epoch, loss=losses[-1],
                 lr=scheduler.get_last_lr()[0])
        entry: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": scheduler.get_last_lr()[0],
                                 "train_seconds": time.perf_counter() - t0,
                                 "seconds_per_plane": (time.perf_counter() - t0) / len(train)}
        if val is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            t1 = time.perf_counter()
            metrics = dice_per_class(predict_cases(scored_head, val, classes=classes), val.class_maps, names)
            entry.update({f"val_{k}": v for k, v in metrics.items()})
            if val_roi is not None:
                zoomed = dice_per_class(predict_cases(scored_head, val_roi, classes=classes), val_roi.class_maps, names)
                entry.update({f"val_roi_{k}": v for k, v in zoomed.items()})
            entry["val_seconds"] = time.perf_counter() - t1
            emit("validation", epoch=epoch, metrics=metrics)
        history.append(entry)
        selector = "val_roi_dice_mean" if val_roi is not None else "val_dice_mean"
        score = entry.get(selector)
        improved = False
        if val is None:
            improved = epoch == cfg.epochs
        elif score is not None and math.isfinite(score):
            if best is None or score > best["score"]:
                improved, bad_epochs = True, 0
            else:
                bad_epochs += 1
        if improved:
            best = {"epoch": epoch, "score": score if score is not None else -entry["loss"],
                    "by": selector if val is not None else "last_epoch",
                    "metrics": {k: v for k, v in entry.items() if k.startswith("val_") or k == "loss"}}
            save_auto_model(model_path, bundle(), training_card,
                            finite_or_none({"selected_epoch": epoch, **best["metrics"]}), cfg.store_dtype)
        _write_outputs(run_dir, cfg, history, best, stats)
        emit("epoch", epoch=epoch, loss=entry["loss"], lr=entry["lr"], metrics=dict(entry))
        if val is not None and cfg.patience and bad_epochs >= cfg.patience and epoch >= cfg.min_epochs:
            stopped_early = True
            emit("early_stop", epoch=epoch, message=f"no improvement of {selector} for {cfg.patience} epochs")
            break
    stats["stopped_early"] = stopped_early
    _write_outputs(run_dir, cfg, history, best, stats)
    from ..models.auto_heads import load_auto_model

    result_model = load_auto_model(model_path, device=device)
    emit("done", epoch=len(history), metrics={"best": best}, message=str(model_path))
    return AutoTrainResult(history, best, model_path, result_model, stats)


# ---------------------------------------------------------------------------------------------- files
def _write_outputs(run_dir: Path, cfg: AutoTrainConfig, history: list[dict[str, Any]], best: dict[str, Any] | None,
                   stats: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "history.json", json.dumps(finite_or_none(
        {"config": cfg.to_dict(), "best": best, "stats": stats, "history": history}), indent=2, default=str) + "\n")
    if history:
        from .reporting import write_auto_curve

        write_auto_curve(history, run_dir / "training_curve.png")
