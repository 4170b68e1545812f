"""Hidden module that registers the "MedSAM" Segment Editor effect (SegmentEditorMedSAMLib/SegmentEditorEffect.py)."""

import os

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import *


class SegmentEditorMedSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Segment Editor MedSAM")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["MedSAMAdapter contributors"]
        self.parent.hidden = True
        self.parent.helpText = _("Registers the MedSAM effect of the Segment Editor.")
        self.parent.acknowledgementText = ""
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        instance = effects.qSlicerSegmentEditorScriptedEffect(None)
        source = os.path.join(os.path.dirname(__file__), "SegmentEditorMedSAMLib", "SegmentEditorEffect.py")
        instance.setPythonSource(source.replace("\\", "/"))
        instance.self().register()


class SegmentEditorMedSAMTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        factory = slicer.qSlicerSegmentEditorEffectFactory.instance()
        self.assertIn("MedSAM", [effect.name for effect in factory.registeredEffects()])
