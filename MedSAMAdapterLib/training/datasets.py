"""Slice datasets for fine-tuning: nnU-Net raw folders (2D PNG, 3D NIfTI) or in-memory (volume, label map) pairs.

Every case is normalised once, whole-volume, with ``volume_to_display_range`` (``IntensityPolicy`` auto: soft-tissue
window for CT, 0.5-99.5 percentiles otherwise; RGB pictures min-max jointly), exactly as the inference engine's
``VolumeEmbedder`` does, so a slice seen in training looks like the slice seen at inference. 3D volumes are cut
into axial planes (numpy axis 0, constant k).

A sample is one plane and one *binary* target: a label chosen at random among the training labels present on that
plane (``target = label_plane == label``), or, with ``regions``, a region (a union of label values, e.g. the whole
optic disc = rim + cup) present there (``target = isin(label_plane, region)``). Two kinds of samples:

- ``foreground`` (``foreground_fraction``, default 80 %): a plane containing at least one training label.
- ``edge`` (the rest, 3D only): a plane *without* label L lying within ``edge_margin`` planes of the end of L,
  with ``prompt_mask`` = L on the nearest plane that has it. This is what ``InteractiveSession.propagate`` asks
  the model when it runs past the end of an object (the previous plane's box on a plane where the object is
  gone), so the model learns to answer "nothing here". Cases with no such plane only give foreground samples.

Sampling is a function of (seed, epoch, index) only: ``dataset[i]`` after ``set_epoch(e)`` is the same in every
run and after a resume. Datasets are chosen uniformly first (several folders), then a plane uniformly within
the dataset, so one big 3D dataset does not drown a small 2D one. Cases are held in memory (display volume +
label map); use ``max_cases`` for big datasets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch.utils.data

from ..engine.focus import Window
from ..engine.preprocessing import IntensityPolicy, volume_to_display_range
from ..engine.volume import Volume
from ..errors import InputError
from .splits import SplitOptions, choose_split

SLICE_AXIS = 0  # training planes are axial: numpy axis 0 (constant k)
SAMPLE_KINDS = ("foreground", "edge")


@dataclass(eq=False)
class TrainingCase:
    """One image with its label map, ready for slice sampling.

    ``volume`` keeps the raw intensities (the embedding cache hashes them); ``display`` is the whole-volume
    [0, 255] version fed to ``prepare_slice``; ``presence[label]`` says on which planes (axis 0) a label occurs.
    ``regions`` (optional) makes the training targets unions of label values: ``label_values`` are then region
    ids (keys of ``regions``) and ``label_names`` their names.
    """

    case_id: str
    volume: Volume
    display: np.ndarray
    labels: np.ndarray
    label_values: tuple[int, ...]
    dataset: str = ""
    label_names: dict[int, str] = field(default_factory=dict)
    presence: dict[int, np.ndarray] = field(default_factory=dict)
    regions: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def target(self, label_map: np.ndarray, label: int) -> np.ndarray:
        """Binary mask of training target ``label`` (a label value, or a region id) in a plane or label map."""
        values = self.regions.get(label)
        return label_map == label if values is None else np.isin(label_map, values)

    @property
    def slice_count(self) -> int:
        return int(self.labels.shape[SLICE_AXIS])

    @property
    def is_3d(self) -> bool:
        return self.slice_count > 1

    def plane(self, index: int) -> np.ndarray:
        """Display-range plane (H, W) or (H, W, 3), float32 in [0, 255]."""
        return self.display[index]

    def label_plane(self, index: int) -> np.ndarray:
        return self.labels[index]

    def labels_on(self, index: int) -> list[int]:
        """Training labels present on plane ``index``."""
        return [v for v in self.label_values if self.presence[v][index]]


    def reoriented(self, code: str | None) -> "TrainingCase":
        """This case on the grid of orientation ``code`` (``Volume.reoriented``; itself when nothing changes)."""
        volume, mapping = self.volume.reoriented(code)
        if mapping is None:
            return self
        labels = np.ascontiguousarray(mapping.apply(self.labels))
        presence = {v: np.asarray(self.target(labels, v).any(axis=(1, 2))) for v in self.label_values}
        return TrainingCase(self.case_id, volume, np.ascontiguousarray(mapping.apply(self.display)), labels,
                            self.label_values, self.dataset, dict(self.label_names), presence, dict(self.regions))


def onto_one_orientation(train: Sequence[TrainingCase], val: Sequence[TrainingCase] | None,
                         code: str | None = None) -> tuple[str | None, list[TrainingCase], list[TrainingCase]]:
    """(code, train, val) with every case on the grid of ``code`` (default: ``common_orientation(train)``): what
    automatic-model trainers do before training, recording the code in the card."""
    code = code or common_orientation(train)
    return code, [c.reoriented(code) for c in train], [c.reoriented(code) for c in val or []]


def common_orientation(cases: Sequence[TrainingCase]) -> str | None:
    """The orientation code most of the 3D ``cases`` are stored in (first seen wins a tie); None for 2D data.

    Automatic models train on, and record, one orientation; inference brings every volume onto it.
    """
    from collections import Counter

    from ..engine.geometry import orientation_code

    codes = Counter(orientation_code(c.volume.geometry) for c in cases if not c.volume.is_2d)
    return codes.most_common(1)[0][0] if codes else None


@dataclass(eq=False)
class SliceSample:
    """One training / validation item: a display plane, its label plane and one binary target.

    ``prompt_mask`` is set for ``edge`` samples only: the mask (same label, nearest plane that has it) prompts
    are derived from, since the target itself is empty there.
    """

    image: np.ndarray
    label_plane: np.ndarray
    target: np.ndarray
    label: int
    case_id: str
    slice_index: int
    dataset: str = ""
    case_index: int = -1
    kind: str = "foreground"
    prompt_mask: np.ndarray | None = None
    name: str = ""  # the target's label / region name (the text prompt when training text prompts)
    window: Window | None = None  # set when the sample is seen through a focus window (``focused``)

    @property
    def key(self) -> tuple[int, int]:
        """(case index in its dataset, plane index): identifies the plane's embedding (``window`` the crop of it)."""
        return self.case_index, self.slice_index

    def focused(self, window: Window) -> "SliceSample":
        """This sample as the session sees it when it zooms: every plane cropped to ``window``."""
        rows, cols = window.slices
        prompt_mask = None if self.prompt_mask is None else self.prompt_mask[rows, cols]
        return dataclasses.replace(self, image=self.image[rows, cols], label_plane=self.label_plane[rows, cols],
                                   target=self.target[rows, cols], prompt_mask=prompt_mask, window=window)


