"""Reading and writing images, volumes and label maps (SimpleITK; pictures through SimpleITK, Pillow as fallback).

Every image becomes a ``Volume``: a ``(k, j, i)`` float32 array (``(k, j, i, 3)`` for colour pictures) with its
``Geometry``. Problems a user can fix (missing file, 4D series, NaN voxels, label map on another grid) raise
``InputError`` naming the file and the reason. All writes go through ``atomic_path``: a failed write leaves no
partial file and an existing target untouched.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError
from .atomic import atomic_path
from .geometry import Geometry, Reorientation, slice_plane
from .preprocessing import resize_bilinear

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".seg.nrrd")
LABEL_WRITE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".png")
OVERLAY_ALPHA = 0.45


class _SimpleITKOnDemand:
    """SimpleITK, imported at the first file read or write: in-memory work (training from packed arrays on a
    GPU worker that lacks SimpleITK, the Slicer scene bridge) does not need it."""

    def __getattr__(self, name: str) -> Any:
        import SimpleITK

        return getattr(SimpleITK, name)


sitk = _SimpleITKOnDemand()

#: Default segment colours (r, g, b in 0..1), Slicer-like: green, yellow, blue, red, ...
DEFAULT_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.50, 0.68, 0.50), (0.95, 0.84, 0.57), (0.69, 0.48, 0.39), (0.44, 0.72, 0.82), (0.85, 0.40, 0.40),
    (0.87, 0.51, 0.76), (0.56, 0.55, 0.86), (0.98, 0.71, 0.29), (0.36, 0.80, 0.65), (0.78, 0.78, 0.26),
)


def default_color(label: int) -> tuple[float, float, float]:
    """Colour for a label value when the caller gives none (cycles through ``DEFAULT_COLORS``)."""
    return DEFAULT_COLORS[(int(label) - 1) % len(DEFAULT_COLORS)]


@dataclass(eq=False)
class Volume:
    """An image on a voxel grid: ``array`` (k, j, i) float32, or (k, j, i, 3) when ``is_rgb`` (2D colour pictures)."""

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)
    source: str | None = None
    is_rgb: bool = False

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim == (3 if self.is_rgb else 2):  # a single 2D slice: give it k = 1
            arr = arr[None]
        expected = 4 if self.is_rgb else 3
        if arr.ndim != expected or (self.is_rgb and arr.shape[-1] != 3):
            want = "(k, j, i, 3)" if self.is_rgb else "(k, j, i)"
            raise InputError(f"{self._name}: volume array must be {want}, got shape {arr.shape}")
        self.array = arr if arr.dtype == np.float32 else arr.astype(np.float32)

    @property
    def _name(self) -> str:
        return Path(self.source).name if self.source else "image"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(k, j, i) grid shape (without the colour channel)."""
        return tuple(int(v) for v in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def is_2d(self) -> bool:
        return self.shape[0] == 1

    def validate(self) -> "Volume":
        """Reject grids a model cannot work on: empty, a single voxel, NaN / infinite voxels."""
        if self.array.size == 0 or 0 in self.shape:
            raise InputError(f"{self._name}: the image is empty (size {self.shape[::-1]} as i, j, k)")
        if int(np.prod(self.shape)) == 1:
            raise InputError(f"{self._name}: the image has a single voxel; nothing to segment")
        bad = self.array.size - int(np.count_nonzero(np.isfinite(self.array)))
        if bad:
            raise InputError(
                f"{self._name}: {bad} voxel value(s) are NaN or infinite; replace them (e.g. with the background "
                f"value) before segmenting"
            )
        return self

    def reoriented(self, code: str | None) -> tuple["Volume", Reorientation | None]:
        """(this volume on the grid of orientation ``code``, the map back), by exact axis permutation / flip.

        Unchanged (map None) when ``code`` is None, the volume is already so, or it is a 2D image (a picture's
        rows and columns are used as stored: its geometry says nothing about the patient).
        """
        mapping = self.reorientation(code)
        return (self, None) if mapping is None else (self.remapped(mapping), mapping)

    def remapped(self, mapping: Reorientation) -> "Volume":
        """This volume on the grid of ``mapping`` (a reorientation or a quarter turn): the same physical voxels."""
        return Volume(np.ascontiguousarray(mapping.apply(self.array)), mapping.geometry, self.source, self.is_rgb)

    def reorientation(self, code: str | None) -> Reorientation | None:
        """The map onto the grid of orientation ``code`` (see :meth:`reoriented`); None when nothing changes."""
        if code is None or self.is_2d or self.is_rgb:
            return None
        mapping = Reorientation.to_code(self.geometry, self.shape, code)
        return None if mapping.is_identity else mapping

    def check_segmentable(self) -> None:
        """A constant image carries no edges to segment; say so rather than return an arbitrary mask."""
        self.validate()
        lo, hi = float(self.array.min()), float(self.array.max())
        if lo == hi:
            raise InputError(f"{self._name}: constant intensity ({lo:g} everywhere); there is nothing to segment")


# ---- reading ---------------------------------------------------------------------------------------------------
@dataclass
class _Raw:
    """An image as read, before conversion: native-dtype array (k, j, i[, c]), geometry, picture flag."""

    array: np.ndarray
    geometry: Geometry
    is_rgb: bool
    is_picture: bool


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in sorted({*PICTURE_SUFFIXES, *VOLUME_SUFFIXES, *LABEL_WRITE_SUFFIXES}, key=len, reverse=True):
        if name.endswith(s):
            return s
    return path.suffix.lower()


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK prints warnings on stderr (e.g. 'No Series were found'); we report problems ourselves."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _itk_reason(exc: Exception) -> str:
    """The informative part of an ITK exception: the ERROR line and, when there is one, its most specific cause."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    start = next((n for n, ln in enumerate(lines) if "ERROR" in ln), len(lines) - 1)
    head = re.sub(r"\(0x[0-9a-fA-F]+\)", "", lines[start]).split("ERROR:", 1)[-1].strip()
    cause = re.sub(r"^\[\w+\]\s*\w+:\s*", "", lines[-1]) if len(lines) > start + 1 else ""
    return (f"{head} {cause}" if cause else head)[:400]


def _check_path(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path.name}: the file is empty (0 bytes)")


def _read_sitk_image(path: Path) -> Any:
    try:
        with _quiet_itk():
            return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path.name}: cannot be read as an image ({_itk_reason(exc)})") from None


def _read_dicom_folder(folder: Path) -> Any:
    """The DICOM series with the most files in ``folder`` (non-recursive)."""
    with _quiet_itk():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        if not series:
            raise InputError(
                f"{folder.name}: the folder holds no DICOM series; give a folder of .dcm slices or an image file"
            )
        files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series), key=len)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            return reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{folder.name}: DICOM series cannot be read ({_itk_reason(exc)})") from None


def _squeeze_4d(image: Any, name: str) -> Any:
    """Accept a 4D image with one time point as 3D; refuse real 4D data with advice."""
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        return sitk.Extract(image, (*size[:3], 0), (0, 0, 0, 0))
    if image.GetDimension() >= 4:
        raise InputError(
            f"{name}: the image is {image.GetDimension()}D (size {size}); this tool segments 2D or 3D images. "
            f"Pick one channel / time frame (e.g. save volume t of the series as its own file) and load that"
        )
    return image


def _raw_from_sitk(image: Any, name: str, picture: bool) -> _Raw:
    image = _squeeze_4d(image, name)
    comps = image.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayFromImage(image)
    geometry = Geometry.identity() if picture else Geometry.from_sitk(image)
    if image.GetDimension() == 2:
        arr = arr[None]
    if comps == 1:
        return _Raw(arr, geometry, False, picture)
    if comps in (3, 4) and arr.shape[0] == 1:
        return _rgb_raw(arr[..., :3], geometry, picture)  # RGBA: the alpha channel is dropped
    raise InputError(
        f"{name}: {comps} values per voxel (a vector / multi-channel image); save the channel to segment "
        f"as its own file"
    )


def _rgb_raw(arr: np.ndarray, geometry: Geometry, picture: bool) -> _Raw:
    """Colour pixels; a grey picture stored as RGB (equal channels) becomes a plain grey image."""
    if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        return _Raw(arr[..., 0], geometry, False, picture)
    return _Raw(arr, geometry, True, picture)


def _read_picture_pillow(path: Path) -> _Raw:
    """Fallback for picture modes ITK cannot read (grey + alpha, palette with transparency, CMYK...)."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            mode = img.mode
            if mode in ("LA", "1", "L"):
                arr = np.asarray(img.convert("L"))
            elif mode.startswith("I") or mode == "F":
                arr = np.asarray(img)
            else:
                arr = np.asarray(img.convert("RGB"))
    except Exception as exc:  # Pillow raises many types for broken files
        raise InputError(f"{path.name}: cannot be read as a picture ({exc})") from None
    arr = arr[None]
    if arr.ndim == 4:
        return _rgb_raw(arr, Geometry.identity(), True)
    return _Raw(arr, Geometry.identity(), False, True)


def _read_raw(path: str | Path) -> _Raw:
    path = Path(path)
    _check_path(path)
    if path.is_dir():
        return _raw_from_sitk(_read_dicom_folder(path), path.name, picture=False)
    picture = _suffix(path) in PICTURE_SUFFIXES
    try:
        image = _read_sitk_image(path)
    except InputError:
        if not picture:
            raise
        return _read_picture_pillow(path)
    # A multi-page TIFF reads as a 3D stack; it has no physical geometry either.
    return _raw_from_sitk(image, path.name, picture=picture)


def read_volume(path: str | Path) -> Volume:
    """Read NIfTI, NRRD, MHA/MHD, a DICOM file or series folder, or a PNG/JPG/BMP/TIFF picture.

    Pictures get k = 1 and identity geometry (spacing 1); colour pictures stay RGB ``(1, H, W, 3)``.
    """
    raw = _read_raw(path)
    return Volume(raw.array, raw.geometry, str(path), raw.is_rgb).validate()


def _to_label_dtype(arr: np.ndarray, name: str) -> np.ndarray:
    """Integer labels as the smallest of uint8 / uint16; refuse fractional, negative or huge values."""
    if arr.size == 0:
        raise InputError(f"{name}: the label map is empty")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{name}: label values must be whole numbers (found fractional or NaN values)")
    elif arr.dtype.kind not in "uib":
        raise InputError(f"{name}: unsupported label map data type {arr.dtype}")
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise InputError(f"{name}: label values must be >= 0 (found {lo})")
    if hi > np.iinfo(np.uint16).max:
        raise InputError(f"{name}: label value {hi} is too large (at most 65535 labels)")
    return arr.astype(np.uint8 if hi <= 255 else np.uint16)


def read_label_map(path: str | Path, reference: Volume | None = None) -> np.ndarray:
    """Read a label map as (k, j, i) uint8/uint16; with ``reference``, insist on the same voxel grid.

    Pictures carry no geometry, so only their size is compared.
    """
    name = Path(path).name
    raw = _read_raw(path)
    if raw.is_rgb:
        raise InputError(f"{name}: a label map must have one value per voxel, this is a colour image")
    labels = _to_label_dtype(raw.array, name)
    if reference is not None:
        if labels.shape != reference.shape:
            raise InputError(
                f"{name}: label map size {labels.shape[::-1]} (i, j, k) differs from the image size "
                f"{reference.shape[::-1]}; it must be drawn on the same voxel grid"
            )
        diff = None if raw.is_picture else raw.geometry.mismatch(reference.geometry)
        if diff:
            raise InputError(f"{name}: label map grid differs from the image ({diff}); resample it to the image")
    return labels


# ---- writing ---------------------------------------------------------------------------------------------------
def _labels_3d(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"label map must be (k, j, i), got shape {arr.shape}")
    return _to_label_dtype(arr, "label map")


def _clean(text: str) -> str:
    """Header values must stay on one line."""
    return " ".join(str(text).split())


def segmentation_metadata(
    labels: np.ndarray,
    segment_names: Mapping[int, str] | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
) -> dict[str, str]:
    """3D Slicer ``.seg.nrrd`` header fields for a shared (one-layer) labelmap: one segment per label value.

    Segments = label values present plus any named ones. Every segment's extent is the whole grid, because
    Slicer takes the first segment's extent as the extent of the shared layer.
    """
    names, cols = dict(segment_names or {}), dict(colors or {})
    values = sorted({int(v) for v in np.unique(labels) if v != 0} | {int(v) for v in names if int(v) != 0})
    nk, nj, ni = labels.shape
    meta = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for n, value in enumerate(values):
        rgb = cols.get(value, default_color(value))
        fields = {
            "ID": f"Segment_{value}",
            "Name": _clean(names.get(value, f"Segment_{value}")),
            "NameAutoGenerated": "0",
            "Color": " ".join(f"{float(c):.6g}" for c in rgb[:3]),
            "ColorAutoGenerated": "0",
            "LabelValue": str(value),
            "Layer": "0",
            "Extent": f"0 {ni - 1} 0 {nj - 1} 0 {nk - 1}",
            "Tags": "Segmentation.Status:inprogress|",
        }
        meta.update({f"Segment{n}_{key}": val for key, val in fields.items()})
    return meta


def _labels_to_sitk(labels: np.ndarray, geometry: Geometry) -> Any:
    image = sitk.GetImageFromArray(labels, isVector=False)
    return geometry.apply_to_sitk(image)


def write_label_map(
    labels: np.ndarray,
    geometry: Geometry,
    path: str | Path,
    segment_names: Mapping[int, str] | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
) -> Path:
    """Write (k, j, i) integer labels to ``.seg.nrrd`` (Slicer segmentation with named, coloured segments),
    ``.nii[.gz]``, ``.nrrd``, ``.mha``, or ``.png`` (one-slice label maps only). Atomic; returns the path."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in LABEL_WRITE_SUFFIXES:
        raise InputError(f"{path.name}: cannot write a label map as '{suffix}'; use one of {LABEL_WRITE_SUFFIXES}")
    arr = _labels_3d(labels)
    if suffix == ".png":
        _write_png_labels(arr, path)
        return path
    image = _labels_to_sitk(arr, geometry)
    if suffix == ".seg.nrrd":
        for key, value in segmentation_metadata(arr, segment_names, colors).items():
            image.SetMetaData(key, value)
    with atomic_path(path) as tmp:
        _write_sitk(image, tmp, path.name)
    return path


def _write_sitk(image: Any, tmp: Path, name: str) -> None:
    try:
        with _quiet_itk():
            sitk.WriteImage(image, str(tmp), useCompression=True)
    except RuntimeError as exc:
        raise InputError(f"{name}: cannot be written ({_itk_reason(exc)})") from None


def _write_png_labels(arr: np.ndarray, path: Path) -> None:
    if arr.shape[0] != 1:
        raise InputError(
            f"{path.name}: PNG holds one slice; this label map has {arr.shape[0]} (use .nii.gz or .seg.nrrd)"
        )
    if arr.dtype != np.uint8:
        raise InputError(f"{path.name}: PNG label maps hold values 0..255; found {int(arr.max())}")
    with atomic_path(path) as tmp:
        _write_sitk(sitk.GetImageFromArray(arr[0]), tmp, path.name)


# ---- overlay picture -------------------------------------------------------------------------------------------
def _pick_index(labels: np.ndarray, axis: int) -> int:
    """Middle of the labelled slices along ``axis``, or the middle slice when nothing is labelled."""
    other = tuple(a for a in range(3) if a != axis)
    labelled = np.flatnonzero(labels.any(axis=other))
    return int(labelled[len(labelled) // 2]) if labelled.size else labels.shape[axis] // 2


def _to_rgb8(plane: np.ndarray, is_rgb: bool) -> np.ndarray:
    """Grey (1st-99th percentile) or colour (joint min-max) plane -> (H, W, 3) float in 0..255."""
    plane = plane.astype(np.float32)
    lo, hi = (float(plane.min()), float(plane.max())) if is_rgb else np.percentile(plane, [1.0, 99.0])
    scaled = np.clip((plane - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0) * 255.0
    return scaled if is_rgb else np.repeat(scaled[..., None], 3, axis=2)


def _output_size(hw: tuple[int, int], spacing_rc: tuple[float, float]) -> tuple[int, int]:
    """Pixel size that shows the slice with its physical aspect ratio; at least 256 and at most 2048 px wide/high."""
    h = hw[0] * spacing_rc[0] / min(spacing_rc)
    w = hw[1] * spacing_rc[1] / min(spacing_rc)
    factor = max(1.0, 256.0 / max(h, w))
    factor = min(factor, 2048.0 / max(h, w))
    return max(1, round(h * factor)), max(1, round(w * factor))


def _resize_nearest(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(hw[0]) + 0.5) * arr.shape[0] / hw[0], arr.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(hw[1]) + 0.5) * arr.shape[1] / hw[1], arr.shape[1] - 1).astype(int)
    return arr[rows][:, cols]


def _resize_rgb(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))[None]
    return resize_bilinear(t, hw)[0].permute(1, 2, 0).numpy().copy()


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (or on the picture edge)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def render_overlay(
    volume: Volume,
    labels: np.ndarray,
    axis: int = 0,
    index: int | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
) -> np.ndarray:
    """(H', W', 3) uint8 picture of one slice with the labels blended in (alpha 0.45) and outlined."""
    labels = np.asarray(labels)
    if labels.shape != volume.shape:
        raise InputError(f"label map shape {labels.shape} differs from the volume shape {volume.shape}")
    index = _pick_index(labels, axis) if index is None else int(index)
    rgb = _to_rgb8(slice_plane(volume.array, axis, index), volume.is_rgb)
    lab = slice_plane(labels, axis, index)
    size = _output_size(lab.shape, volume.geometry.plane_spacing(axis))
    rgb, lab = _resize_rgb(rgb, size), _resize_nearest(lab, size)
    cols = dict(colors or {})
    for value in (int(v) for v in np.unique(lab) if v != 0):
        colour = np.asarray(cols.get(value, default_color(value))[:3], np.float32) * 255.0
        mask = lab == value
        rgb[mask] = (1.0 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * colour
        rgb[_boundary(mask)] = colour
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def write_overlay_png(
    volume: Volume,
    labels: np.ndarray,
    path: str | Path,
    axis: int = 0,
    index: int | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
) -> Path:
    """Save ``render_overlay`` as a PNG (atomic) for reports and quick checks; returns the path."""
    path = Path(path)
    picture = render_overlay(volume, labels, axis, index, colors)
    with atomic_path(path, suffix=".png") as tmp:
        _write_sitk(sitk.GetImageFromArray(picture, isVector=True), tmp, path.name)
    return path
