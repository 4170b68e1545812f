"""Prompt-free (automatic) segmentation heads on a frozen encoder's embedding (AutoSAM, Hu et al.).

A head maps the embedding of one slice, (B, C, E, E) (C = 256, E = 64 for LiteMedSAM), to K-class logits at 4x
the embedding grid, (B, K, 4E, 4E): the low-res grid of the promptable decoder (256 for LiteMedSAM), so
``SliceTransform.logits_to_slice`` maps them back onto the slice exactly as it does for promptable masks.
Class 0 is background; the classes are exclusive (softmax over K, argmax at inference).

Three heads (see docs/reference methods.md section 3):

- :class:`ViTHead` - SAM's mask decoder without prompts: K class-specific learnable output tokens go through a
  shared two-way transformer together, then SAM's output upscaling and one hypernetwork MLP per class give the
  K masks **in one pass**. Differences from the released AutoSAM code (documented choices): AutoSAM repeats the
  image embedding K times and runs the transformer once per class with a 3-token query set (iou + 2 mask tokens);
  here the K tokens share one pass (K x cheaper in image-side compute and memory; the class tokens also attend to
  each other, which lets them compete for pixels). The image positional encoding is the base model's own
  (``prompt_encoder.pe_layer``'s Gaussian matrix is copied; AutoSAM uses a fresh random one by mistake), and
  SAM's "no mask" dense embedding is added to the image embedding as during SAM's training (a learnable vector,
  initialised from the base model). :meth:`ViTHead.init_from_base` copies every compatible tensor of the base
  model's mask decoder: the transformer, the output upscaling, hypernetwork MLP 0 into every class's MLP, and
  mask token 0 (plus small seeded noise that breaks the symmetry between classes) into every class token.
- :class:`CNNHead` - k conv stages; between stages a transposed conv upsamples x2 until the 4x grid is reached
  (AutoSAM's ``SegDecoderCNN`` shape, with configurable, much smaller channel counts: AutoSAM's 1024-channel
  stages cost ~40 GMAC per slice, far too much for CPU training).
- :class:`LinearHead` - a 1x1 conv on the embedding + bilinear upsampling: a linear probe.

Optional 2.5D context (``context=True``): the head takes the embeddings of slices index-1, index, index+1
concatenated along channels, (B, 3C, E, E) (neighbours clamped at the volume ends, so a 2D image sees itself three
times), and a 1x1 conv reduces them back to C. It is initialised to pass the centre slice through unchanged
(identity on the centre block, zero on the neighbours), so a context head starts as its 2D counterpart.

:class:`AutoModel` bundles a head with what is needed to use it: base model name + sha256 + embedding
fingerprint, class names, label values, colours, terminology and the intensity policy; ``save_auto_model`` /
``load_auto_model`` write / read ``<stem>.safetensors`` (head tensors) + ``<stem>.json`` (model card).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, WeightsError
from .auto_classes import AutoClass, ClassOutputs, card_orientation
from .promptable import sam_modeling

HEAD_TYPES = ("vit", "cnn", "linear")
CARD_FORMAT = "medsam-adapter/auto-head"
CARD_VERSION = 1
UPSCALE = 4  # logits are 4x the embedding grid (SAM's low-res masks)

ProgressCallback = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------- building blocks
class ContextFusion(nn.Module):
    """(B, 3C, E, E) [previous, centre, next] -> (B, C, E, E) by a 1x1 conv, initialised to pass the centre."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(3 * channels, channels, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, channels: 2 * channels, 0, 0] = torch.eye(channels)
            self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _AutoHead(nn.Module):
    """Common part of the heads: input checks and the optional 2.5D context fusion."""

    kind = ""

    def __init__(self, num_classes: int, embed_dim: int, embedding_size: int, context: bool) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise InputError(f"an automatic head needs background + at least one class, got {num_classes} classes")
        self.num_classes = int(num_classes)
        self.embed_dim = int(embed_dim)
        self.embedding_size = int(embedding_size)
        self.context = bool(context)
        self.context_fusion = ContextFusion(self.embed_dim) if self.context else None

    @property
    def in_channels(self) -> int:
        return 3 * self.embed_dim if self.context else self.embed_dim

    @property
    def out_size(self) -> int:
        return UPSCALE * self.embedding_size

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, E, E) embedding (or (B, 3C, E, E) with context) -> (B, K, 4E, 4E) logits."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != x.shape[-2]:
            what = f"(B, 3 x {self.embed_dim}, E, E) [previous, centre, next]" if self.context else \
                f"(B, {self.embed_dim}, E, E)"
            raise InputError(f"{self.kind} head expects embeddings of shape {what}, got {tuple(x.shape)}")
        if self.context_fusion is not None:
            x = self.context_fusion(x)
        return self.decode(x)

    def decode(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Constructor arguments beyond (num_classes, embed_dim, embedding_size, context)."""
        return {}


class ViTHead(_AutoHead):
    """SAM mask-decoder style head without prompts (see the module docstring)."""

    kind = "vit"

    def __init__(self, num_classes: int, embed_dim: int = 256, embedding_size: int = 64, context: bool = False,
                 depth: int = 2, mlp_dim: int = 2048, num_heads: int = 8) -> None:
        super().__init__(num_classes, embed_dim, embedding_size, context)
        modeling = sam_modeling()
        # submodules of the package sam_modeling() loaded (importing them by name would run segment_anything's
        # __init__, which needs torchvision)
        common, prompt_encoder, mask_decoder = modeling.common, modeling.prompt_encoder, modeling.mask_decoder
        self.depth, self.mlp_dim, self.num_heads = int(depth), int(mlp_dim), int(num_heads)
        self.transformer = modeling.TwoWayTransformer(depth=self.depth, embedding_dim=embed_dim,
                                                      num_heads=self.num_heads, mlp_dim=self.mlp_dim)
        self.pe_layer = prompt_encoder.PositionEmbeddingRandom(embed_dim // 2)
        self.class_tokens = nn.Embedding(self.num_classes, embed_dim)
        self.dense_embed = nn.Parameter(torch.zeros(embed_dim))
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, embed_dim // 4, kernel_size=2, stride=2),
            common.LayerNorm2d(embed_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(embed_dim // 4, embed_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.hypernetworks = nn.ModuleList(
            mask_decoder.MLP(embed_dim, embed_dim, embed_dim // 8, 3) for _ in range(self.num_classes))

    def options(self) -> dict[str, Any]:
        return {"depth": self.depth, "mlp_dim": self.mlp_dim, "num_heads": self.num_heads}

    def decode(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        src = x + self.dense_embed.view(1, -1, 1, 1)
        pos = self.pe_layer((h, w)).to(src.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        tokens = self.class_tokens.weight.unsqueeze(0).expand(b, -1, -1)
        hs, src = self.transformer(src, pos, tokens)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(hs[:, k]) for k, mlp in enumerate(self.hypernetworks)], dim=1)
        _, cu, hu, wu = upscaled.shape
        return (hyper @ upscaled.reshape(b, cu, hu * wu)).reshape(b, self.num_classes, hu, wu)

    @torch.no_grad()
    def init_from_base(self, base_model: nn.Module, seed: int = 0, token_noise: float = 0.1) -> list[str]:
        """Copy the base model's mask-decoder weights (see the module docstring); returns the head keys copied.

        Tensors whose shapes differ (another depth / MLP width) are left at their random initialisation.
        """
        decoder, prompt = base_model.mask_decoder, base_model.prompt_encoder
        copied: list[str] = []
        own = self.state_dict()
        sources: dict[str, Tensor] = {}
        for key, value in decoder.state_dict().items():
            if key.startswith(("transformer.", "output_upscaling.")):
                sources[key] = value
            elif key.startswith("output_hypernetworks_mlps.0."):
                rest = key[len("output_hypernetworks_mlps.0."):]
                for k in range(self.num_classes):
                    sources[f"hypernetworks.{k}.{rest}"] = value
        sources["pe_layer.positional_encoding_gaussian_matrix"] = prompt.pe_layer.positional_encoding_gaussian_matrix
        sources["dense_embed"] = prompt.no_mask_embed.weight.reshape(-1)
        for key, value in sources.items():
            if key in own and tuple(own[key].shape) == tuple(value.shape):
                own[key].copy_(value.to(own[key].dtype))
                copied.append(key)
        token = decoder.mask_tokens.weight[0]
        if token.shape[-1] == self.embed_dim:
            gen = torch.Generator().manual_seed(int(seed))
            noise = torch.randn((self.num_classes, self.embed_dim), generator=gen) * token_noise * token.std()
            self.class_tokens.weight.copy_(token.unsqueeze(0).to(noise) + noise)
            copied.append("class_tokens.weight")
        return copied


def _norm(channels: int) -> nn.Module:
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)


class CNNHead(_AutoHead):
    """Conv stages; a transposed conv (x2) between stages until 4x is reached, then bilinear for the rest.

    ``channels[i]`` is the width of stage i; stage i has ``convs_per_stage[i]`` x (3x3 conv, GroupNorm, ReLU)
    (an int applies to every stage). A 1x1 conv first reduces the embedding to ``channels[0]``; a 1x1 conv to K
    classes ends the head. The default (128, 64, 32) with convs (1, 1, 0) costs ~1.5 GMAC per 64x64 embedding:
    a 3x3 conv at the 256x256 output grid would cost as much again for little gain.

    ``shortcut`` (default on) adds a linear probe's logits (1x1 conv on the embedding, bilinear x4) to the conv
    path's. Without it, a few-shot CNN head spends its first few hundred steps predicting background only (the
    class imbalance wins until the conv path becomes discriminative); the linear path escapes that within ~50 steps
    and the conv path then learns the residual (measured on ACDC, 1 patient).
    """

    kind = "cnn"

    def __init__(self, num_classes: int, embed_dim: int = 256, embedding_size: int = 64, context: bool = False,
                 channels: Sequence[int] = (128, 64, 32), convs_per_stage: int | Sequence[int] = (1, 1, 0),
                 shortcut: bool = True) -> None:
        super().__init__(num_classes, embed_dim, embedding_size, context)
        self.shortcut = nn.Conv2d(embed_dim, self.num_classes, 1) if shortcut else None
        self.channels = tuple(int(c) for c in channels)
        if isinstance(convs_per_stage, int):
            convs = (int(convs_per_stage),) * len(self.channels)
        else:
            convs = tuple(int(c) for c in convs_per_stage)
        if not self.channels or min(self.channels) < 1 or len(convs) != len(self.channels) or min(convs) < 0:
            raise InputError(f"CNN head needs >= 1 stage of positive width and one conv count (>= 0) per stage, got "
                             f"channels {channels}, convs_per_stage {convs_per_stage}")
        self.convs_per_stage = convs
        self.reduce = nn.Sequential(nn.Conv2d(embed_dim, self.channels[0], 1), _norm(self.channels[0]), nn.ReLU())
        stages: list[nn.Module] = []
        self.factor = 1
        for i, width in enumerate(self.channels):
            layers: list[nn.Module] = []
            for _ in range(convs[i]):
                layers += [nn.Conv2d(width, width, 3, padding=1), _norm(width), nn.ReLU()]
            if i + 1 < len(self.channels):
                nxt = self.channels[i + 1]
                if self.factor < UPSCALE:
                    layers += [nn.ConvTranspose2d(width, nxt, 2, stride=2), _norm(nxt), nn.ReLU()]
                    self.factor *= 2
                else:
                    layers += [nn.Conv2d(width, nxt, 1), _norm(nxt), nn.ReLU()]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Conv2d(self.channels[-1], self.num_classes, 1)

    def options(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "convs_per_stage": list(self.convs_per_stage),
                "shortcut": self.shortcut is not None}

    def decode(self, x: Tensor) -> Tensor:
        y = self.classifier(self.stages(self.reduce(x)))
        if y.shape[-1] != UPSCALE * x.shape[-1]:
            y = F.interpolate(y, scale_factor=UPSCALE / self.factor, mode="bilinear", align_corners=False)
        if self.shortcut is not None:
            y = y + F.interpolate(self.shortcut(x), scale_factor=UPSCALE, mode="bilinear", align_corners=False)
        return y


class LinearHead(_AutoHead):
    """Linear probe: 1x1 conv to K classes on the embedding grid, bilinear upsampling x4."""

    kind = "linear"

    def __init__(self, num_classes: int, embed_dim: int = 256, embedding_size: int = 64,
                 context: bool = False) -> None:
        super().__init__(num_classes, embed_dim, embedding_size, context)
        self.classifier = nn.Conv2d(embed_dim, self.num_classes, 1)

    def decode(self, x: Tensor) -> Tensor:
        return F.interpolate(self.classifier(x), scale_factor=UPSCALE, mode="bilinear", align_corners=False)


HEADS: dict[str, type[_AutoHead]] = {"vit": ViTHead, "cnn": CNNHead, "linear": LinearHead}


def build_head(kind: str, num_classes: int, embed_dim: int = 256, embedding_size: int = 64, context: bool = False,
               **options: Any) -> _AutoHead:
    """A head of type ``kind`` (``vit`` / ``cnn`` / ``linear``) with random weights."""
    if kind not in HEADS:
        raise InputError(f"unknown head type {kind!r}; choose one of {', '.join(HEAD_TYPES)}")
    try:
        return HEADS[kind](num_classes, embed_dim=embed_dim, embedding_size=embedding_size, context=context,
                           **options)
    except TypeError as exc:
        raise InputError(f"bad options for the {kind} head: {exc}") from None


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- the bundle
@dataclass
class AutoModel(ClassOutputs):
    """A trained head + everything needed to apply it (see the module docstring).

    ``classes`` are the foreground classes in head order (head output k+1 is ``classes[k]``).
    ``embedding_fingerprint`` is ``registry.model_fingerprint`` of the encoder the head was trained on; it is
    what decides the embeddings, so :meth:`predict_volume` refuses an embedder of another model.
    ``roi_margin``: run a second, zoomed pass on the box around what the first found (``engine/roi.py``).
    """

    head: _AutoHead
    base_model: str
    base_sha256: str
    classes: list[AutoClass]
    embedding_fingerprint: str | None = None
    intensity: str = "auto"
    card: dict[str, Any] = field(default_factory=dict)
    orientation: str | None = None
    roi_margin: float | None = None

    def __post_init__(self) -> None:
        if self.roi_margin is not None and not self.roi_margin >= 0:
            raise InputError(f"roi_margin must be >= 0 (or None: no zoom pass), got {self.roi_margin}")
        if len(self.classes) + 1 != self.head.num_classes:
            raise InputError(f"head has {self.head.num_classes} outputs but {len(self.classes)} classes + "
                             f"background were given")
        self.check_label_values()

    @property
    def head_type(self) -> str:
        return self.head.kind

    @property
    def context(self) -> bool:
        return self.head.context

    def check_embedder(self, embedder: Any) -> None:
        """The embedder must produce the embeddings the head was trained on (same encoder, same intensity)."""
        fingerprint = getattr(embedder, "model_fingerprint", None)
        if self.embedding_fingerprint and fingerprint != self.embedding_fingerprint:
            raise InputError(f"this automatic model was trained on embeddings of {self.embedding_fingerprint}; the "
                             f"embedder uses {fingerprint}. Open base model '{self.base_model}' (sha256 "
                             f"{self.base_sha256}) without an encoder adapter")
        intensity = getattr(getattr(embedder, "intensity", None), "id", None)
        if intensity is not None and intensity != self.intensity:
            raise InputError(f"this automatic model was trained with intensity policy {self.intensity!r}; the "
                             f"embedder uses {intensity!r}")

    def logits(self, embeddings: Tensor) -> Tensor:
        """(B, C or 3C, E, E) -> (B, K, 4E, 4E) logits, on the head's device, without gradient."""
        ref = next(self.head.parameters())
        with torch.no_grad():
            return self.head(embeddings.to(ref.device, ref.dtype))

    def predict_volume(self, volume: Any, embedder: Any, progress: ProgressCallback | None = None,
                       batch_size: int = 4) -> np.ndarray:
        """Label map (k, j, i) of ``volume``: argmax of :meth:`volume_logits`, class k -> ``classes[k-1].label_value``.

        ``embedder`` is a ``VolumeEmbedder`` of ``volume`` (with a cache, already embedded slices cost nothing).
        ``progress(done, total)`` is called after every batch of slices. Single-component classes keep their
        largest 3D component.
        """
        classes = np.zeros(volume.shape, np.min_scalar_type(self.head.num_classes - 1))
        for index, full in self._slice_logits(volume, embedder, progress, batch_size):
            classes[index] = full.argmax(0).numpy()
        return self.label_map(classes)

    def volume_logits(self, volume: Any, embedder: Any, progress: ProgressCallback | None = None,
                      batch_size: int = 4) -> Tensor:
        """(K, k, j, i) float32 logits on the slice grid (each slice's logits mapped back with
        ``SliceTransform.logits_to_slice``), e.g. as a distillation teacher's soft output."""
        out = torch.zeros((self.head.num_classes, *volume.shape), dtype=torch.float32)
        for index, full in self._slice_logits(volume, embedder, progress, batch_size):
            out[:, index] = full
        return out

    def _slice_logits(self, volume: Any, embedder: Any, progress: ProgressCallback | None, batch_size: int
                      ) -> Iterator[tuple[int, Tensor]]:
        """(slice index, (K, H, W) logits on the slice grid) along axis 0, in batches of slices."""
        if getattr(embedder, "volume", volume) is not volume:
            raise InputError("the embedder belongs to another volume")
        self.check_embedder(embedder)
        self.head.eval()
        count = int(volume.shape[0])
        step = max(1, int(batch_size))
        window: dict[int, Tensor] = {}

        def get(index: int) -> Tensor:
            index = min(max(index, 0), count - 1)
            if index not in window:
                window[index] = embedder.embedding(0, index).float()
            return window[index]

        if progress:
            progress(0, count)
        for start in range(0, count, step):
            indices = list(range(start, min(count, start + step)))
            if self.context:
                batch = torch.cat([torch.cat([get(i - 1), get(i), get(i + 1)], dim=1) for i in indices])
            else:
                batch = torch.cat([get(i) for i in indices])
            low_res = self.logits(batch)
            for n, index in enumerate(indices):
                yield index, embedder.transform(0, index).logits_to_slice(low_res[n: n + 1].float().cpu())[0]
            for old in [k for k in window if k < indices[-1]]:
                window.pop(old)  # keep only the last slice of this batch (a neighbour of the next)
            if progress:
                progress(indices[-1] + 1, count)


