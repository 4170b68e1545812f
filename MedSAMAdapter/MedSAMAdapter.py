"""MedSAMAdapter: Segment Anything adapted to medical images, in 3D Slicer.

Module class, typed parameter node, a widget that only wires ``Resources/UI/MedSAMAdapter.ui`` to the Logic,
the Logic (no Qt) driving the scene bridge ``MedSAMAdapterLib.scene``, and a self-test on a synthetic volume.
Clicks and boxes come from the "MedSAM" Segment Editor effect (``SegmentEditorMedSAM.py``), which shares this
module's Logic, so both act on one session, one embedding cache and one undo history.
"""

import json
import os
import pathlib
import sys
from typing import Annotated, Optional

import qt

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin


def _packageRoot() -> str:
    """Folder holding the MedSAMAdapterLib package: beside this file when packaged, the repository root in a
    source checkout (module path = <repo>/MedSAMAdapter). Put on sys.path so ``import MedSAMAdapterLib`` works."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(folder, "MedSAMAdapterLib")):
            if folder not in sys.path:
                sys.path.append(folder)
            return folder
    return here


PACKAGE_ROOT = _packageRoot()


def _registeredModels() -> list:
    """Model names from Resources/models.json, read without importing torch (the combo box needs them early)."""
    try:
        with open(os.path.join(PACKAGE_ROOT, "Resources", "models.json"), encoding="utf-8") as f:
            return [entry["name"] for entry in json.load(f)["models"]] or ["litemedsam"]
    except (OSError, ValueError, KeyError):
        return ["litemedsam"]


MODELS = _registeredModels()
INTENSITIES = ["auto", "minmax", "percentile", "ct-soft-tissue", "ct-abdomen", "ct-liver", "ct-lung", "ct-bone",
               "ct-brain"]
DEVICES = ["auto", "cpu", "cuda"]
OVERLAPS = ["keep_others", "overwrite", "only_empty"]
RECIPES = ["decoder", "medsa", "medsa-3d", "lora", "autosam-vit", "autosam-cnn", "autosam-linear"]


#
# MedSAMAdapter
#


class MedSAMAdapter(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSAM Adapter")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["MedSAMAdapter contributors"]
        self.parent.helpText = _("""
Promptable segmentation with Segment Anything models adapted to medical images (LiteMedSAM, SAM ViT, your own
fine-tuned adapters). Click or drag a box in any slice view with the <b>MedSAM</b> Segment Editor effect,
propagate through the volume, fine-tune an adapter on your own segmentations.
""")
        self.parent.acknowledgementText = _("""
Builds on segment-anything (Meta AI, Apache-2.0) and LiteMedSAM (Bo Wang lab, Apache-2.0).
""")


#
# MedSAMAdapterParameterNode
#


@parameterNodeWrapper
class MedSAMAdapterParameterNode:
    """inputVolume / segmentation: the nodes segmented; model, adapterPath, intensity, device: the network;
    overlap: what a result may do to other segments; namesAsText: segment names go with the prompts as text when
    the adapter knows them; zoomSmallObjects: a box, or corrective clicks, on a small object are answered on a
    zoomed window around it; recipe, epochs, runDirectory: fine-tuning."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    model: Annotated[str, Choice(MODELS)] = MODELS[0]
    adapterPath: pathlib.Path
    intensity: Annotated[str, Choice(INTENSITIES)] = "auto"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    overlap: Annotated[str, Choice(OVERLAPS)] = "keep_others"
    namesAsText: bool = True
    zoomSmallObjects: bool = True
    recipe: Annotated[str, Choice(RECIPES)] = "decoder"
    epochs: Annotated[int, WithinRange(1, 1000)] = 10
    runDirectory: pathlib.Path


#
# MedSAMAdapterWidget
#


class MedSAMAdapterWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wiring only: every action is one Logic call inside ``tryWithErrorDisplay``."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._finetune = None
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(500)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSAMAdapter.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSAMAdapterLogic.shared()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.segmentEditorButton.connect("clicked(bool)", self.onOpenSegmentEditor)
        self.ui.precomputeButton.connect("clicked(bool)", self.onPrecompute)
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagate)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.redoButton.connect("clicked(bool)", self.onRedo)
        self.ui.autoRunButton.connect("clicked(bool)", self.onAutoRun)
        self.ui.finetuneStartButton.connect("clicked(bool)", self.onFinetuneStart)
        self.ui.finetuneCancelButton.connect("clicked(bool)", self.onFinetuneCancel)
        self.ui.importWeightsButton.connect("clicked(bool)", self.onImportWeights)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.onRefreshModels)
        self._pollTimer.connect("timeout()", self.onPoll)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._pollTimer.stop()
        if self._finetune is not None:
            self._finetune.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.onRefreshModels()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.logic.sceneClosed()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode: Optional[MedSAMAdapterParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # widgets carry a "SlicerParameterName" dynamic property in the .ui file
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # --- actions ------------------------------------------------------------------------------------------------
    def onInstall(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to install the Python packages."), waitCursor=True):
            self.logic.ensureDependencies(askConfirmation=True)
            self.onRefreshModels()

    def onOpenSegmentEditor(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to open the Segment Editor."), waitCursor=True):
            self.logic.openSegmentEditor(self._parameterNode)

    def onPrecompute(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to compute the embeddings."), waitCursor=True):
            self.logic.precompute(self._parameterNode)
            self._pollTimer.start()

    def onPropagate(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to propagate."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.propagate(self._parameterNode)

    def onUndo(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to undo."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.undo(self._parameterNode)

    def onRedo(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to redo."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.redo(self._parameterNode)

    def onAutoRun(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Automatic segmentation failed."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.runAuto(self._parameterNode, self.ui.autoModelComboBox.currentText,
                                                          self.ui.autoRefineCheckBox.checked,
                                                          self.ui.autoTurnsCheckBox.checked)

    def onFinetuneStart(self) -> None:
        from MedSAMAdapterSlicerLib.finetune import FinetuneProcess

        with slicer.util.tryWithErrorDisplay(_("Failed to start fine-tuning."), waitCursor=True):
            command, runDir = self.logic.prepareFinetune(self._parameterNode)
            self._finetune = FinetuneProcess(command, runDir, self.logic.finetuneEnvironment())
            self._finetune.start()
            self._pollTimer.start()

    def onFinetuneCancel(self) -> None:
        if self._finetune is not None:
            self._finetune.cancel()

    def onImportWeights(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Weights file"), "",
                                              "Weights (*.pth *.pt *.safetensors)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Failed to import the weights."), waitCursor=True):
                self.logic.importWeights(self._parameterNode.model, path)
                self.onRefreshModels()

    def onRefreshModels(self) -> None:
        table = self.ui.modelsTableWidget
        rows = self.logic.modelTable()
        table.setRowCount(len(rows))
        for row, entry in enumerate(rows):
            status = _("found") if entry["found"] else _("missing")
            for column, text in enumerate((entry["name"], status, entry.get("path") or entry.get("hint") or "")):
                table.setItem(row, column, qt.QTableWidgetItem(str(text)))
        self.ui.autoModelComboBox.clear()
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        self.ui.autoModelComboBox.addItems(self.logic.autoModels(volume))

    def onPoll(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Background work failed.")):
            try:
                self._updateProgress()
            except Exception:
                self._pollTimer.stop()
                raise

    def _updateProgress(self) -> None:
        done, total = self.logic.embeddingProgress()
        self.ui.embeddingProgressBar.maximum = max(total, 1)
        self.ui.embeddingProgressBar.value = done
        busy = total > 0 and done < total
        if self._finetune is not None:
            progress = self._finetune.progress()
            self.ui.finetuneProgressBar.maximum = max(progress["epochs"], 1)
            self.ui.finetuneProgressBar.value = progress["epoch"]
            if progress["curve"]:
                self.ui.curveLabel.setPixmap(qt.QPixmap(progress["curve"]))
            self.ui.finetuneStatusLabel.text = self._finetune.statusText()
            if self._finetune.finishedAutoModel():
                self.onRefreshModels()  # the new prompt-free model joins the Automatic section's list
            busy = busy or self._finetune.running
        if not busy:
            self._pollTimer.stop()


#
# MedSAMAdapterLogic
#


class MedSAMAdapterLogic(ScriptedLoadableModuleLogic):
    """No Qt: drives ``MedSAMAdapterLib.scene.SceneController`` (one per scene), usable from scripts and tests.

    ``shared()`` is the instance the widget and the Segment Editor effect use together.
    """

    _shared = None

    @classmethod
    def shared(cls) -> "MedSAMAdapterLogic":
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def __init__(self, scene=None, loader=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene = scene  # None: slicer.mrmlScene, looked up when needed
        self.loader = loader
        self._controller = None

    def getParameterNode(self):
        return MedSAMAdapterParameterNode(super().getParameterNode())

    # --- dependencies and the controller ------------------------------------------------------------------------
    def ensureDependencies(self, askConfirmation: bool = True) -> None:
        from MedSAMAdapterSlicerLib.install import ensureDependencies

        ensureDependencies(self.resourcePath("requirements.txt"), askConfirmation=askConfirmation)

    def resourcePath(self, relative: str) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", relative)

    @property
    def controller(self):
        if self._controller is None:
            self.ensureDependencies()
            from MedSAMAdapterLib.scene import SceneController

            scene = self.scene or slicer.mrmlScene
            self._controller = SceneController(scene, self.loader) if self.loader else SceneController(scene)
        return self._controller

    def sceneClosed(self) -> None:
        if self._controller is not None:
            self._controller.forget()

    @staticmethod
    def adapterSetting(parameterNode):
        """The chosen adapter file, or None (an empty path field: the model's shipped default)."""
        adapter = str(parameterNode.adapterPath) if parameterNode.adapterPath else ""
        return adapter if adapter not in ("", ".") else None

    def segmenter(self, parameterNode):
        """The bridge for the selected volume and segmentation, with the selected model settings."""
        from MedSAMAdapterLib.engine.focus import FocusPolicy
        from MedSAMAdapterLib.scene import ModelSettings

        self.controller.configure(ModelSettings(name=parameterNode.model, adapter=self.adapterSetting(parameterNode),
                                                device=parameterNode.device, intensity=parameterNode.intensity))
        self.controller.overlap = parameterNode.overlap
        self.controller.names_as_text = parameterNode.namesAsText
        self.controller.focus = FocusPolicy() if parameterNode.zoomSmallObjects else None
        if parameterNode.segmentation is None:
            parameterNode.segmentation = (self.scene or slicer.mrmlScene).AddNewNodeByClass(
                "vtkMRMLSegmentationNode", "MedSAM segmentation")
        return self.controller.segmenter(parameterNode.inputVolume, parameterNode.segmentation)

    def segmenterFor(self, volumeNode, segmentationNode):
        """For the Segment Editor effect: the effect's nodes, this module's model settings."""
        parameterNode = self.getParameterNode()
        parameterNode.inputVolume = volumeNode
        parameterNode.segmentation = segmentationNode
        return self.segmenter(parameterNode)

    # --- interactive --------------------------------------------------------------------------------------------
    def openSegmentEditor(self, parameterNode) -> None:
        self.segmenter(parameterNode)  # loads the model now, not on the first click
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(parameterNode.segmentation)
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(parameterNode.inputVolume)
        else:  # Slicer < 5.2
            editor.setMasterVolumeNode(parameterNode.inputVolume)
        editor.setActiveEffectByName("MedSAM")

    def precompute(self, parameterNode, view: str = "axial"):
        self._embedding = self.segmenter(parameterNode).precompute(view=view)
        return self._embedding

    def embeddingProgress(self) -> tuple:
        job = getattr(self, "_embedding", None)
        if job is None:
            return 0, 0
        if job.error is not None:
            self._embedding = None
            raise RuntimeError(f"embedding failed: {job.error}")
        return job.done, job.total

    def propagate(self, parameterNode, segmentId: Optional[str] = None) -> str:
        segmenter = self.segmenter(parameterNode)
        segmentId = segmentId or segmenter.last_segment
        if segmentId is None:
            raise ValueError(_("Click or drag a box on the object first (Segment Editor, MedSAM effect)."))
        result = segmenter.propagate(segmentId)
        status = _("Propagated to {count} slices.").format(count=len(result.slices))
        if result.stops:  # the reasons come from the engine, in English
            status += " " + _("Stopped at {stops}.").format(stops="; ".join(result.stops))
        return status

    def undo(self, parameterNode) -> str:
        return _("Undone.") if self.segmenter(parameterNode).undo() else _("Nothing to undo.")

    def redo(self, parameterNode) -> str:
        return _("Redone.") if self.segmenter(parameterNode).redo() else _("Nothing to redo.")

    # --- automatic segmentation ---------------------------------------------------------------------------------
    def autoModels(self, volumeNode=None) -> list:
        """Prompt-free model names, those made for the volume's kind of image (CT or not) first."""
        try:
            from MedSAMAdapterLib.scene import SceneController
        except ImportError:  # dependencies not installed yet
            return []
        return SceneController.auto_models_for(volumeNode)

    def runAuto(self, parameterNode, modelName: str, refineBoxes: bool = False, tryTurns: bool = False) -> str:
        if not modelName:
            raise ValueError(_("No prompt-free model found: put one (.safetensors + .json card) in the model "
                               "folder listed in the Models section, or train one with 'medsam-adapter'."))
        segmenter = self.segmenter(parameterNode)
        created = self.controller.run_auto(parameterNode.inputVolume, segmenter.segmentation_node, modelName,
                                           refine_boxes=refineBoxes,
                                           turn_search=True if tryTurns else None)  # unticked: as the card says
        return _("Added {count} segments.").format(count=len(created))

    # --- fine-tuning ---------------------------------------------------------------------------------------------
    def prepareFinetune(self, parameterNode) -> tuple:
        """Export the selected volume + segmentation as training data; returns (command, run folder)."""
        from MedSAMAdapterLib.scene import SceneController

        runDir = pathlib.Path(str(parameterNode.runDirectory)) if parameterNode.runDirectory else None
        if runDir is None or str(runDir) in ("", "."):
            raise ValueError(_("Choose a folder for the fine-tuning run."))
        dataset = SceneController.export_training_case(parameterNode.inputVolume, parameterNode.segmentation,
                                                       runDir / "Dataset_Slicer")
        start = SceneController.finetune_start_adapter(parameterNode.recipe, self.adapterSetting(parameterNode))
        command = SceneController.finetune_command([dataset], runDir / "run", parameterNode.recipe,
                                                   parameterNode.epochs, model=parameterNode.model,
                                                   device=parameterNode.device, python=self.pythonExecutable(),
                                                   init_adapter=start)
        return command, runDir / "run"

    @staticmethod
    def pythonExecutable() -> str:
        launcher = getattr(slicer.app, "slicerHome", None)
        if launcher and os.name == "nt":
            return os.path.join(launcher, "bin", "PythonSlicer.exe")
        return os.path.join(launcher, "bin", "PythonSlicer") if launcher else sys.executable

    @staticmethod
    def finetuneEnvironment() -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        return env

    # --- models -------------------------------------------------------------------------------------------------
    def modelTable(self) -> list:
        try:
            from MedSAMAdapterLib.scene import SceneController
        except ImportError:  # dependencies not installed yet
            return [{"name": name, "found": False, "hint": _("install the Python packages first")} for name in MODELS]
        return SceneController.model_table()

    def importWeights(self, modelName: str, path: str) -> str:
        from MedSAMAdapterLib.scene import SceneController

        return str(SceneController.import_weights(modelName, path))


#
# MedSAMAdapterTest
#


class MedSAMAdapterTest(ScriptedLoadableModuleTest):
    """Runs the bridge on a synthetic bright ball with a small deterministic stand-in model (no weights needed)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_BridgeOnSyntheticVolume()

    def test_BridgeOnSyntheticVolume(self):
        import numpy as np

        from MedSAMAdapterLib.scene import add_volume_node, load_segmentation, save_segmentation

        self.delayDisplay("Synthetic volume: a bright ball, oblique and anisotropic")
        shape, center = (20, 40, 44), (10, 20, 22)
        k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
        ball = ((i - center[2]) * 0.8) ** 2 + ((j - center[1]) * 1.2) ** 2 + ((k - center[0]) * 2.0) ** 2 <= 121
        image = np.where(ball, 200.0, 20.0).astype(np.float32)
        angle = np.deg2rad(20)
        ijkToRas = np.eye(4)
        ijkToRas[:3, :3] = np.array([[-np.cos(angle), -np.sin(angle), 0], [np.sin(angle), -np.cos(angle), 0],
                                     [0, 0, 1]]) * np.array([0.8, 1.2, 2.0])
        volume = add_volume_node(slicer.mrmlScene, image, ijkToRas, "MedSAMAdapterTestBall")

        logic = MedSAMAdapterLogic(loader=lambda settings: _boxThresholdModel())
        parameterNode = logic.getParameterNode()
        parameterNode.inputVolume = volume
        segmenter = logic.segmenter(parameterNode)
        segmentId = segmenter.add_segment("ball", (1.0, 0.5, 0.2))

        self.delayDisplay("Box on the middle slice, then propagation")
        corner = lambda ijk: (ijkToRas @ np.r_[ijk, 1.0])[:3]  # noqa: E731
        segmenter.box_ras(segmentId, corner((8, 6, center[0])), corner((36, 34, center[0])), axis=0)
        self.assertTrue(segmenter.segment_mask(segmentId)[center])
        logic.propagate(parameterNode)
        mask = segmenter.segment_mask(segmentId)
        dice = 2 * (mask & ball).sum() / (mask.sum() + ball.sum())
        self.assertGreater(dice, 0.9)

        self.delayDisplay("Undo restores the single-slice result")
        logic.undo(parameterNode)
        self.assertEqual(int(segmenter.segment_mask(segmentId).any(axis=(1, 2)).sum()), 1)

        self.delayDisplay("Save and reload as .seg.nrrd")
        path = os.path.join(slicer.app.temporaryPath, "MedSAMAdapterTest.seg.nrrd")
        save_segmentation(parameterNode.segmentation, path)
        loaded = load_segmentation(slicer.mrmlScene, path)
        self.assertEqual(loaded.GetSegmentation().GetSegment(segmentId).GetName(), "ball")
        self.delayDisplay("Test passed")


def _boxThresholdModel():
    """Stand-in with the PromptableSam interface: bright pixels inside the box (no weights, deterministic)."""
    import types

    import torch

    class BoxThresholdModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.spec = types.SimpleNamespace(name="box-threshold", image_size=64, normalization="sam_imagenet",
                                              sha256=None)
            self.embedding_size = 16  # low-res logits at 64 = the model input size
            self.image_encoder = torch.nn.Identity()
            self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
            self.weights_sha256 = None

        def encode(self, images):
            brightness = (images[:, :1] * 58.395 + 123.675) / 255.0  # undo the SAM normalisation: 0..1
            # a second channel gives the embedding a direction for propagation's appearance check
            return torch.cat([brightness, 1.0 - brightness], dim=1)

        def decode(self, embedding, points, labels, box, mask_logits, multimask, text=None):
            size = embedding.shape[-1]
            logits = torch.full((size, size), -10.0)
            if box is not None:
                x0, y0, x1, y1 = (int(round(v)) for v in box[0].tolist())
                inside = embedding[0, 0, y0:y1 + 2, x0:x1 + 2] > 0.6
                logits[y0:y1 + 2, x0:x1 + 2][inside] = 10.0
            count = 3 if multimask else 1
            return logits.expand(1, count, size, size).clone(), torch.full((1, count), 0.95)

    return BoxThresholdModel()
