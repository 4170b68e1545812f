"""What the Slicer module's Logic does, without Qt: model choice, one bridge per (volume, segmentation),
model table, importing weights, exporting segmentations for fine-tuning and following a training run.

The Slicer module (``MedSAMAdapter/MedSAMAdapter.py``) and its Segment Editor effect share one
``SceneController`` per scene, so a click in the effect and the module's Propagate / Undo buttons act on the same
session, embedding cache and undo history.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..engine.atomic import atomic_path, copy_file_atomic, write_text_atomic
from ..engine.cache import EmbeddingCache
from ..engine.focus import DEFAULT_FOCUS, FocusPolicy
from ..errors import InputError
from .bridge import OverlapPolicy, SceneSegmenter
from .labelmaps import VoxelGrid, import_label_map, segment_ids_of
from .volumes import ijk_to_world_matrix, volume_from_node

PANEL_AUGMENT = 4  # augmented copies per case when a panel trains a prompt-free model (autosam-* recipes)
# The click adapter's own mixture, plus the segments' names learnt as text prompts (they are the dataset's labels)
PANEL_PROMPTS = "box=0.3,clicks=5,center=0.7,text=0.5"

ModelLoader = Callable[["ModelSettings"], Any]


@dataclass(frozen=True)
class ModelSettings:
    """Which network to run: registry name, optional adapter checkpoint, torch device, intensity policy."""

    name: str = "litemedsam"
    adapter: str | None = None
    device: str = "cpu"
    intensity: str = "auto"


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_loader(settings: ModelSettings) -> Any:
    from ..models.loading import open_model

    return open_model(settings.name, adapter=settings.adapter or None, device=_device(settings.device))


class SceneController:
    """Bridges for one scene, all sharing one model and one embedding cache."""

    def __init__(self, scene: Any, loader: ModelLoader = default_loader, cache: EmbeddingCache | None = None) -> None:
        self.scene = scene
        self.loader = loader
        self.cache = cache if cache is not None else EmbeddingCache()
        self.settings = ModelSettings()
        self.overlap: OverlapPolicy = "keep_others"
        self.names_as_text = True  # segment names are text prompts when the adapter knows them
        self.focus: FocusPolicy | None = DEFAULT_FOCUS  # zoom in on small objects for corrective clicks
        self._model: Any = None
        self._segmenters: dict[tuple[str, str], tuple[int, SceneSegmenter]] = {}

    # --- model -------------------------------------------------------------------------------------------------
    def configure(self, settings: ModelSettings) -> None:
        """Use another model / adapter / device / intensity; running bridges are closed (their undo too)."""
        if settings != self.settings:
            self.settings = settings
            self._model = None
            self.reset()

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self.loader(self.settings)
        return self._model

    # --- bridges -----------------------------------------------------------------------------------------------
    def segmenter(self, volume_node: Any, segmentation_node: Any) -> SceneSegmenter:
        """The bridge for this pair of nodes; rebuilt when the volume's voxels were replaced."""
        if volume_node is None or segmentation_node is None:
            raise InputError("select a volume and a segmentation first")
        key = (volume_node.GetID(), segmentation_node.GetID())
        image = volume_node.GetImageData()
        stamp = image.GetMTime() if image is not None else -1
        found = self._segmenters.get(key)
        if found is None or found[0] != stamp:
            if found is not None:
                found[1].close()
            found = (stamp, SceneSegmenter(self.scene, volume_node, segmentation_node, self.model, cache=self.cache,
                                           intensity=self.settings.intensity, overlap=self.overlap))
            self._segmenters[key] = found
        segmenter = found[1]
        segmenter.overlap = self.overlap  # settings a bridge follows without being rebuilt
        segmenter.session.names_as_text = self.names_as_text
        segmenter.session.focus = self.focus
        return segmenter

    def forget(self, node_id: str | None = None) -> None:
        """Close the bridges that use ``node_id`` (a removed node), or all of them."""
        for key in [k for k in self._segmenters if node_id is None or node_id in k]:
            self._segmenters.pop(key)[1].close()

    reset = forget

    # --- models table ------------------------------------------------------------------------------------------
    @staticmethod
    def model_table() -> list[dict]:
        """One row per registered model: name, architecture, input size, licence, found, path, hint."""
        from ..models.registry import describe_weights, list_models

        return [describe_weights(name) for name in list_models()]

    @staticmethod
    def import_weights(name: str, source: str | os.PathLike) -> Path:
        """Verify a downloaded weights file against the registry's sha256 and copy it where it is looked up
        (``$MEDSAM_ADAPTER_HOME/models`` or the user cache; never the extension's install folder)."""
        from ..models.registry import get_spec, verify_sha256

        spec = get_spec(name)
        source = Path(source).expanduser()
        if not source.is_file():
            raise InputError(f"{source}: file not found")
        verify_sha256(source, spec.sha256, hint=f"Model '{name}' needs the file {spec.filename}.")
        target = SceneController.user_model_folder() / spec.filename
        copy_file_atomic(source, target)
        return target

    @staticmethod
    def user_model_folder() -> Path:
        """``$MEDSAM_ADAPTER_HOME/models`` or the user cache's ``models``: where users' weights and models go."""
        from ..models.registry import HOME_ENV, user_cache_dir

        home = os.environ.get(HOME_ENV)
        return (Path(home).expanduser() if home else user_cache_dir()) / "models"

    # --- automatic segmentation --------------------------------------------------------------------------------
    @classmethod
    def auto_model_folders(cls) -> list[Path]:
        """Where prompt-free models (``<stem>.safetensors`` + ``<stem>.json`` card) are looked for: the shipped
        ``Resources/Models`` and the user's model folder (``$MEDSAM_ADAPTER_HOME/models`` or the user cache)."""
        from ..models.registry import MODELS_JSON

        return [MODELS_JSON.parent / "Models", cls.user_model_folder()]

    @classmethod
    def auto_models(cls) -> dict[str, Path]:
        """{name: card path} of the prompt-free models found (cards that do not read are skipped)."""
        return {name: path for name, (path, _) in cls._auto_model_cards().items()}

    @classmethod
    def _auto_model_cards(cls) -> dict[str, tuple[Path, dict]]:
        """{name: (card path, card)}; the first folder wins a name found twice."""
        from ..models.auto_heads import read_auto_card

        found: dict[str, tuple[Path, dict]] = {}
        for folder in cls.auto_model_folders():
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                try:
                    card = read_auto_card(path)
                except Exception:  # noqa: BLE001 - adapter cards and other JSON files live here too
                    continue
                found.setdefault(path.name[: -len(".json")], (path, card))
        return found

    @classmethod
    def auto_models_for(cls, volume_node: Any = None) -> list[str]:
        """Names of the prompt-free models, those trained on the volume's kind of image first (CT when its voxels
        look like Hounsfield units, else the non-CT models: a cardiac MR should not default to an abdominal CT
        model), then by name. Without a volume: by name."""
        from ..engine.preprocessing import looks_like_ct

        models = cls._auto_model_cards()
        if volume_node is None:
            return sorted(models)
        ct = looks_like_ct(volume_from_node(volume_node).array)

        def mismatch(name: str) -> bool:
            modality = models[name][1].get("training", {}).get("data", {}).get("modality")
            return modality is not None and (str(modality).upper() == "CT") != ct

        return sorted(models, key=lambda name: (mismatch(name), name))

    def run_auto(self, volume_node: Any, segmentation_node: Any, model: str | os.PathLike,
                 progress: Callable[[int, int], None] | None = None, refine_boxes: bool = False,
                 turn_search: bool | None = None) -> dict[int, str]:
        """Prompt-free segmentation: one new segment per class of the model (named, coloured, with terminology;
        classes it did not find give empty segments). ``model``: a name from ``auto_models()`` or a path.
        ``refine_boxes``: the model's plain base model redraws each class from boxes (``engine/refine.py``; the
        same as ``auto --refine-boxes``: it reuses the automatic model's embeddings). ``turn_search``: try the
        quarter turns of each plane (``auto --turn-search``; None: as the model card says). Returns {label value:
        segment id}."""
        from ..engine.auto import AutoSegmenter, open_box_refiner
        from ..engine.terminology import slicer_terminology_tag
        from ..models.auto_heads import read_auto_card

        path = self.auto_models().get(str(model)) or Path(model)
        base_name = (read_auto_card(path).get("base_model") or {}).get("name")
        # Reuse the open model only when it is that base without an adapter (the shipped click adapter changes
        # the encoder, and the head was trained on the base encoder's embeddings).
        reuse = self.settings.name == base_name and getattr(self.model, "peft_config", None) is None
        segmenter = AutoSegmenter(path, _device(self.settings.device), base_model=self.model if reuse else None,
                                  cache=self.cache, turn_search=turn_search)
        labels, classes = segmenter.segment(volume_from_node(volume_node), progress,
                                            refiner=open_box_refiner(segmenter) if refine_boxes else None)
        return self.import_labels(
            volume_node, segmentation_node, labels, {c.label_value: c.name for c in classes},
            colors={c.label_value: c.color for c in classes},
            terminologies={c.label_value: slicer_terminology_tag(c.terminology) for c in classes if c.terminology},
            values=[c.label_value for c in classes])

    def import_labels(self, volume_node: Any, segmentation_node: Any, labels: np.ndarray,
                      names: dict[int, str] | None = None, **options: Any) -> dict[int, str]:
        """Add a (k, j, i) label map as new segments (``import_label_map`` options: colors, terminologies,
        values); returns {value: segment id}."""
        volume = volume_from_node(volume_node)
        if segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        grid = VoxelGrid(volume.shape, ijk_to_world_matrix(volume_node), segmentation_node)
        return import_label_map(grid, labels, names, **options)

    # --- fine-tuning -------------------------------------------------------------------------------------------
    @staticmethod
    def export_training_case(volume_node: Any, segmentation_node: Any, dataset_dir: str | os.PathLike,
                             case: str | None = None, segment_ids: Sequence[str] | None = None) -> Path:
        """Add the volume and its segments as one case of an nnU-Net raw folder (created if needed).

        Labels are matched by segment name across cases (dataset.json keeps the mapping); where segments
        overlap, the later one in the segmentation wins. Returns the dataset folder.
        """
        import SimpleITK as sitk

        from ..engine.volume import write_label_map

        from ..engine.preprocessing import looks_like_ct

        root = Path(dataset_dir)
        meta_path = root / "dataset.json"
        volume = volume_from_node(volume_node)
        # the channel name is the modality a model trained here records (CT models are offered for CT first)
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {
            "channel_names": {"0": "CT" if looks_like_ct(volume.array) else "image"}, "labels": {"background": 0},
            "numTraining": 0, "file_ending": ".nii.gz"}
        if volume.is_rgb:
            raise InputError("colour volumes cannot be exported for fine-tuning; pick a scalar volume")
        grid = VoxelGrid(volume.shape, ijk_to_world_matrix(volume_node), segmentation_node)
        ids = list(segment_ids) if segment_ids is not None else segment_ids_of(segmentation_node)
        if not ids:
            raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segments to train on")
        labels = np.zeros(volume.shape, np.uint16)
        segmentation = segmentation_node.GetSegmentation()
        for sid in ids:
            name = segmentation.GetSegment(sid).GetName()
            value = meta["labels"].setdefault(name, max(meta["labels"].values(), default=0) + 1)
            labels[grid.read(sid)] = value
        case = case or _safe_name(volume_node.GetName())
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        image = volume.geometry.apply_to_sitk(sitk.GetImageFromArray(volume.array))
        with atomic_path(root / "imagesTr" / f"{case}_0000.nii.gz") as tmp:
            sitk.WriteImage(image, str(tmp), True)
        write_label_map(labels, volume.geometry, root / "labelsTr" / f"{case}.nii.gz")
        meta["numTraining"] = len(list((root / "labelsTr").glob("*.nii.gz")))
        write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
        return root

    @staticmethod
    def finetune_command(dataset_dirs: Sequence[str | os.PathLike], run_dir: str | os.PathLike, recipe: str,
                         epochs: int, model: str = "litemedsam", device: str = "auto",
                         python: str | None = None, init_adapter: str | None = None) -> list[str]:
        """The ``medsam-adapter finetune`` command line, run in a background process by the module
        (``init_adapter``: see :meth:`finetune_start_adapter`). An ``autosam-*`` recipe trains a prompt-free
        model on one dataset folder instead, with ``PANEL_AUGMENT`` augmented copies of each case (a head on a
        frozen encoder over-fits a few cases without them); :meth:`install_auto_model` then makes it pickable."""
        from ..training.config import AUTOSAM_RECIPES

        if epochs < 1:
            raise InputError(f"epochs must be at least 1, got {epochs}")
        auto = recipe in AUTOSAM_RECIPES
        if auto and len(dataset_dirs) != 1:
            raise InputError(f"recipe {recipe} trains on one dataset folder, got {len(dataset_dirs)}")
        return [python or sys.executable, "-m", "MedSAMAdapterLib.cli", "finetune",
                *[str(d) for d in dataset_dirs], "--out", str(run_dir), "--recipe", recipe,
                "--epochs", str(int(epochs)), "--model", model, "--device", device,
                *(["--prompts", PANEL_PROMPTS] if not auto else []),
                *(["--init-adapter", str(init_adapter)] if init_adapter and not auto else []),
                *(["--augment", str(PANEL_AUGMENT)] if auto else [])]

    @classmethod
    def install_auto_model(cls, run_dir: str | os.PathLike, name: str | None = None) -> str:
        """Copy a finished ``train-auto`` run's model into the user model folder (tensors first, the card that
        makes it visible last, each atomically) so ``auto_models()`` lists it; returns its name."""
        from ..models.auto_heads import auto_model_paths, read_auto_card

        tensors, card = auto_model_paths(Path(run_dir) / "auto_model")
        read_auto_card(card)  # refuses a missing or foreign card before anything is copied
        name = _safe_name(name or f"{Path(run_dir).parent.name}_{Path(run_dir).name}")
        target = cls.user_model_folder()
        copy_file_atomic(tensors, target / f"{name}.safetensors")
        copy_file_atomic(card, target / f"{name}.json")
        return name

    @staticmethod
    def finetune_start_adapter(recipe: str, adapter: str | None) -> str | None:
        """What a panel's fine-tune run starts from. With the ``decoder`` recipe: the adapter the user segments
        with (``default`` = the shipped click adapter when none is chosen), so clicks keep working after
        training on a few cases; encoder recipes, and the plain base model (``none``), start a fresh adapter."""
        from ..models.loading import NO_ADAPTER

        if recipe != "decoder" or adapter == NO_ADAPTER:
            return None
        return adapter or "default"

    @staticmethod
    def training_progress(run_dir: str | os.PathLike) -> dict:
        """{epoch, epochs, loss, best, curve (PNG path or None), adapter / auto_model (path or None: what the run
        trains)} from a run folder's ``history.json``; zeros while the run has not finished its first epoch."""
        run = Path(run_dir)
        out = {"epoch": 0, "epochs": 0, "loss": None, "best": None, "curve": None, "adapter": None}
        try:
            data = json.loads((run / "history.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return out
        history = data.get("history") or []
        out["epochs"] = int((data.get("config") or {}).get("epochs") or 0)
        if history:
            out["epoch"] = int(history[-1].get("epoch", len(history)))
            out["loss"] = history[-1].get("loss")
        out["best"] = data.get("best")
        if (run / "training_curve.png").is_file():
            out["curve"] = str(run / "training_curve.png")
        if (run / "best_adapter.safetensors").is_file():
            out["adapter"] = str(run / "best_adapter.safetensors")
        out["auto_model"] = str(run / "auto_model.json") if (run / "auto_model.json").is_file() else None
        return out


def _safe_name(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-." else "_" for c in text).strip("_")
    return cleaned or "case"