# ---------------------------------------------------------------------------------------------- files
def auto_model_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(``<stem>.safetensors``, ``<stem>.json``): the same pairing as adapter checkpoints."""
    from .checkpoints import adapter_paths

    return adapter_paths(path)


def write_model_files(path: str | os.PathLike, tensors: dict[str, Tensor], card: dict[str, Any],
                      metadata: dict[str, str], dtype: str) -> tuple[Path, dict[str, Any]]:
    """Tensors, then the card (which gets their sha256, count, dtype and size), each written atomically.

    Shared by every automatic-model format (2D heads, volumetric models, students); returns (tensors path, card).
    """
    from safetensors.torch import save_file

    from ..engine.atomic import atomic_path, write_text_atomic
    from .checkpoints import file_digest

    card = jsonable(card)
    json.dumps(card)  # fail before writing anything
    tensors_path, card_path = auto_model_paths(path)
    with atomic_path(tensors_path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        card["tensors"] = {"file": tensors_path.name, "sha256": file_digest(tmp), "count": len(tensors),
                           "dtype": dtype, "bytes": tmp.stat().st_size}
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n")
    return tensors_path, card


def read_model_card(path: str | os.PathLike, what: str = "model") -> tuple[dict[str, Any], Path]:
    """(card, card path) of an automatic model; a missing, unreadable or non-object card -> WeightsError."""
    from .checkpoints import read_json_card

    card_path = auto_model_paths(path)[1]
    card = read_json_card(card_path, what, "an automatic model is <name>.safetensors plus the <name>.json card")
    return card, card_path


def jsonable(value: Any) -> Any:
    """NaN / inf -> None, paths -> str, numpy / torch scalars -> Python numbers (recursively): valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return jsonable(value.item())
    return value


