"""Apply PEFT surgery to a model, describe it (``PeftConfig``), and move PEFT tensors in and out.

Key mapping: surgery never renames base tensors. Block wrappers re-register the original submodules under
their original attribute names and LoRA adopts the original ``weight`` / ``bias``, so after surgery
``model.state_dict()`` = every base key unchanged + new keys containing a ``peft_`` component::

    image_encoder.blocks.{i}.peft_{space,mlp,depth}.{down,up}.{weight,bias}          SAM ViT (Med-SA)
    image_encoder.layers.{s}.blocks.{i}.peft_{space,mlp,depth}.{down,up}.{weight,bias} TinyViT stages s >= 1
    image_encoder.....attn.qkv.peft_lora_{A,B}, ....mlp.{lin1,lin2,fc1,fc2}.peft_lora_{A,B}   LoRA
    mask_decoder.transformer.layers.{j}.peft_{hyp,mlp,keys}.*                          decoder adapters
    mask_decoder.peft_text.embedding.weight                                            text prompts

A base checkpoint therefore loads into an adapted model with ``load_state_dict(base, strict=False)`` (only
``peft_*`` keys missing), and an adapter file holds only ``peft_*`` keys plus the base tensors its recipe trains.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import InputError, WeightsError
from ..tiny_vit import TinyViTBlock
from .adapters import MEDSA_BLOCKS, MedSATinyViTBlock, MedSAVitBlock, is_peft_name, sam_block_class
from .hyper import HYP_NORMS, HYP_POOLS, AdaptedTwoWayBlock, PromptContext, two_way_block_class
from .lora import LORA_TARGETS, apply_lora
from .policy import check_recipe, trainable_names
from .text import apply_text_prompts, normalise_name


@dataclasses.dataclass(frozen=True)
class PeftConfig:
    """Everything needed to re-apply a recipe's surgery (stored in the adapter's model card)."""

    recipe: str = "medsa"
    adapter_ratio: float = 0.25
    mlp_scale: float = 0.5
    depth_chunk: int | None = None
    decoder_blocks: tuple[int, ...] | None = None
    hyp_hidden: int = 64
    hyp_layers: int = 1
    hyp_norm: str = "layernorm"
    hyp_pool: str = "mean"
    lora_rank: int = 4
    lora_alpha: float = 1.0
    lora_targets: tuple[str, ...] = ("qkv_q", "qkv_v", "mlp")
    text_vocabulary: tuple[str, ...] = ()  # structure names the decoder understands as text prompts (``text``)
    text_gain: float = 32.0

    def __post_init__(self) -> None:
        check_recipe(self.recipe)
        object.__setattr__(self, "text_vocabulary", tuple(sorted({normalise_name(n) for n in self.text_vocabulary})))
        if self.recipe == "medsa-3d" and (self.depth_chunk is None or self.depth_chunk < 1):
            raise InputError("recipe 'medsa-3d' needs depth_chunk >= 1 (slices per SD-Trans chunk)")
        if self.hyp_norm not in HYP_NORMS or self.hyp_pool not in HYP_POOLS:
            raise InputError(f"hyp_norm must be one of {HYP_NORMS}, hyp_pool one of {HYP_POOLS}")
        if self.decoder_blocks is not None and not self.decoder_blocks:
            raise InputError("decoder_blocks must name at least one block (or be None for all)")
        if not set(self.lora_targets) <= set(LORA_TARGETS):
            raise InputError(f"lora_targets must be a subset of {LORA_TARGETS}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeftConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown PEFT config keys {sorted(unknown)} (written by a newer medsam-adapter?)")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def apply_medsa(model: nn.Module, ratio: float = 0.25, mlp_scale: float = 0.5, depth: bool = False,
                depth_chunk: int | None = None) -> nn.Module:
    """Swap every SAM ViT / TinyViT attention block of the image encoder for its Med-SA version.

    TinyViT's MBConv stage 0 has no such blocks and gets no adapters. ``depth=True`` adds SD-Trans with
    ``depth_chunk`` consecutive slices per volume in each batch. Returns ``model`` (modified in place).
    """
    if depth and (depth_chunk is None or depth_chunk < 1):
        raise InputError("SD-Trans (depth=True) needs depth_chunk >= 1")
    chunk = depth_chunk if depth else None
    root = getattr(model, "image_encoder", model)
    sam_block = sam_block_class()
    swapped = 0
    for name, module in list(root.named_modules()):
        if isinstance(module, MEDSA_BLOCKS):
            raise InputError("the encoder already has Med-SA adapters; reload the base model to start over")
        if isinstance(module, sam_block):
            _set_submodule(root, name, MedSAVitBlock(module, ratio, mlp_scale, chunk))
        elif isinstance(module, TinyViTBlock):
            _set_submodule(root, name, MedSATinyViTBlock(module, ratio, mlp_scale, chunk))
        else:
            continue
        swapped += 1
    if not swapped:
        raise InputError(f"no SAM ViT or TinyViT attention blocks found in {type(root).__name__}")
    return model


def set_depth_chunk(model: nn.Module, depth_chunk: int) -> nn.Module:
    """Change the slices-per-volume of every SD-Trans block (e.g. for a shorter last chunk of a volume)."""
    if depth_chunk < 1:
        raise InputError(f"depth_chunk must be >= 1, got {depth_chunk}")
    blocks = [m for m in model.modules() if isinstance(m, MEDSA_BLOCKS) and m.peft_depth is not None]
    if not blocks:
        raise InputError("the model has no SD-Trans depth adapters (apply_medsa(..., depth=True))")
    for block in blocks:
        block.depth_chunk = int(depth_chunk)
    return model


def apply_decoder_adapters(model: nn.Module, blocks: tuple[int, ...] | None = None, ratio: float = 0.25,
                           mlp_scale: float = 0.5, hyp_hidden: int = 64, hyp_layers: int = 1,
                           hyp_norm: str = "layernorm", hyp_pool: str = "mean") -> nn.Module:
    """HyP-Adpt + MLP adapter + key adapter in the mask decoder's two-way blocks ``blocks`` (None = all).

    ``model`` is a ``PromptableSam`` (its prompt encoder's pad embedding is excluded from HyP pooling) or a
    bare ``MaskDecoder``. Registers the :class:`PromptContext` hooks on ``mask_decoder.transformer``.
    """
    decoder = getattr(model, "mask_decoder", model)
    layers = decoder.transformer.layers
    chosen = range(len(layers)) if blocks is None else blocks
    if not chosen or any(not 0 <= i < len(layers) for i in chosen):
        raise InputError(f"decoder blocks {tuple(chosen)} out of range: the decoder has {len(layers)}")
    if any(isinstance(layers[i], AdaptedTwoWayBlock) for i in chosen):
        raise InputError("the mask decoder already has adapters; reload the base model to start over")
    prompt_encoder = getattr(model, "prompt_encoder", None)
    context = PromptContext(decoder.num_mask_tokens + 1, getattr(prompt_encoder, "not_a_point_embed", None))
    two_way = two_way_block_class()
    for i in chosen:
        if not isinstance(layers[i], two_way):
            raise InputError(f"decoder layer {i} is a {type(layers[i]).__name__}, not a TwoWayAttentionBlock")
        layers[i] = AdaptedTwoWayBlock(layers[i], context, ratio, mlp_scale, hyp_hidden, hyp_layers,
                                       hyp_norm, hyp_pool)
    context.attach(decoder.transformer)
    return model


def apply_peft(model: nn.Module, config: PeftConfig) -> nn.Module:
    """The surgery of ``config.recipe`` on a *base* model; records ``peft_config`` and ``peft_base_sha256``.

    medsa / medsa-3d: encoder adapters (+ SD-Trans) and decoder adapters; lora: encoder LoRA; decoder: decoder
    adapters only. ``weights_sha256`` is reset to None (the weights no longer equal the file's).
    """
    from ..registry import state_dict_sha256

    if getattr(model, "peft_config", None) is not None:
        raise InputError(f"the model already has '{model.peft_config.recipe}' surgery; reload the base model")
    base_sha = getattr(model, "weights_sha256", None) or state_dict_sha256(model)
    c = config
    if c.recipe in ("medsa", "medsa-3d"):
        apply_medsa(model, c.adapter_ratio, c.mlp_scale, c.recipe == "medsa-3d", c.depth_chunk)
    if c.recipe == "lora":
        apply_lora(model, c.lora_rank, c.lora_alpha, c.lora_targets)
    if c.recipe in ("medsa", "medsa-3d", "decoder"):
        apply_decoder_adapters(model, c.decoder_blocks, c.adapter_ratio, c.mlp_scale, c.hyp_hidden,
                               c.hyp_layers, c.hyp_norm, c.hyp_pool)
    model.peft_config = config
    if c.text_vocabulary:
        apply_text_prompts(model, c.text_vocabulary, c.text_gain)
    model.peft_base_sha256 = base_sha
    model.weights_sha256 = None
    return model


def adapter_state_dict(model: nn.Module, recipe: str | None = None) -> dict[str, Tensor]:
    """Detached copies of every PEFT tensor (``peft_*``), plus with ``recipe`` the base tensors it trains.

    All PEFT tensors are included even when ``recipe`` freezes some (staged training), so a saved adapter
    always reproduces the model exactly.
    """
    names = {n for n, _ in model.named_parameters() if is_peft_name(n)}
    if recipe:
        names |= set(trainable_names(model, recipe))
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in sorted(names)}


def load_adapter_state_dict(model: nn.Module, state: dict[str, Tensor], recipe: str | None = None) -> None:
    """Load ``state`` into ``model``, strict on the key set :func:`adapter_state_dict` defines; WeightsError."""
    own = adapter_state_dict(model, recipe)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
           if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise WeightsError("adapter tensors do not fit the model: "
                           f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
                           f"{len(bad)} shape mismatches {bad[:3]}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)


