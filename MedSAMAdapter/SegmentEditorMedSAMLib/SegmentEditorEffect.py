"""MedSAM Segment Editor effect: clicks and boxes on any slice view become prompts; everything else is the bridge.

Mouse: left click = object (positive point); Ctrl + left click or right click = background (negative point);
left drag = box. Keys (mouse over a slice view): P = propagate from this slice, Ctrl+Z = undo the last prompt,
Ctrl+Y / Ctrl+Shift+Z = redo, Esc = forget the clicks of this slice. The slice axis is the volume axis closest to
the view's normal (read from the slice node's SliceToRAS); click positions come from its XYToRAS.
"""

import os

import qt
import vtk

import slicer
from slicer.i18n import tr as _

from SegmentEditorEffects import *

DRAG_PIXELS = 6  # a press-release that moves less than this is a click, not a box


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedSAM"  # not translated: modules find effects by name
        scriptedEffect.title = _("MedSAM")
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self._press = None  # (xy, viewWidget, negative) while the left button is down

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return "<html>" + _("""Segment Anything, adapted to medical images.<p><ul style="margin: 0">
<li><b>Left click:</b> add the object under the cursor. <b>Ctrl+click / right click:</b> mark background.
<li><b>Left drag:</b> box around the object (LiteMedSAM understands boxes only).
<li><b>P:</b> propagate to neighbouring slices. <b>Ctrl+Z / Ctrl+Y:</b> undo / redo the last prompt.
</ul><p>Model, adapter, device and overlap rule are chosen in the MedSAM Adapter module.""")

    def setupOptionsFrame(self):
        self.propagateButton = qt.QPushButton(_("Propagate (P)"))
        self.undoButton = qt.QPushButton(_("Undo prompt (Ctrl+Z)"))
        self.redoButton = qt.QPushButton(_("Redo prompt (Ctrl+Y)"))
        self.statusLabel = qt.QLabel()
        for widget in (self.propagateButton, self.undoButton, self.redoButton, self.statusLabel):
            self.scriptedEffect.addOptionsWidget(widget)
        self.propagateButton.connect("clicked()", self.propagate)
        self.undoButton.connect("clicked()", lambda: self._run(_("Undo failed."), lambda s, sid: s.undo()))
        self.redoButton.connect("clicked()", lambda: self._run(_("Redo failed."), lambda s, sid: s.redo()))

    def createCursor(self, widget):
        return qt.QCursor(qt.Qt.CrossCursor)

    # --- events -------------------------------------------------------------------------------------------------
    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        xy = callerInteractor.GetEventPosition()
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            self._press = (xy, viewWidget, bool(callerInteractor.GetControlKey()))
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent and self._press is not None:
            start, pressWidget, negative = self._press
            self._press = None
            if pressWidget is not viewWidget:
                return True
            if max(abs(xy[0] - start[0]), abs(xy[1] - start[1])) >= DRAG_PIXELS:
                self._box(viewWidget, start, xy)
            else:
                self._click(viewWidget, xy, 0 if negative else 1)
            return True
        if eventId == vtk.vtkCommand.RightButtonPressEvent:
            self._click(viewWidget, xy, 0)
            return True  # no context menu: right click is a background click here
        if eventId == vtk.vtkCommand.KeyPressEvent:
            return self._key(callerInteractor, viewWidget)
        return False

    def _key(self, interactor, viewWidget):
        key = (interactor.GetKeySym() or "").lower()
        control, shift = bool(interactor.GetControlKey()), bool(interactor.GetShiftKey())
        if key == "p" and not control:
            self.propagate(viewWidget)
        elif key == "z" and control:
            self._run(_("Redo failed.") if shift else _("Undo failed."),
                      lambda s, sid: s.redo() if shift else s.undo())
        elif key == "y" and control:
            self._run(_("Redo failed."), lambda s, sid: s.redo())
        elif key == "escape":
            self._run(_("Failed."), lambda s, sid: s.clear_prompts(sid), saveUndo=False)
        else:
            return False
        return True

    # --- actions: geometry from the slice node, everything else in the bridge -----------------------------------
    def _view(self, viewWidget):
        from MedSAMAdapterLib.scene import slice_normal

        sliceNode = viewWidget.sliceLogic().GetSliceNode()
        return sliceNode, slice_normal(sliceNode)

    def _click(self, viewWidget, xy, label):
        from MedSAMAdapterLib.scene import xy_to_ras

        sliceNode, normal = self._view(viewWidget)
        ras = xy_to_ras(sliceNode, xy)
        self._run(_("MedSAM click failed."), lambda s, sid: s.click_ras(sid, [ras], [label], normal=normal))

    def _box(self, viewWidget, xyA, xyB):
        from MedSAMAdapterLib.scene import xy_to_ras

        sliceNode, normal = self._view(viewWidget)
        a, b = xy_to_ras(sliceNode, xyA), xy_to_ras(sliceNode, xyB)
        self._run(_("MedSAM box failed."), lambda s, sid: s.box_ras(sid, a, b, normal=normal))

    def propagate(self, viewWidget=None):
        def action(segmenter, segmentId):
            if viewWidget is None:
                return segmenter.propagate(segmentId)
            sliceNode, normal = self._view(viewWidget)
            from MedSAMAdapterLib.scene import choose_axis

            axis = choose_axis(segmenter.volume.geometry, normal=normal)
            center = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())[:3, 3]
            return segmenter.propagate(segmentId, axis=axis, start_index=segmenter.slice_index_of(center, axis))

        self._run(_("MedSAM propagation failed."), action)

    def _run(self, errorMessage, action, saveUndo=True):
        """One bridge call on the effect's volume, segmentation and selected segment, with error display."""
        with slicer.util.tryWithErrorDisplay(errorMessage, waitCursor=True):
            parameters = self.scriptedEffect.parameterSetNode()
            segmentationNode = parameters.GetSegmentationNode()
            volumeNode = (parameters.GetSourceVolumeNode() if hasattr(parameters, "GetSourceVolumeNode")
                          else parameters.GetMasterVolumeNode())
            segmentId = parameters.GetSelectedSegmentID()
            if segmentationNode is None or volumeNode is None or not segmentId:
                raise ValueError(_("Select a segmentation, a source volume and a segment first."))
            import MedSAMAdapter

            segmenter = MedSAMAdapter.MedSAMAdapterLogic.shared().segmenterFor(volumeNode, segmentationNode)
            if saveUndo:
                self.scriptedEffect.saveStateForUndo()  # Slicer's own undo works too
            result = action(segmenter, segmentId)
            if hasattr(self, "statusLabel") and hasattr(result, "slices"):
                self.statusLabel.text = _("{count} slice(s) updated").format(count=len(result.slices))
                if getattr(result, "text", None):
                    self.statusLabel.text += _(", text prompt '{text}'").format(text=result.text)
                if getattr(result, "zoom", 1.0) > 1.0:
                    self.statusLabel.text += _(", zoomed x{zoom:.1f}").format(zoom=result.zoom)