def make_case(
    case_id: str,
    image: Volume | np.ndarray,
    label_map: np.ndarray,
    labels: Iterable[int] | None = None,
    dataset: str = "",
    intensity: IntensityPolicy | str = "auto",
    label_names: dict[int, str] | None = None,
    regions: dict[int, tuple[int, ...]] | None = None,
) -> TrainingCase:
    """A :class:`TrainingCase` from an image (``Volume``, or an array (k, j, i) / (H, W) grey) and a label map.

    ``labels``: the label values to train on (default: every non-zero value in the map). ``regions``: {region id:
    label values} to train on unions instead (``labels`` then selects region ids; ``label_names`` names them).
    RGB pictures must come as a ``Volume`` with ``is_rgb`` (an (H, W, 3) array would be ambiguous with a 3-slice
    volume).
    """
    volume = image if isinstance(image, Volume) else Volume(np.asarray(image, np.float32))
    volume.validate()
    label_map = np.asarray(label_map)
    if label_map.ndim == 2:
        label_map = label_map[None]
    if label_map.shape != volume.shape:
        raise InputError(f"case {case_id}: label map shape {label_map.shape} differs from the image shape "
                         f"{volume.shape} (both (k, j, i))")
    if not np.issubdtype(label_map.dtype, np.integer):
        if not np.all(label_map == np.round(label_map)):
            raise InputError(f"case {case_id}: the label map holds non-integer values")
        label_map = label_map.astype(np.int32)
    values = set(np.unique(label_map).tolist()) - {0}
    regions = {int(r): tuple(int(v) for v in vs) for r, vs in (regions or {}).items()}
    present = {r for r, vs in regions.items() if values & set(vs)} if regions else values
    wanted = sorted(present if labels is None else (set(int(v) for v in labels) & present))
    display = volume_to_display_range(volume.array, intensity, is_rgb=volume.is_rgb)
    case = TrainingCase(case_id, volume, display, label_map, tuple(wanted), dataset, dict(label_names or {}),
                        regions=regions)
    case.presence = {v: np.asarray(case.target(label_map, v).any(axis=(1, 2))) for v in wanted}
    return case


