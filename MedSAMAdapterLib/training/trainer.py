"""Fine-tuning loop: PEFT recipe + simulated prompts + DiceCE, validation, resume, adapter export, report.

One ``Trainer`` per run directory::

    split = datasets.build_nnunet_split(["Dataset101_BUSI"], splits.SplitOptions(val_fraction=0.2))
    trainer = Trainer(TrainConfig(recipe="decoder", epochs=5), split.train, split.val, "runs/busi",
                      data_description=split.description)
    history = trainer.fit(progress=print)            # or fit(resume=True) after an interruption

Choices (documented in the run's ``report.md`` too):

- **Recipes** (``models.peft``): ``decoder`` / ``medsa`` / ``medsa-3d`` / ``lora``; surgery with
  ``apply_peft`` (adapter init seeded by ``seed``), trainable set by ``configure_trainable``.
- **Cached-embedding mode** (automatic when the recipe leaves the encoder frozen, i.e. ``decoder``): every plane a
  sample can come from (and every validation plane) is embedded once with ``VolumeEmbedder`` into the embedding
  cache (memory LRU + fp16 disk), keyed on the *base* model's fingerprint, so the entries are shared with
  interactive sessions and survive a resume; training then runs only the prompt encoder + mask decoder.
  Encoder recipes encode every batch with gradient (optional gradient checkpointing of the encoder blocks).
- **Loss**: MONAI ``DiceCELoss(sigmoid=True, squared_pred=True)`` on the decoder's *low-res* logits (4 x the
  embedding grid: 256 x 256 for LiteMedSAM and SAM-1024, i.e. MedSAM's training resolution) against the label
  mapped into model space (resized like the image, zero padding, area-averaged to the logit grid: a soft target
  that keeps the sub-pixel boundary). Empty targets (edge samples) get the BCE term only (Dice is undefined).
  Single-click prompts use multimask output and the minimum loss over the three masks (SAM); an MSE loss
  (``iou_loss_weight``) trains the predicted IoU that inference uses to pick among them.
- **Optimiser**: AdamW (no weight decay on biases, norms, embeddings and tokens), linear warm-up then cosine
  decay to ``min_lr_ratio`` x lr, per step; gradient clipping; bf16 autocast of the image encoder on CUDA
  (prompt encoder and decoder stay float32).
- **Validation** every ``val_every`` epochs on a fixed list of held-out planes (``SliceDataset.validation_items``):
  Dice with a tight box, and after 1, 3 and 5 clicks (centre click, then largest-error clicks with the previous
  mask fed back, multimask for the first click) - the evaluation protocol on single planes. The best epoch
  (``select_metric``) is exported with ``checkpoints.save_adapter``; ``patience`` epochs without improvement stop.
- **Resume**: ``<run_dir>/last.pt`` (trained tensors, optimiser, scheduler, epoch, RNG, history) is replaced
  atomically after every epoch. Sampling and prompts are a function of (seed, epoch, index), so a resumed run
  continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.atomic import write_text_atomic
from ..engine.focus import TRAINING_MARGINS, TRAINING_ZOOM, FocusPolicy
from ..engine.preprocessing import SliceTransform, prepare_slice, resize_bilinear
from ..errors import InputError
from ..evaluation.clicks import first_click, next_click, tight_box
from ..models.peft.text import understood
from .common import (ProgressCallback, TrainEvent, dice_np, enable_gradient_checkpointing, finite_or_none, lr_lambda,
                     nanmean, param_groups, resolve_device, restore_rng, rng_state)
from .common import load_state as _load_state
from .common import save_state as _write_state
from .config import TrainConfig
from .datasets import SliceDataset, SliceSample
from .embeddings import CachedEmbeddings
from .prompts import PromptSimulator, SimulatedPrompt

CLICK_LEVELS = (1, 3, 5)
STATE_FILE = "last.pt"
ADAPTER_STEM = "best_adapter"
STATE_FORMAT = "medsam-adapter/train-state"
STATE_VERSION = 1
#: Settings that must not change when a run is resumed (they change what the saved tensors mean).
RESUME_FIXED = ("recipe", "model", "weights", "seed", "batch_size", "steps_per_epoch", "depth_chunk", "peft",
                "init_adapter")


# ---------------------------------------------------------------------------------------------- helpers
def model_space_target(mask: np.ndarray, transform: SliceTransform, size: int | None = None) -> Tensor:
    """Binary (H, W) mask -> (1, 1, L, L) soft target in [0, 1] on the low-res logit grid of model space.

    Resized like the image (antialiased bilinear to ``resized_hw``), zero-padded bottom/right (padding is
    background), then area-averaged to L x L (``transform.low_res_size`` by default).
    """
    m = torch.from_numpy(np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.float32))[None, None]
    if tuple(m.shape[-2:]) != transform.original_hw:
        raise InputError(f"mask shape {tuple(m.shape[-2:])} does not match the slice {transform.original_hw}")
    x = resize_bilinear(m, transform.resized_hw).clamp_(0.0, 1.0)
    s = transform.image_size
    x = F.pad(x, (0, s - transform.resized_hw[1], 0, s - transform.resized_hw[0]))
    size = int(size or transform.low_res_size)
    return F.interpolate(x, (size, size), mode="area") if size != s else x


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Fine-tunes one model on ``train_data`` (and validates on ``val_data``) into ``run_dir``.

    ``model``: a *base* ``PromptableSam`` (it is modified in place by the recipe's surgery); None loads
    ``config.model`` (``config.weights``) from the registry. ``data_description`` goes to the model card and
    report (``DataSplit.description``); it defaults to the datasets' own summaries.
    """

    def __init__(self, config: TrainConfig, train_data: SliceDataset, val_data: SliceDataset | None = None,
                 run_dir: str | Path = "runs/finetune", model: nn.Module | None = None,
                 data_description: dict[str, Any] | None = None) -> None:
        self.config = config
        self.train_data = train_data
        self.val_data = val_data
        self.run_dir = Path(run_dir)
        self.data_description = data_description or {
            "train": train_data.describe(), "val": val_data.describe() if val_data else None}
        self._given_model = model
        self.model: nn.Module | None = None
        self.history: list[dict[str, Any]] = []
        self.baseline: dict[str, Any] | None = None
        self.best: dict[str, Any] | None = None
        self.epoch = 0
        self.global_step = 0
        self.stats: dict[str, Any] = {"embedded_planes": 0, "embedding_seconds": 0.0}
        self._stop_requested = False
        self._progress: ProgressCallback | None = None
        self._ready = False

    # --- public ---------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def adapter_path(self) -> Path:
        return self.run_dir / f"{ADAPTER_STEM}.safetensors"

    def request_stop(self) -> None:
        """Ask a running ``fit`` to stop after the current step (the unfinished epoch is not saved)."""
        self._stop_requested = True

    def fit(self, progress: ProgressCallback | None = None, resume: bool = False) -> list[dict[str, Any]]:
        """Train up to ``config.epochs`` epochs; returns the history (one dict per epoch).

        ``resume=True`` continues from ``<run_dir>/last.pt`` (InputError if there is none). Exceptions raised by
        ``progress`` abort training; the state of the last finished epoch stays on disk.
        """
        self._progress = progress
        self._stop_requested = False
        self._setup(resume)
        cfg = self.config
        if self.epoch == 0 and cfg.baseline_validation and self.val_items and self.baseline is None:
            self.baseline = self.validate()
            self._emit("validation", epoch=0, metrics=self.baseline, message="baseline (before training)")
        stopped_early = False
        while self.epoch < cfg.epochs and not self._stop_requested:
            epoch = self.epoch + 1
            entry = self._train_epoch(epoch)
            if entry is None:  # stop requested mid-epoch
                break
            if self.val_items and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
                started = time.perf_counter()
                metrics = self.validate()
                entry.update({f"val_{k}": v for k, v in metrics.items()})
                entry["val_seconds"] = time.perf_counter() - started
                self._emit("validation", epoch=epoch, metrics=metrics)
            improved = self._update_best(entry)
            self.history.append(entry)
            self.epoch = epoch
            if improved:
                self._save_adapter(entry)
            self._save_state()
            self._write_outputs()
            self._emit("epoch", epoch=epoch, loss=entry["loss"], lr=entry["lr"], metrics=dict(entry))
            if self._patience_exhausted():
                stopped_early = True
                self._emit("early_stop", epoch=epoch, message=f"no improvement of val {cfg.select_metric} dice "
                                                              f"for {cfg.patience} epochs")
                break
        self._write_outputs(stopped_early=stopped_early)
        self._emit("done", epoch=self.epoch, metrics={"best": self.best}, message=str(self.adapter_path))
        return self.history

    # --- setup ----------------------------------------------------------------------------------------
    def _setup(self, resume: bool) -> None:
        if self._ready:
            if resume:
                raise InputError("this Trainer is already set up; create a new one to resume from disk")
            return
        cfg = self.config
        if resume and not self.state_path.is_file():
            raise InputError(f"nothing to resume: {self.state_path} does not exist")
        saved = self._read_state() if resume else None
        self.device = resolve_device(cfg.device)
        self._emit("setup", message=f"preparing model {cfg.model} ({cfg.recipe}) on {self.device}")
        self.model = self._build_model()
        self.simulator = PromptSimulator(cfg.prompt)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.warmup, cfg.total_steps, cfg.min_lr_ratio))
        from monai.losses import DiceCELoss

        self.dice_ce = DiceCELoss(sigmoid=True, squared_pred=True)
        self.val_items = self.val_data.validation_items(cfg.val_slices, cfg.seed) if self.val_data else []
        if saved is not None:
            self._restore(saved)
        else:
            torch.manual_seed(cfg.seed)
        self._prepare_embeddings()
        self._ready = True

    def _build_model(self) -> nn.Module:
        from ..models.peft import PeftConfig, apply_peft, configure_trainable
        from ..models.registry import load_model

        cfg = self.config
        model = self._given_model
        if model is None:
            model = load_model(cfg.model, weights=cfg.weights, device="cpu")
        if getattr(model, "peft_config", None) is not None:
            raise InputError("the model given to the Trainer already carries an adapter; give the base model")
        if cfg.init_adapter:
            from ..models.checkpoints import attach_adapter

            attach_adapter(model, cfg.init_adapter)  # its surgery + tensors; a different base model is refused
        else:
            peft = PeftConfig(recipe=cfg.recipe, **{
                "depth_chunk": cfg.depth_chunk if cfg.recipe == "medsa-3d" else None, **cfg.peft})
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)  # adapter initialisation (e.g. LoRA A, HyP generator) is seeded
                apply_peft(model, peft)
        if cfg.prompt.text_fraction > 0:  # new names join the adapter's vocabulary, known ones keep their vectors
            from ..models.peft import apply_text_prompts

            apply_text_prompts(model, self._target_names(), model.peft_config.text_gain)
        self.parameter_report = configure_trainable(model, cfg.recipe)
        model.to(self.device)
        from ..engine.embedder import encoder_is_frozen

        frozen = encoder_is_frozen(model)
        self.cached = frozen if cfg.cache_embeddings is None else bool(cfg.cache_embeddings)
        if self.cached and not frozen:
            raise InputError(f"cached embeddings need a frozen encoder; recipe {cfg.recipe!r} trains the encoder")
        self.checkpointed_blocks = 0
        if cfg.gradient_checkpointing and not frozen:
            self.checkpointed_blocks = enable_gradient_checkpointing(model)
        return model

    def _prepare_embeddings(self) -> None:
        self.train_store = self.val_store = None
        if not self.cached:
            return
        from ..engine.cache import EmbeddingCache, default_cache_dir

        cfg = self.config
        directory = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir() / "embeddings"
        self.cache = EmbeddingCache(directory, memory_bytes=cfg.cache_memory_bytes, use_disk=cfg.cache_on_disk)
        started = time.perf_counter()
        jobs = [(self.train_data, self.train_data.candidate_slices())]
        if self.val_items:
            planes: dict[int, set[int]] = {}
            for item in self.val_items:
                planes.setdefault(item.case_index, set()).add(item.slice_index)
            jobs.append((self.val_data, {ci: sorted(v) for ci, v in sorted(planes.items())}))
        total = sum(len(v) for _, p in jobs for v in p.values())
        offset = 0
        for i, (dataset, planes) in enumerate(jobs):
            store = CachedEmbeddings(dataset, self.model, self.cache, cfg.intensity, cfg.embed_batch_size,
                                     self.device)

            def report(done: int, _total: int, _offset: int = offset) -> None:
                self._emit("embed", done=_offset + done, total=total, message="embedding planes (once)")

            self.stats["embedded_planes"] += store.precompute(planes, report)
            offset += sum(len(v) for v in planes.values())
            if i == 0:
                self.train_store = store
            else:
                self.val_store = store
        self.stats["cached_planes"] = total
        self.stats["embedding_seconds"] += time.perf_counter() - started

    # --- one epoch ------------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the image encoder on CUDA. The prompt encoder / mask decoder always run in float32:
        they are cheap, and bf16 would round the prompts' Fourier positional encoding (~3 significant digits)."""
        if self.device.type == "cuda" and self.config.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_epoch(self, epoch: int) -> dict[str, Any] | None:
        from ..models.peft import set_peft_train_mode

        cfg = self.config
        set_peft_train_mode(self.model)
        if self.cached:
            self.model.image_encoder.eval()
        losses: list[float] = []
        seg_losses: list[float] = []
        started = time.perf_counter()
        for step in range(cfg.steps_per_epoch):
            if self._stop_requested:
                return None
            loss, seg, n = self._train_step(epoch, step)
            losses.append(loss)
            seg_losses.append(seg)
            self.global_step += 1
            lr = self.scheduler.get_last_lr()[0]
            self._emit("step", epoch=epoch, step=step + 1, loss=loss, lr=lr, metrics={"samples": n})
        seconds = time.perf_counter() - started
        return {"epoch": epoch, "loss": float(np.mean(losses)), "seg_loss": float(np.mean(seg_losses)),
                "loss_first": losses[0], "loss_last": losses[-1],
                "lr": self.scheduler.get_last_lr()[0], "steps": len(losses), "train_seconds": seconds,
                "seconds_per_step": seconds / max(1, len(losses)), "global_step": self.global_step}

    def _batch(self, epoch: int, step: int) -> list[tuple[list[SliceSample], np.random.Generator]]:
        """``batch_size`` items (a chunk of planes for medsa-3d, else one plane), each with its own generator."""
        cfg = self.config
        items = []
        for i in range(cfg.batch_size):
            rng = self.train_data.rng_for(epoch, step * cfg.batch_size + i)
            if cfg.recipe == "medsa-3d":
                items.append((self.train_data.sample_chunk(rng, cfg.depth_chunk), rng))
            else:
                items.append(([self._maybe_focused(self.train_data.sample(rng), rng)], rng))
        return items

    def _maybe_focused(self, sample: SliceSample, rng: np.random.Generator) -> SliceSample:
        """With the policy's focus share, the sample seen through a window around its target like those a session
        zooms to (``engine/focus.py``), so the adapter learns the magnified view; large objects are never zoomed."""
        share = self.config.prompt.focus_fraction
        if share <= 0 or rng.random() >= share or not sample.target.any():
            return sample
        margin = float(rng.choice(TRAINING_MARGINS))
        window = FocusPolicy(margin=margin, **TRAINING_ZOOM).window(sample.target, np.zeros((0, 2)))
        return sample if window is None else sample.focused(window)

    def _train_step(self, epoch: int, step: int) -> tuple[float, float, int]:
        """One optimiser step; returns (loss, segmentation part of the loss, samples with a loss)."""
        cfg = self.config
        batch = self._batch(epoch, step)
        flat = [(s, rng) for samples, rng in batch for s in samples]
        self.optimizer.zero_grad(set_to_none=True)
        embeddings, transforms = self._embed([s for s, _ in flat], self.train_store, grad=not self.cached)
        losses, seg_losses = [], []
        for (sample, rng), emb, tr in zip(flat, embeddings, transforms):
            if not sample.target.any() and sample.prompt_mask is None:
                continue  # a plane of an SD-Trans chunk without the label: context only
            total, seg = self._sample_loss(sample, emb, tr, rng)
            losses.append(total)
            seg_losses.append(seg)
        loss = torch.stack(losses).mean()
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach()), float(np.mean(seg_losses)), len(losses)

    def _embed(self, samples: Sequence[SliceSample], store: CachedEmbeddings | None,
               grad: bool) -> tuple[list[Tensor], list[SliceTransform]]:
        """(1, 256, E, E) embedding + transform per sample; encoder recipes encode the batch here."""
        if store is not None:
            pairs = [store.get(s.case_index, s.slice_index, s.window) for s in samples]
            return [p[0] for p in pairs], [p[1] for p in pairs]
        spec = self.model.spec
        prepared = [prepare_slice(s.image, spec) for s in samples]
        images = torch.stack([t for t, _ in prepared]).to(self.device)
        with torch.set_grad_enabled(grad), self._autocast():
            embeddings = self.model.encode(images)
        embeddings = embeddings.float()
        return [embeddings[i: i + 1] for i in range(len(samples))], [tr for _, tr in prepared]

    def _sample_loss(self, sample: SliceSample, emb: Tensor, transform: SliceTransform,
                     rng: np.random.Generator) -> tuple[Tensor, float]:
        """(loss with gradient, its segmentation part as a float) of one sample."""
        cfg = self.config
        prompt = self.simulator.simulate(self.model, emb, sample.target, transform, rng, sample.prompt_mask,
                                         name=sample.name)
        low_res, iou = self.model.decode(emb, **prompt.model_inputs(self.device))
        target = model_space_target(sample.target, transform, low_res.shape[-1]).to(self.device)
        candidates = [self._seg_loss(low_res[:, k: k + 1], target) for k in range(low_res.shape[1])]
        best = int(torch.argmin(torch.stack([c.detach() for c in candidates])))
        loss = candidates[best]
        seg = float(loss.detach())
        if cfg.iou_loss_weight:
            with torch.no_grad():
                pred = low_res[:, best: best + 1] > 0
                hard = target > 0.5
                union = (pred | hard).sum()
                actual = (pred & hard).sum() / union if union > 0 else torch.ones((), device=self.device)
            loss = loss + cfg.iou_loss_weight * F.mse_loss(iou[0, best], actual.float())
        return loss, seg

    def _seg_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.sum() > 0:
            return self.dice_ce(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target)  # Dice is undefined for an empty target

    # --- validation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean Dice over the fixed validation planes: box, and after 1 / 3 / 5 clicks; plus the box loss."""
        model = self.model
        model.eval()
        rows: list[dict[str, float]] = []
        for samples, embeddings, transforms in self._val_batches():
            for sample, emb, tr in zip(samples, embeddings, transforms):
                rows.append(self._validate_one(sample, emb, tr))
        out = {k: nanmean(r[k] for r in rows) for k in rows[0]} if rows else {}
        if out:
            out["mean"] = nanmean(out[k] for k in ("box", *(f"clicks_{n}" for n in CLICK_LEVELS)))
            out["planes"] = float(len(rows))
        return out

    def _val_batches(self) -> Iterable[tuple[list[SliceSample], list[Tensor], list[SliceTransform]]]:
        items = self.val_items
        if self.cached:
            for s in items:
                emb, tr = self.val_store.get(s.case_index, s.slice_index)
                yield [s], [emb], [tr]
            return
        if self.config.recipe == "medsa-3d":
            yield from self._val_chunks()
            return
        size = self.config.embed_batch_size
        for i in range(0, len(items), size):
            chunk = items[i: i + size]
            embs, trs = self._embed(chunk, None, grad=False)
            yield chunk, embs, trs

    def _val_chunks(self) -> Iterable[tuple[list[SliceSample], list[Tensor], list[SliceTransform]]]:
        """SD-Trans models see planes in chunks of ``depth_chunk``: embed the chunk around each validation plane."""
        d = self.config.depth_chunk
        for s in self.val_items:
            case = self.val_data.cases[s.case_index]
            if case.slice_count < d:
                raise InputError(f"validation case {case.case_id} has {case.slice_count} planes, fewer than the "
                                 f"SD-Trans depth chunk {d}")
            start = int(np.clip(s.slice_index - d // 2, 0, case.slice_count - d))
            planes = [self.val_data.make_sample(s.case_index, i, s.label) for i in range(start, start + d)]
            embs, trs = self._embed(planes, None, grad=False)
            k = s.slice_index - start
            yield [s], [embs[k]], [trs[k]]

    def _predict(self, emb: Tensor, prompt: SimulatedPrompt) -> tuple[Tensor, np.ndarray, Tensor]:
        low_res, iou = self.model.decode(emb, **prompt.model_inputs(self.device))
        best = int(torch.argmax(iou[0])) if prompt.multimask else 0
        logits = low_res[:, best: best + 1].float()
        return logits, prompt.transform.logits_to_slice(logits)[0, 0].cpu().numpy() > 0, iou

    def _target_names(self) -> set[str]:
        """Names of every structure trained on: the text-prompt vocabulary."""
        names = {c.label_names.get(v, "") for c in self.train_data.cases for v in c.label_values}
        if not names - {""}:
            raise InputError("text prompts need named labels (dataset.json labels or --region NAME=...)")
        return names

    def _validate_one(self, sample: SliceSample, emb: Tensor, tr: SliceTransform) -> dict[str, float]:
        target = sample.target
        # names go with the prompts as the session sends them: whenever the model knows them
        text = sample.name if self.config.prompt.text_fraction > 0 and understood(self.model, sample.name) else None
        box = SimulatedPrompt("box", tr, box_rc=tuple(float(v) for v in tight_box(target)), text=text)
        logits, mask, _ = self._predict(emb, box)
        row = {"box": dice_np(mask, target),
               "loss": float(self._seg_loss(logits, model_space_target(target, tr, logits.shape[-1])
                                            .to(self.device)))}
        r, c = first_click(target)
        prompt = SimulatedPrompt("clicks", tr, clicks=[(r, c, True)], text=text)
        dices: list[float] = []
        while len(dices) < max(CLICK_LEVELS):
            logits, mask, _ = self._predict(emb, prompt)
            dices.append(dice_np(mask, target))
            click = next_click(target, mask) if len(dices) < max(CLICK_LEVELS) else None
            if click is None:  # perfect (or done): later click counts keep this Dice
                dices += [dices[-1]] * (max(CLICK_LEVELS) - len(dices))
                break
            prompt.clicks.append((int(click[0]), int(click[1]), bool(click[2])))
            prompt.feed_back(mask)
        row.update({f"clicks_{n}": dices[n - 1] for n in CLICK_LEVELS})
        return row

    # --- best / early stopping ------------------------------------------------------------------------
    def _update_best(self, entry: dict[str, Any]) -> bool:
        key = f"val_{self.config.select_metric}"
        if key in entry and entry[key] is not None and math.isfinite(entry[key]):
            score, by = float(entry[key]), key
        elif not self.val_items:
            score, by = -float(entry["loss"]), "train_loss"
        else:
            return False  # an epoch without validation neither improves nor exhausts patience
        if self.best is None or score > self.best["score"]:
            self.best = {"epoch": entry["epoch"], "score": score, "by": by,
                         "metrics": {k: v for k, v in entry.items() if k.startswith("val_") or k == "loss"},
                         "bad_epochs": 0}
            return True
        self.best["bad_epochs"] = int(self.best.get("bad_epochs", 0)) + 1
        return False

    def _patience_exhausted(self) -> bool:
        p = self.config.patience
        return bool(p and self.val_items and self.best and self.best.get("bad_epochs", 0) >= p)

    # --- files ----------------------------------------------------------------------------------------
    def _save_adapter(self, entry: dict[str, Any]) -> None:
        from ..models.checkpoints import save_adapter

        metrics = {"epoch": entry["epoch"], "selected_by": self.best["by"] if self.best else None,
                   **{k: v for k, v in entry.items() if k.startswith("val_") or k == "loss"}}
        if self.baseline:
            metrics["baseline"] = {f"val_{k}": v for k, v in self.baseline.items()}
        save_adapter(self.adapter_path, self.model, self.config.recipe, config=self.config.to_dict(),
                     data=finite_or_none(self.data_description), metrics=finite_or_none(metrics))

    def _state(self) -> dict[str, Any]:
        from ..models.peft import adapter_state_dict

        return {
            "format": STATE_FORMAT, "format_version": STATE_VERSION,
            "config": self.config.to_dict(), "epoch": self.epoch, "global_step": self.global_step,
            "tensors": {k: v.cpu() for k, v in adapter_state_dict(self.model, self.config.recipe).items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(), "history": self.history, "baseline": self.baseline, "best": self.best,
            "stats": {k: v for k, v in self.stats.items() if isinstance(v, (int, float))},
        }

    def _save_state(self) -> None:
        _write_state(self.state_path, self._state())

    def _read_state(self) -> dict[str, Any]:
        return _load_state(self.state_path, STATE_FORMAT, self.config.to_dict(), RESUME_FIXED)

    def _restore(self, state: dict[str, Any]) -> None:
        from ..models.peft import load_adapter_state_dict

        load_adapter_state_dict(self.model, state["tensors"], self.config.recipe)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])
        self.baseline = state.get("baseline")
        self.best = state.get("best")
        restore_rng(state["rng"])
        self._emit("setup", epoch=self.epoch, message=f"resumed from {self.state_path} after epoch {self.epoch}")

    def _write_outputs(self, stopped_early: bool = False) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / "history.json", json.dumps(finite_or_none(
            {"config": self.config.to_dict(), "baseline": self.baseline, "best": self.best,
             "history": self.history}), indent=2, default=str) + "\n")
        if self.history:
            from .reporting import write_curve

            write_curve(self.history, self.run_dir / "training_curve.png", self.baseline)
        write_text_atomic(self.run_dir / "report.md", self.report_markdown(stopped_early))

    def report_markdown(self, stopped_early: bool = False) -> str:
        """The run's ``report.md`` (``reporting.finetune_report``)."""
        from .reporting import finetune_report

        return finetune_report(self, stopped_early)

    # --- events ---------------------------------------------------------------------------------------
    def _emit(self, kind: str, **fields: Any) -> None:
        if self._progress is not None:
            fields.setdefault("epochs", self.config.epochs)
            fields.setdefault("steps", self.config.steps_per_epoch)
            self._progress(TrainEvent(kind, **fields))
