"""Text prompts from a closed vocabulary: the structure's name conditions the decoder.

One click is ambiguous when structures nest (the centre of the optic disc is the cup) or touch (CT muscles and
bones). The structure's name resolves that, and in Slicer every segment already has one. There is no open text
encoder here (no CLIP download, no network): each name the adapter was trained on gets one learned vector that is
added to every point / box token of the prompt, before the two-way transformer and HyP-Adpt see them. The vectors
start at zero, so an untrained text module leaves every output unchanged, and a name it does not know changes
nothing (callers can ask ``understands`` and tell the user). The vectors are stored divided by ``gain`` (32 by
default, recorded in the card): prompt tokens have norms near 11, and a vector trained at a decoder's learning
rate (1e-4) would otherwise stay too small to matter within a short fine-tune.

Names are compared normalised: case, ``_``, ``-`` and repeated spaces do not matter ("Optic_Cup" = "optic cup").
The vocabulary is stored in the adapter's card (``peft.text_vocabulary``), its vectors as
``mask_decoder.peft_text.embedding.weight``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ...errors import InputError
from .hyper import prompt_token_mask


def normalise_name(text: str) -> str:
    """The form names are compared in: lower case, words separated by single spaces."""
    return " ".join(re.sub(r"[_\-]+", " ", str(text)).lower().split())


class TextPrompts(nn.Module):
    """One zero-initialised vector per known name, added to the sparse prompt tokens."""

    def __init__(self, vocabulary: Iterable[str], dim: int, gain: float = 32.0) -> None:
        super().__init__()
        self.gain = float(gain)
        names = sorted({normalise_name(n) for n in vocabulary} - {""})
        if not names:
            raise InputError("a text-prompt vocabulary needs at least one non-empty name")
        self.vocabulary: tuple[str, ...] = tuple(names)
        self._index = {name: i for i, name in enumerate(names)}
        self.embedding = nn.Embedding(len(names), dim)
        nn.init.zeros_(self.embedding.weight)

    def understands(self, text: str | None) -> bool:
        return text is not None and normalise_name(text) in self._index

    def condition(self, sparse: Tensor, text: str | None, pad: Tensor | None = None) -> Tensor:
        """``sparse`` (B, N, C) with the name's vector added to each token except padding rows (equal to
        ``pad``, the prompt encoder's not-a-point embedding, which HyP-Adpt recognises by value)."""
        if not self.understands(text) or sparse.shape[1] == 0:
            return sparse
        index = torch.tensor(self._index[normalise_name(text)], device=sparse.device)  # type: ignore[arg-type]
        vector = (self.gain * self.embedding(index)).to(sparse.dtype)
        return sparse + prompt_token_mask(sparse, pad).unsqueeze(-1).to(sparse.dtype) * vector


def understood(model: object, text: str | None) -> bool:
    """Whether ``model`` takes ``text`` as a text prompt (False for models without text prompts, e.g. test doubles)."""
    understands = getattr(model, "understands", None)
    return bool(understands is not None and understands(text))


def apply_text_prompts(model: nn.Module, vocabulary: Iterable[str], gain: float = 32.0) -> nn.Module:
    """Give ``model`` (a ``PromptableSam`` with PEFT surgery, or about to get it) text prompts for ``vocabulary``.

    Also works on a model that already carries a trained adapter (e.g. the shipped click adapter): its
    ``peft_config`` then records the vocabulary, so the saved adapter rebuilds the same module on loading. If the
    model already has text prompts, new names are added (their vectors start at zero) and known ones keep theirs.
    """
    import dataclasses

    decoder = model.mask_decoder
    old = getattr(decoder, "peft_text", None)
    if old is not None:
        if float(gain) != old.gain:
            raise InputError(f"the model's text prompts use gain {old.gain}, not {gain}")
        vocabulary = set(old.vocabulary) | {normalise_name(n) for n in vocabulary}
    ref = next(decoder.parameters())
    module = TextPrompts(vocabulary, decoder.transformer_dim, gain).to(ref.device, ref.dtype)
    if old is not None:
        with torch.no_grad():
            for name, row in old._index.items():
                module.embedding.weight[module._index[name]] = old.embedding.weight[row]
    decoder.peft_text = module
    config = getattr(model, "peft_config", None)
    if config is not None:
        model.peft_config = dataclasses.replace(config, text_vocabulary=decoder.peft_text.vocabulary, text_gain=gain)
    return model