class SliceDataset(torch.utils.data.Dataset):
    """Random (plane, label) samples over a list of :class:`TrainingCase` (see the module docstring).

    ``len(dataset)`` is ``length`` when given, else the number of foreground planes; ``dataset[i]`` is a
    deterministic function of (seed, epoch, i). ``sample(rng)`` draws with a caller's generator.
    """

    def __init__(self, cases: Sequence[TrainingCase], seed: int = 0, foreground_fraction: float = 0.8,
                 edge_margin: int = 2, length: int | None = None, name: str = "") -> None:
        if not 0.0 <= foreground_fraction <= 1.0:
            raise InputError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if edge_margin < 0:
            raise InputError(f"edge_margin must be >= 0, got {edge_margin}")
        self.cases = list(cases)
        self.seed = int(seed)
        self.foreground_fraction = float(foreground_fraction)
        self.edge_margin = int(edge_margin)
        self.length = length
        self.name = name
        self.epoch = 0
        self._fg: dict[str, list[tuple[int, int]]] = {}
        self._edge: dict[str, list[tuple[int, int, int, int]]] = {}
        for ci, case in enumerate(self.cases):
            for s in range(case.slice_count):
                if case.labels_on(s):
                    self._fg.setdefault(case.dataset, []).append((ci, s))
            for label in case.label_values:
                for s, src in _edge_planes(case.presence[label], self.edge_margin):
                    self._edge.setdefault(case.dataset, []).append((ci, s, label, src))
        self._datasets = sorted(self._fg)
        if not self._datasets:
            raise InputError(f"no plane of the {len(self.cases)} case(s){f' of {name}' if name else ''} contains "
                             f"a training label: nothing to train or validate on")

    # --- torch Dataset --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.length) if self.length is not None else self.foreground_count

    def __getitem__(self, index: int) -> SliceSample:
        return self.sample(self.rng_for(self.epoch, index))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng_for(self, epoch: int, index: int) -> np.random.Generator:
        """The generator of item ``index`` in ``epoch`` (also used by the trainer for that item's prompts)."""
        return np.random.default_rng([self.seed, int(epoch), int(index)])

    # --- sampling -------------------------------------------------------------------------------------
    @property
    def foreground_count(self) -> int:
        return sum(len(v) for v in self._fg.values())

    @property
    def edge_count(self) -> int:
        return sum(len(v) for v in self._edge.values())

    def sample(self, rng: np.random.Generator) -> SliceSample:
        """One sample: a dataset uniformly, then a foreground plane (or, with 1 - foreground_fraction and where
        the dataset has them, an edge plane) uniformly, then a label among those present."""
        name = self._datasets[int(rng.integers(len(self._datasets)))]
        edges = self._edge.get(name, [])
        if edges and rng.random() >= self.foreground_fraction:
            ci, s, label, src = edges[int(rng.integers(len(edges)))]
            return self.make_sample(ci, s, label, kind="edge", prompt_slice=src)
        ci, s = self._fg[name][int(rng.integers(len(self._fg[name])))]
        present = self.cases[ci].labels_on(s)
        return self.make_sample(ci, s, present[int(rng.integers(len(present)))])

    def sample_chunk(self, rng: np.random.Generator, depth: int) -> list[SliceSample]:
        """``depth`` consecutive planes of one 3D case and one label present in the chunk (for SD-Trans
        training, recipe ``medsa-3d``). Planes where the label is absent have an empty target."""
        name = self._datasets[int(rng.integers(len(self._datasets)))]
        pool = [(ci, s) for ci, s in self._fg[name] if self.cases[ci].slice_count >= depth]
        if not pool:
            raise InputError(f"SD-Trans chunks need 3D cases with at least {depth} planes; {name or 'the data'} "
                             f"has none (2D datasets cannot train recipe 'medsa-3d')")
        ci, s = pool[int(rng.integers(len(pool)))]
        case = self.cases[ci]
        present = case.labels_on(s)
        label = present[int(rng.integers(len(present)))]
        start = int(np.clip(s - int(rng.integers(depth)), 0, case.slice_count - depth))
        return [self.make_sample(ci, i, label) for i in range(start, start + depth)]

    def make_sample(self, case_index: int, slice_index: int, label: int, kind: str = "foreground",
                    prompt_slice: int | None = None) -> SliceSample:
        case = self.cases[case_index]
        label_plane = case.label_plane(slice_index)
        prompt_mask = None if prompt_slice is None else case.target(case.label_plane(prompt_slice), label)
        return SliceSample(case.plane(slice_index), label_plane, case.target(label_plane, label), int(label),
                           case.case_id,
                           int(slice_index), case.dataset, case_index, kind, prompt_mask,
                           case.label_names.get(int(label), ""))

    # --- planes the trainer needs -----------------------------------------------------------------------
    def candidate_slices(self, chunk_depth: int | None = None) -> dict[int, list[int]]:
        """{case index: sorted planes a sample can come from} (planes to embed once in cached mode).

        With ``chunk_depth`` (SD-Trans), every plane of a chunk that can be drawn is included.
        """
        out: dict[int, set[int]] = {}
        for pairs in self._fg.values():
            for ci, s in pairs:
                n = self.cases[ci].slice_count
                if chunk_depth is None:
                    out.setdefault(ci, set()).add(s)
                elif n >= chunk_depth:
                    lo, hi = max(0, s - chunk_depth + 1), min(n - chunk_depth, s)
                    out.setdefault(ci, set()).update(range(lo, hi + chunk_depth))
        if chunk_depth is None:
            for edges in self._edge.values():
                for ci, s, _, _ in edges:
                    out.setdefault(ci, set()).add(s)
        return {ci: sorted(v) for ci, v in sorted(out.items())}

    def validation_items(self, max_items: int | None = 32, seed: int = 0) -> list[SliceSample]:
        """A fixed list of foreground samples, spread over cases and labels.

        First, per (case, label), the plane where the label is largest (what the evaluation protocol prompts in
        3D); then further (plane, label) pairs at random (seeded) until ``max_items``.
        """
        largest, rest = [], []
        for ci, case in enumerate(self.cases):
            for label in case.label_values:
                planes = np.flatnonzero(case.presence[label])
                areas = [int(case.target(case.label_plane(s), label).sum()) for s in planes]
                best = int(planes[int(np.argmax(areas))])
                largest.append((ci, best, label))
                rest += [(ci, int(s), label) for s in planes if s != best]
        rng = np.random.default_rng([self.seed, int(seed), 7919])
        if max_items is not None and len(largest) > max_items:
            largest = [largest[i] for i in sorted(rng.permutation(len(largest))[:max_items])]
        room = len(rest) if max_items is None else max(0, max_items - len(largest))
        extra = [rest[i] for i in sorted(rng.permutation(len(rest))[:room])]
        return [self.make_sample(ci, s, label) for ci, s, label in sorted(largest + extra)]

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for the model card and report: datasets, case lists, counts."""
        per: dict[str, dict[str, Any]] = {}
        for case in self.cases:
            entry = per.setdefault(case.dataset, {"cases": [], "labels": {}, "planes": 0})
            entry["cases"].append(case.case_id)
            for v in case.label_values:
                entry["labels"][str(v)] = case.label_names.get(v, str(v))
            entry["planes"] += case.slice_count
        return {
            "cases": len(self.cases),
            "foreground_planes": self.foreground_count,
            "edge_planes": self.edge_count,
            "foreground_fraction": self.foreground_fraction,
            "datasets": per,
        }


def _edge_planes(presence: np.ndarray, margin: int) -> list[tuple[int, int]]:
    """(plane without the label, nearest plane with it) for planes within ``margin`` of the label's planes."""
    present = np.flatnonzero(presence)
    if margin == 0 or present.size == 0 or presence.size < 2:
        return []
    out = []
    for s in range(presence.size):
        if presence[s]:
            continue
        nearest = int(present[np.argmin(np.abs(present - s))])
        if abs(nearest - s) <= margin:
            out.append((s, nearest))
    return out


