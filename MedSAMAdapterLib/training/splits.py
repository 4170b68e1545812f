"""Which cases train and which validate: split by patient (both frames of a cine-MRI patient, every slice of a
case, stay on one side), with the same options and the same seeded result for every trainer (``finetune``,
``train-auto``, ``distill``) and for ``scripts/gpu/pack_cases.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class SplitOptions:
    """How cases are split into training and validation, by patient (``choose_split``); one set of options for
    every trainer (``finetune``, ``train-auto``, ``distill``) and their CLI flags (``cli_finetune.add_split_options``,
    read back by ``cli_finetune.split_options``).

    ``val_cases`` / ``train_cases``: explicit case or patient ids (override the split). ``val_patients``: this
    many patients held out (instead of ``val_fraction``). ``max_train_patients``: keep the first N training
    patients of a seeded permutation (few-shot runs; both frames of a patient stay together).
    """

    val_fraction: float = 0.2
    seed: int = 0
    train_cases: tuple[str, ...] = ()
    val_cases: tuple[str, ...] = ()
    max_train_patients: int | None = None
    val_patients: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise InputError(f"the validation fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("max_train_patients", "val_patients"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise InputError(f"{name} must be >= 1, got {value}")
        object.__setattr__(self, "train_cases", tuple(str(c) for c in self.train_cases or ()))
        object.__setattr__(self, "val_cases", tuple(str(c) for c in self.val_cases or ()))

    def describe(self) -> dict[str, Any]:
        return {"val_fraction": self.val_fraction, "split_seed": self.seed,
                **{k: v for k, v in (("train_cases_given", list(self.train_cases)),
                                     ("val_cases_given", list(self.val_cases)),
                                     ("max_train_patients", self.max_train_patients),
                                     ("held_out_patients", self.val_patients)) if v}}


def choose_split(cases: Sequence[str], options: SplitOptions = SplitOptions()) -> tuple[list[str], list[str]]:
    """(train, val) case names, split by patient (``split_cases``) so no patient is on both sides."""
    from ..data.nnunet import default_group, split_cases

    cases = list(cases)
    if options.val_cases:
        val = _expand_cases(options.val_cases, cases, "validation case")
        rest = [c for c in cases if c not in val]
    else:
        groups = sorted({default_group(c) for c in cases})
        fraction = (options.val_fraction if options.val_patients is None
                    else min(options.val_patients, len(groups) - 1) / len(groups))
        rest, val = split_cases(cases, fraction, options.seed) if fraction > 0 else (cases, [])
    if options.train_cases:
        train = _expand_cases(options.train_cases, cases, "training case")
        overlap = sorted(set(train) & set(val))
        if overlap:
            raise InputError(f"cases {overlap[:5]} are both training and validation cases")
    else:
        train = rest
    if options.max_train_patients is not None:
        groups = sorted({default_group(c) for c in train})
        order = np.random.default_rng(options.seed).permutation(len(groups))
        keep = {groups[i] for i in order[:options.max_train_patients]}
        train = sorted(c for c in train if default_group(c) in keep)
    return train, val


def _expand_cases(wanted: Sequence[str], all_cases: Sequence[str], what: str) -> list[str]:
    """Case ids, or patient ids (``patient002`` = all its frames, via ``default_group``), -> sorted case ids."""
    from ..data.nnunet import default_group

    out: set[str] = set()
    for item in wanted:
        item = str(item).strip()
        matches = [c for c in all_cases if c == item or default_group(c) == item]
        if not matches:
            raise InputError(f"{what} {item!r} is neither a case nor a patient of the dataset")
        out.update(matches)
    return sorted(out)