def save_auto_model(path: str | os.PathLike, model: AutoModel, training: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None, dtype: str = "float32") -> Path:
    """Write ``<stem>.safetensors`` (head tensors, ``dtype`` float32 or float16) and ``<stem>.json`` (model card)
    atomically, tensors first; returns the tensors path. ``training`` / ``metrics`` go to the card as given."""
    from .. import __version__

    if dtype not in ("float32", "float16"):
        raise InputError(f"dtype must be float32 or float16, got {dtype!r}")
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    tensors = {k: v.detach().cpu().to(torch_dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.head.state_dict().items()}
    head = model.head
    card: dict[str, Any] = {
        "format": CARD_FORMAT, "format_version": CARD_VERSION, "medsam_adapter_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": "automatic (prompt-free) segmentation, AutoSAM-style head on a frozen encoder",
        "base_model": {"name": model.base_model, "sha256": model.base_sha256,
                       "embedding_fingerprint": model.embedding_fingerprint},
        "head": {"type": head.kind, "num_classes": head.num_classes, "embed_dim": head.embed_dim,
                 "embedding_size": head.embedding_size, "context": head.context, "options": head.options(),
                 "parameters": parameter_count(head), "output": f"softmax over {head.num_classes} classes "
                 f"(0 = background) at {head.out_size}x{head.out_size} (4x the embedding grid)"},
        "intensity": model.intensity, "orientation": model.orientation, "slice_axis": 0,
        "roi": None if model.roi_margin is None else {
            "margin": model.roi_margin, "method": "pass 1 on whole planes locates; pass 2 on the square box around "
            "all it found (grown by margin x size per side) zooms (engine/roi.py)"},
        "classes": [c.to_dict() for c in model.classes],
        "training": training or {}, "metrics": metrics or {},
    }
    tensors_path, model.card = write_model_files(
        path, tensors, card, {"format": CARD_FORMAT, "head": head.kind, "base_model": model.base_model}, dtype)
    return tensors_path


def read_auto_card(path: str | os.PathLike) -> dict[str, Any]:
    """The model card of an automatic model; missing, unreadable or foreign -> WeightsError."""
    card, card_path = read_model_card(path, "automatic model")
    if card.get("format") != CARD_FORMAT:
        raise WeightsError(f"{card_path} is not a medsam-adapter automatic-segmentation model card")
    if int(card.get("format_version", 0)) > CARD_VERSION:
        raise WeightsError(f"{card_path} was written by a newer medsam-adapter (format {card['format_version']})")
    return card


def load_auto_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> AutoModel:
    """Read an automatic model (tensors sha256-checked against the card) in eval mode on ``device``."""
    from .checkpoints import read_checked_tensors

    card = read_auto_card(path)
    tensors_path = auto_model_paths(path)[0]
    saved = read_checked_tensors(tensors_path, card, "automatic model")
    try:
        h = card["head"]
        head = build_head(h["type"], int(h["num_classes"]), int(h["embed_dim"]), int(h["embedding_size"]),
                          bool(h["context"]), **dict(h.get("options") or {}))
        classes = [AutoClass.from_dict(c) for c in card["classes"]]
        base = card["base_model"]
        roi_margin = None if card.get("roi") is None else float(card["roi"]["margin"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"automatic model card {auto_model_paths(path)[1]} is incomplete: {exc}") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in saved.items()}
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"tensors in {tensors_path} do not fit the {h['type']} head of the card: "
                           f"{str(exc).splitlines()[0]}") from exc
    head.requires_grad_(False)
    model = AutoModel(head.to(device).eval(), str(base["name"]), str(base["sha256"]), classes,
                      base.get("embedding_fingerprint"), str(card.get("intensity", "auto")), card,
                      card_orientation(card), roi_margin)
    return model
