"""What an evaluation prompts and scores: each dataset label, or regions (unions of label values that may overlap,
e.g. the whole optic disc = rim + cup). ``protocols`` runs the prompts; this module only says which voxels are
each target and what value it takes in predicted and overlay maps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class Targets:
    """The structures prompted and scored: each a label value, or a region (a union of label values)."""

    values: dict[str, tuple[int, ...]]
    regions: bool = False

    @classmethod
    def of_labels(cls, labels: Mapping[str, int]) -> "Targets":
        return cls({name: (int(value),) for name, value in labels.items()})

    def mask(self, gt: np.ndarray, name: str) -> np.ndarray:
        return np.isin(gt, self.values[name])

    def code(self, name: str) -> int:
        """The value a target gets in predicted / overlay maps: its label value, or its 1-based region index."""
        return list(self.values).index(name) + 1 if self.regions else self.values[name][0]

    def present_in(self, gt: np.ndarray) -> "Targets":
        return Targets({n: v for n, v in self.values.items() if self.mask(gt, n).any()}, self.regions)

    def coded_map(self, gt: np.ndarray) -> np.ndarray:
        """Ground truth as a map of target codes (labels: the map itself; regions: later drawn over earlier)."""
        if not self.regions:
            return np.asarray(gt)
        out = np.zeros(np.shape(gt), np.uint8)
        for name in self.values:
            out[self.mask(gt, name)] = self.code(name)
        return out

    @property
    def labels(self) -> dict[str, int]:
        return {name: self.code(name) for name in self.values}
