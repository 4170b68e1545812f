"""Does a propagated answer still look like the object the user prompted?

Propagation prompts each next slice with a box grown from the previous answer. When the model slips onto a
neighbouring structure, the area and overlap checks keep passing: the slip is gradual and every answer agrees
with the one before. What changes is what the encoder sees under the mask. On the prompted slice we average the
embedding under the object and under the rest of the slice; on each later slice the answer's averaged embedding
must stay closer (in cosine similarity) to the object's than to the background's. The embeddings are the ones
the decoder uses anyway, so the check costs no encoder pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .preprocessing import SliceTransform


def mask_pooled(embedding: torch.Tensor, transform: SliceTransform, mask: np.ndarray) -> torch.Tensor | None:
    """(C,) mean of a (1, C, h, w) slice embedding under a slice mask, area-weighted on the embedding grid.

    The embedding covers the padded model input, so the mask is resized to the grid cells holding the image
    (``resized_hw``) and the padding cells weigh nothing. None for an empty mask.
    """
    grid_h, grid_w = embedding.shape[-2:]
    cells_h = max(1, round(transform.resized_hw[0] * grid_h / transform.image_size))
    cells_w = max(1, round(transform.resized_hw[1] * grid_w / transform.image_size))
    weights = torch.zeros((grid_h, grid_w), dtype=torch.float32, device=embedding.device)
    plane = torch.as_tensor(np.asarray(mask, dtype=np.float32), device=embedding.device)[None, None]
    weights[:cells_h, :cells_w] = F.interpolate(plane, size=(cells_h, cells_w), mode="area")[0, 0]
    total = weights.sum()
    if float(total) <= 0:
        return None
    return (embedding[0].float() * weights).sum(dim=(1, 2)) / total


@dataclass(frozen=True)
class ObjectAppearance:
    """The object's and its background's mean embeddings on the slice where the user prompted it."""

    object: torch.Tensor
    background: torch.Tensor

    @classmethod
    def learn(cls, embedding: torch.Tensor, transform: SliceTransform, mask: np.ndarray) -> "ObjectAppearance | None":
        """None when the mask is empty or covers the whole slice (nothing to tell apart)."""
        inside = mask_pooled(embedding, transform, mask)
        outside = mask_pooled(embedding, transform, ~np.asarray(mask, bool))
        return None if inside is None or outside is None else cls(inside, outside)

    def contrast(self, embedding: torch.Tensor, transform: SliceTransform, mask: np.ndarray) -> float:
        """cos(answer, object) - cos(answer, background): 1 - cos(object, background) for the prompted mask
        itself, at or below 0 once the answer looks more like the background than like the object."""
        answer = mask_pooled(embedding, transform, mask)
        if answer is None:
            return float("-inf")
        return float(F.cosine_similarity(answer, self.object, dim=0)
                     - F.cosine_similarity(answer, self.background, dim=0))
