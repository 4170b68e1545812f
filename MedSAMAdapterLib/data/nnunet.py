"""Reader for nnU-Net v2 "raw" datasets (``dataset.json`` + ``imagesTr/`` + ``labelsTr/``).

Only the folder layout is checked here (cheap, no image decoding), so opening a dataset with thousands of cases
is instant; a broken dataset fails at ``open_dataset`` with a message naming the file to fix, not half-way
through a long evaluation. Images are read later, case by case, with ``engine.volume``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:  # engine.volume is imported lazily at run time (see read_case)
    from ..engine.volume import Volume

NATURAL_IMAGE_ENDINGS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
_FRAME_SUFFIX = re.compile(r"_frame\d+$")


@dataclass(frozen=True)
class NnUNetDataset:
    """One nnU-Net raw dataset folder; ``labels`` excludes background (value 0)."""

    root: Path
    name: str
    labels: dict[str, int]
    file_ending: str
    channel_names: dict[str, str]
    dimensionality: str  # "2D" or "3D"
    cases: list[str]
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole dataset.json

    @property
    def channel_files(self) -> int:
        """Image files per case: 1 for RGB natural images (nnU-Net keeps R,G,B in ``_0000.png``)."""
        return _channel_file_count(self.channel_names, self.file_ending)

    def image_path(self, case: str, channel: int = 0) -> Path:
        self._check_case(case)
        if not 0 <= channel < self.channel_files:
            raise InputError(
                f"dataset {self.name} has {self.channel_files} image file(s) per case; channel {channel} does not exist"
            )
        return self.root / "imagesTr" / f"{case}_{channel:04d}{self.file_ending}"

    def label_path(self, case: str) -> Path:
        self._check_case(case)
        return self.root / "labelsTr" / f"{case}{self.file_ending}"

    def pixel_spacing_mm(self, case: str) -> float | None:
        """In-plane pixel size from dataset.json ``pixel_spacing_mm`` (e.g. HC18), for 2D files that lack it."""
        value = self.metadata.get("pixel_spacing_mm")
        if isinstance(value, dict):
            value = value.get(case)
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    def _check_case(self, case: str) -> None:
        if case not in self.cases:
            raise InputError(f"case {case!r} is not in dataset {self.name} ({len(self.cases)} cases)")


def open_dataset(root: str | Path) -> NnUNetDataset:
    """Read ``dataset.json`` and list the cases; InputError says exactly what is missing or inconsistent."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist")
    meta = _read_dataset_json(root)
    ending = _file_ending(meta, root)
    channel_names = {str(k): str(v) for k, v in _required(meta, "channel_names", dict, root).items()}
    if not channel_names:
        raise InputError(f"{root / 'dataset.json'}: channel_names is empty; name at least one input channel")
    labels = _labels(meta, root)
    cases = _find_cases(root, ending, _channel_file_count(channel_names, ending))
    dimensionality = _dimensionality(meta, root, ending, cases)
    return NnUNetDataset(root, root.name, labels, ending, channel_names, dimensionality, cases, meta)


def read_case(dataset: NnUNetDataset, case: str, channel: int = 0) -> tuple["Volume", np.ndarray]:
    """(image, label map (k, j, i) uint) of one case; ``read_label_map`` checks both share one voxel grid."""
    from ..engine.volume import read_label_map, read_volume

    image = read_volume(dataset.image_path(case, channel))
    return image, read_label_map(dataset.label_path(case), image)


def default_group(case: str) -> str:
    """Patient key: ACDC ``patient002_frame01`` and ``patient002_frame02`` are one patient."""
    return _FRAME_SUFFIX.sub("", case)