# ---------------------------------------------------------------------------------------------- nnU-Net folders
def resolve_labels(dataset: Any, wanted: Sequence[str | int] | None) -> dict[int, str]:
    """{value: name} of the dataset's labels selected by ``wanted`` (names or values; None = all)."""
    by_value = {v: n for n, v in dataset.labels.items()}
    if not wanted:
        return dict(sorted(by_value.items()))
    chosen: dict[int, str] = {}
    for item in wanted:
        text = str(item).strip()
        if text.lstrip("-").isdigit() and int(text) in by_value:
            chosen[int(text)] = by_value[int(text)]
        elif text in dataset.labels:
            chosen[dataset.labels[text]] = text
    return dict(sorted(chosen.items()))


class RegionMatcher:
    """Applies ``NAME=LABEL,...`` region items to datasets one by one: each dataset gets the regions whose labels
    it has; :meth:`check` refuses items that matched no dataset (with the reason)."""

    def __init__(self, items: Sequence[str]) -> None:
        self.items = list(items)
        self.unmatched: dict[str, str] = {item: "" for item in self.items}  # item -> why no dataset took it

    def labels_of(self, labels: dict[str, int]) -> tuple[dict[int, str], dict[int, tuple[int, ...]] | None]:
        """({region id: name}, {region id: label values}) for a dataset's ``labels``; ({}, None) when none apply."""
        from ..data.nnunet import parse_regions

        parsed: dict[str, tuple[int, ...]] = {}
        for item in self.items:
            try:
                parsed.update(parse_regions([item], labels))
            except InputError as error:
                if item in self.unmatched:
                    self.unmatched[item] = str(error)
                continue
            self.unmatched.pop(item, None)
        if not parsed:
            return {}, None
        names = dict(enumerate(parsed, start=1))
        return names, {i: parsed[n] for i, n in names.items()}

    def check(self) -> None:
        if self.unmatched:
            raise InputError("no dataset has the labels of: " + "; ".join(r or i for i, r in self.unmatched.items()))


