"""The promptable network: an image encoder (TinyViT or SAM ViT) + SAM's prompt encoder and mask decoder.

Two calls, so the engine can cache the expensive one: ``encode`` (once per image) and ``decode`` (per prompt set).
Every tensor given to ``decode`` is already in model space (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import InputError, PromptError

if TYPE_CHECKING:
    from .registry import ModelSpec

_SAM_MODELING = "segment_anything.modeling"


def sam_modeling() -> ModuleType:
    """Return ``segment_anything.modeling`` without running ``segment_anything/__init__.py``.

    That ``__init__`` imports the predictor, which needs torchvision; the modeling subpackage itself only needs
    torch. The module is registered under its real name, so a later ``import segment_anything`` (where torchvision
    exists) reuses it.
    """
    if _SAM_MODELING in sys.modules:
        return sys.modules[_SAM_MODELING]
    top = importlib.util.find_spec("segment_anything")  # top-level find_spec executes nothing
    if top is None or not top.submodule_search_locations:
        raise ImportError("segment-anything is not installed: pip install segment-anything")
    folder = Path(list(top.submodule_search_locations)[0]) / "modeling"
    spec = importlib.util.spec_from_file_location(
        _SAM_MODELING, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_SAM_MODELING] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(_SAM_MODELING, None)
        raise
    return module


def build_prompt_encoder(image_size: int, embedding_size: int) -> nn.Module:
    """SAM prompt encoder for a square ``image_size`` input and ``embedding_size`` grid (mask input 4x grid)."""
    return sam_modeling().PromptEncoder(
        embed_dim=256,
        image_embedding_size=(embedding_size, embedding_size),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )


def build_mask_decoder(depth: int = 2, mlp_dim: int = 2048, iou_hidden: int = 256) -> nn.Module:
    """SAM mask decoder (defaults: the official SAM / LiteMedSAM hyper-parameters; 3 multimask outputs)."""
    modeling = sam_modeling()
    return modeling.MaskDecoder(
        num_multimask_outputs=3,
        transformer=modeling.TwoWayTransformer(depth=depth, embedding_dim=256, mlp_dim=mlp_dim, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=iou_hidden,
    )


class PromptableSam(nn.Module):
    """Encoder + prompt encoder + mask decoder with a two-call API (``encode`` / ``decode``).

    ``weights_sha256`` is set by ``registry.load_model`` to the sha256 of the file loaded (None for random or
    in-memory weights); ``registry.model_fingerprint`` uses it as the embedding-cache key. Code that changes the
    weights in memory (training) must set it back to None.
    """

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 spec: ModelSpec) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.spec = spec
        self.weights_sha256: str | None = None

    @property
    def image_size(self) -> int:
        """Side of the square model input."""
        return int(self.prompt_encoder.input_image_size[0])

    @property
    def embedding_size(self) -> int:
        """Side of the square embedding grid; low-res logits are 4x this."""
        return int(self.prompt_encoder.image_embedding_size[0])

    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) normalised images -> (B, 256, E, E) embeddings."""
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise InputError(f"model '{self.spec.name}' expects images of shape (B, 3, {s}, {s}), "
                             f"got {tuple(images.shape)}")
        return self.image_encoder(images)

    def decode(self, embedding: Tensor, points: Tensor | None = None, labels: Tensor | None = None,
               box: Tensor | None = None, mask_logits: Tensor | None = None,
               multimask: bool = False, text: str | None = None) -> tuple[Tensor, Tensor]:
        """Prompts -> (low-res logits (1, K, 4E, 4E), predicted IoU (1, K)); K = 3 if ``multimask`` else 1.

        SAM convention: the multimask outputs are decoder tokens 1..3, the single output is token 0.
        The embedding is cast to the decoder's device and dtype (the disk cache stores fp16). ``text``: the
        structure's name, used when the adapter has text prompts that know it (``understands``), else ignored.
        """
        self._check_embedding(embedding)
        ref = next(self.mask_decoder.parameters())
        embedding = embedding.to(ref.device, ref.dtype)
        prompts = self._prompt_tensors(embedding, points, labels, box, mask_logits)
        sparse, dense = self.prompt_encoder(points=prompts[0], boxes=prompts[1], masks=prompts[2])
        if self.understands(text):
            pad = getattr(self.prompt_encoder, "not_a_point_embed", None)
            sparse = self.mask_decoder.peft_text.condition(sparse, text, None if pad is None else pad.weight)
        return self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )

    def understands(self, text: str | None) -> bool:
        """Whether ``text`` is a structure name this model's adapter was trained to take as a prompt."""
        module = getattr(self.mask_decoder, "peft_text", None)
        return module is not None and module.understands(text)

    def _check_embedding(self, embedding: Tensor) -> None:
        e = self.embedding_size
        if embedding.ndim != 4 or tuple(embedding.shape) != (1, 256, e, e):
            raise InputError(f"decode expects one embedding of shape (1, 256, {e}, {e}), "
                             f"got {tuple(embedding.shape)}")

    def _prompt_tensors(self, embedding: Tensor, points: Tensor | None, labels: Tensor | None,
                        box: Tensor | None, mask_logits: Tensor | None
                        ) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None, Tensor | None]:
        """Validate shapes and move prompts to the embedding's device / dtype."""
        if points is None and box is None and mask_logits is None:
            raise PromptError("give at least one point, a box or a previous mask")
        dev, dt = embedding.device, embedding.dtype
        pts = None
        if points is not None or labels is not None:
            if points is None or labels is None:
                raise PromptError("points and labels must be given together")
            if points.ndim != 3 or points.shape[0] != 1 or points.shape[2] != 2 \
                    or tuple(labels.shape) != tuple(points.shape[:2]):
                raise PromptError(f"points must be (1, N, 2) with labels (1, N); got {tuple(points.shape)} "
                                  f"and {tuple(labels.shape)}")
            pts = (points.to(dev, dt), labels.to(dev, torch.int64))
        if box is not None:
            if box.numel() != 4:
                raise PromptError(f"box must be (1, 4) x0, y0, x1, y1; got {tuple(box.shape)}")
            box = box.reshape(1, 4).to(dev, dt)
        if mask_logits is not None:
            m = 4 * self.embedding_size
            if tuple(mask_logits.shape) != (1, 1, m, m):
                raise PromptError(f"mask_logits must be (1, 1, {m}, {m}); got {tuple(mask_logits.shape)}")
            mask_logits = mask_logits.to(dev, dt)
        return pts, box, mask_logits