def split_cases(
    dataset: NnUNetDataset | Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    group_by: Callable[[str], str] | None = None,
) -> tuple[list[str], list[str]]:
    """Deterministic (train, val) split by patient group, so no patient leaks from training into validation.

    ``val_fraction`` is a fraction of groups; with at least two groups both sides get at least one group.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    cases = list(dataset.cases if isinstance(dataset, NnUNetDataset) else dataset)
    key = group_by or default_group
    groups = sorted({key(c) for c in cases})
    n_val = int(round(val_fraction * len(groups)))
    if val_fraction > 0 and len(groups) > 1:
        n_val = min(max(n_val, 1), len(groups) - 1)
    order = np.random.default_rng(seed).permutation(len(groups))
    val_groups = {groups[i] for i in order[:n_val]}
    train = sorted(c for c in cases if key(c) not in val_groups)
    val = sorted(c for c in cases if key(c) in val_groups)
    return train, val


# --- internals -----------------------------------------------------------------------------------------
def _read_dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not path.is_file():
        raise InputError(f"{root} is not an nnU-Net raw dataset: {path.name} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    return meta


def _required(meta: dict[str, Any], key: str, kind: type, root: Path) -> Any:
    if key not in meta:
        raise InputError(f"{root / 'dataset.json'} has no {key!r} entry")
    if not isinstance(meta[key], kind):
        raise InputError(f"{root / 'dataset.json'}: {key!r} must be a {kind.__name__}, not {type(meta[key]).__name__}")
    return meta[key]


def _file_ending(meta: dict[str, Any], root: Path) -> str:
    ending = _required(meta, "file_ending", str, root).lower()
    if not ending.startswith(".") or len(ending) < 2:
        raise InputError(f"{root / 'dataset.json'}: file_ending must look like '.nii.gz' or '.png', not {ending!r}")
    return ending


def _labels(meta: dict[str, Any], root: Path) -> dict[str, int]:
    raw = _required(meta, "labels", dict, root)
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, (list, tuple)):
            raise InputError(
                f"{root / 'dataset.json'}: label {name!r} is a region {value}; region-based labels are not supported"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{root / 'dataset.json'}: label {name!r} must be a non-negative integer, not {value!r}")
        if value != 0:
            labels[str(name)] = value
    if len(set(labels.values())) != len(labels):
        raise InputError(f"{root / 'dataset.json'}: two labels share one value: {labels}")
    if not labels:
        raise InputError(f"{root / 'dataset.json'}: no foreground labels (only background) declared")
    return dict(sorted(labels.items(), key=lambda item: item[1]))


def _channel_file_count(channel_names: dict[str, str], ending: str) -> int:
    rgb = [v.strip().upper() for v in channel_names.values()] in (["R", "G", "B"], ["R", "G", "B", "A"])
    return 1 if ending in NATURAL_IMAGE_ENDINGS and rgb else len(channel_names)


def _find_cases(root: Path, ending: str, channel_files: int) -> list[str]:
    images, labels = root / "imagesTr", root / "labelsTr"
    for folder in (images, labels):
        if not folder.is_dir():
            raise InputError(f"{root} is not an nnU-Net raw dataset: folder {folder.name}/ is missing")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    channels: dict[str, set[int]] = {}
    for path in images.iterdir():
        match = pattern.match(path.name)
        if match:
            channels.setdefault(match.group(1), set()).add(int(match.group(2)))
    label_cases = {p.name[: -len(ending)] for p in labels.iterdir() if p.name.endswith(ending) and p.is_file()}
    if not channels:
        raise InputError(f"{images} holds no images named <case>_0000{ending}")
    _check_consistency(root, channels, label_cases, channel_files, ending)
    return sorted(channels)


def _check_consistency(
    root: Path, channels: dict[str, set[int]], label_cases: set[str], channel_files: int, ending: str
) -> None:
    expected = set(range(channel_files))
    for case, found in sorted(channels.items()):
        if found != expected:
            missing = sorted(expected - found)
            names = [f"{case}_{c:04d}{ending}" for c in missing]
            detail = f"missing {names}" if missing else f"extra channels {sorted(found - expected)}"
            raise InputError(f"imagesTr/ of {root.name}: case {case!r} has channels {sorted(found)}; {detail}")
    no_label = sorted(set(channels) - label_cases)
    if no_label:
        raise InputError(
            f"{root.name}: {len(no_label)} case(s) have an image but no label in labelsTr/: {no_label[:5]}"
        )
    no_image = sorted(label_cases - set(channels))
    if no_image:
        raise InputError(
            f"{root.name}: {len(no_image)} label(s) in labelsTr/ have no image in imagesTr/: {no_image[:5]}"
        )


def _dimensionality(meta: dict[str, Any], root: Path, ending: str, cases: list[str]) -> str:
    """From dataset.json when given, else 2D for natural-image files, else from the first image's header."""
    declared = meta.get("dimensionality")
    if declared is not None:
        value = str(declared).strip().upper()
        if value not in ("2D", "3D"):
            raise InputError(f"{root / 'dataset.json'}: dimensionality must be '2D' or '3D', not {declared!r}")
        return value
    if ending in NATURAL_IMAGE_ENDINGS:
        return "2D"
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(root / "imagesTr" / f"{cases[0]}_0000{ending}"))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"cannot read the header of {reader.GetFileName()}: {exc}") from None
    size = reader.GetSize()
    return "2D" if len(size) == 2 or (len(size) >= 3 and size[2] == 1) else "3D"


def parse_regions(items: Sequence[str], labels: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """``NAME=A,B,...`` items (A, B: label values or names of ``labels``) -> {name: sorted label values}."""
    regions: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, members = str(item).partition("=")
        if not sep or not name.strip() or not members.strip():
            raise InputError(f"a region is NAME=LABEL[,LABEL...] (e.g. optic_disc=1,2), got {item!r}")
        values = set()
        for member in (m.strip() for m in members.split(",") if m.strip()):
            if member.isdigit() and int(member) in labels.values():
                values.add(int(member))
            elif member in labels:
                values.add(int(labels[member]))
            else:
                raise InputError(f"region {name.strip()!r}: {member!r} is not a label of the dataset "
                                 f"({', '.join(f'{n}={v}' for n, v in labels.items())})")
        regions[name.strip()] = tuple(sorted(values))
    return regions