def load_nnunet_cases(dataset: Any, cases: Sequence[str], labels: dict[int, str] | None = None,
                      intensity: IntensityPolicy | str = "auto", channel: int = 0,
                      regions: dict[int, tuple[int, ...]] | None = None) -> list[TrainingCase]:
    """Read ``cases`` of an opened nnU-Net dataset (``data.nnunet.open_dataset``) as training cases
    (``regions``: {region id: label values}, with ``labels`` = {region id: name})."""
    from ..data.nnunet import read_case

    labels = labels if labels is not None else {v: n for n, v in dataset.labels.items()}
    out = []
    for case in cases:
        image, label_map = read_case(dataset, case, channel)
        out.append(make_case(case, image, label_map, labels.keys(), dataset.name, intensity, labels, regions))
    return out


@dataclass
class DataSplit:
    """Training and validation datasets plus the description written to the model card."""

    train: SliceDataset
    val: SliceDataset | None
    description: dict[str, Any]


def build_nnunet_split(
    roots: Sequence[str | Path],
    split: SplitOptions = SplitOptions(),
    max_cases: int | None = None,
    labels: Sequence[str | int] | None = None,
    intensity: IntensityPolicy | str = "auto",
    foreground_fraction: float = 0.8,
    edge_margin: int = 2,
    regions: Sequence[str] | None = None,
) -> DataSplit:
    """Open nnU-Net raw folders, split each by patient (``choose_split``: ``split`` applies to every folder),
    read the cases.

    ``max_cases`` caps the cases per dataset (a seeded random subset, so it is not all 'benign_*' of BUSI);
    ``labels`` selects labels by name or value in every dataset that has them (unknown everywhere -> error).
    ``regions``: ``NAME=LABEL,...`` items (``data.nnunet.parse_regions``, the syntax of ``evaluate --region``):
    train on these unions of labels instead (e.g. ``optic_disc=optic_disc_rim,optic_cup``). Each dataset takes
    the regions whose labels it has (give labels by name when training on several datasets) and keeps its own
    labels when it has none of them; a region no dataset has is an error.
    """
    from ..data.nnunet import open_dataset

    if not roots:
        raise InputError("give at least one nnU-Net dataset folder")
    if regions and labels:
        raise InputError("give labels or regions, not both")
    train_list: list[TrainingCase] = []
    val_list: list[TrainingCase] = []
    described = []
    matched_any = False
    unmatched = RegionMatcher(regions or ())
    for root in roots:
        dataset = open_dataset(root)
        chosen, region_values = unmatched.labels_of(dataset.labels)
        if region_values is None:
            chosen = resolve_labels(dataset, labels)
        if not chosen:
            described.append({"name": dataset.name, "skipped": "none of the requested labels"})
            continue
        matched_any = True
        names = list(dataset.cases)
        if max_cases is not None and len(names) > max_cases:
            order = np.random.default_rng(split.seed).permutation(len(names))[:max_cases]
            names = sorted(names[i] for i in order)
        tr, va = choose_split(names, split)
        train_list += load_nnunet_cases(dataset, tr, chosen, intensity, regions=region_values)
        val_list += load_nnunet_cases(dataset, va, chosen, intensity, regions=region_values)
        described.append({
            "name": dataset.name, "root": str(Path(root).resolve()), "dimensionality": dataset.dimensionality,
            "labels": {str(v): n for v, n in chosen.items()}, "train_cases": tr, "val_cases": va,
            **({"regions": {chosen[i]: list(v) for i, v in region_values.items()}} if region_values else {}),
            "licence": dataset.metadata.get("licence"),
        })
    if not matched_any:
        raise InputError(f"none of the labels {list(labels or [])} exists in the given datasets")
    unmatched.check()
    train = SliceDataset(train_list, split.seed, foreground_fraction, edge_margin, name="training")
    val = SliceDataset(val_list, split.seed, 1.0, 0, name="validation") if _any_label(val_list) else None
    description = {
        "source": "nnunet", "datasets": described, **split.describe(), "max_cases": max_cases, "intensity": IntensityPolicy.parse(intensity).id, "slice_axis": SLICE_AXIS,
        "train": train.describe(), "val": val.describe() if val else None,
    }
    return DataSplit(train, val, description)


def build_array_split(
    pairs: Sequence[tuple[Volume | np.ndarray, np.ndarray]],
    case_ids: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    labels: Iterable[int] | None = None,
    label_names: dict[int, str] | None = None,
    intensity: IntensityPolicy | str = "auto",
    foreground_fraction: float = 0.8,
    edge_margin: int = 2,
    name: str = "in-memory",
) -> DataSplit:
    """Training data from in-memory (image, label map) pairs (e.g. the volumes open in the Slicer scene).

    Cases are split with ``split_cases`` like nnU-Net folders; ``val_fraction=0`` trains on everything.
    """
    if not pairs:
        raise InputError("no (image, label map) pairs given")
    ids = list(case_ids) if case_ids is not None else [f"case{i:03d}" for i in range(len(pairs))]
    if len(ids) != len(pairs) or len(set(ids)) != len(ids):
        raise InputError("case_ids must be unique and one per pair")
    from ..data.nnunet import split_cases

    tr, va = split_cases(ids, val_fraction, seed, group_by=lambda c: c)
    labels = None if labels is None else list(labels)
    cases = {cid: make_case(cid, img, lab, labels, name, intensity, label_names) for cid, (img, lab) in zip(ids, pairs)}
    train = SliceDataset([cases[c] for c in tr], seed, foreground_fraction, edge_margin, name="training")
    val_list = [cases[c] for c in va]
    val = SliceDataset(val_list, seed, 1.0, 0, name="validation") if _any_label(val_list) else None
    description = {
        "source": "arrays", "datasets": [{"name": name, "train_cases": tr, "val_cases": va,
                                          "labels": {str(k): v for k, v in (label_names or {}).items()}}],
        "val_fraction": val_fraction, "split_seed": seed, "intensity": IntensityPolicy.parse(intensity).id,
        "slice_axis": SLICE_AXIS, "train": train.describe(), "val": val.describe() if val else None,
    }
    return DataSplit(train, val, description)


def _any_label(cases: Sequence[TrainingCase]) -> bool:
    return any(case.presence[v].any() for case in cases for v in case.label_values)
