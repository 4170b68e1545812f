"""The MedSAM tool as a trame-slicer segmentation effect: slice-view mouse events -> ``interaction.Gesture``.

trame-slicer forwards browser mouse events to each view's VTK interactor; the active effect's pipeline (one per
view) sees them first. This pipeline only records press / drag / release, draws the box being dragged, and hands
the finished gesture with the view's XYToRAS matrix to ``MedSamEffect.on_gesture``; what a gesture does lives in
``session.WebSession`` (and below it, the scene bridge shared with the Slicer effect).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from slicer import vtkMRMLInteractionEventData, vtkMRMLSliceNode
from vtkmodules.vtkCommonCore import vtkCommand, vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
from vtkmodules.vtkRenderingCore import vtkActor2D, vtkPolyDataMapper2D, vtkRenderer
from trame_slicer.segmentation import SegmentationEffect, SegmentationEffectPipeline

from ..scene.volumes import matrix_to_numpy
from .interaction import Gesture, Press, classify

GestureHandler = Callable[[str, np.ndarray, Gesture], None]

_SHIFT, _CONTROL = 1, 2  # vtkEvent::ShiftModifier, vtkEvent::ControlModifier


class MedSamEffect(SegmentationEffect):
    """Holds the page's choices (negative-click mode) and where finished gestures go."""

    def __init__(self) -> None:
        super().__init__()
        self.on_gesture: GestureHandler | None = None
        self.negative_mode = False

    def _create_pipeline(self, view_node: Any, _parameter: Any) -> SegmentationEffectPipeline | None:
        # clicks only make sense on slices; the 3D view keeps its usual rotate / zoom
        return MedSamPipeline() if view_node is not None and view_node.IsA("vtkMRMLSliceNode") else None

    def emit(self, slice_node: vtkMRMLSliceNode, gesture: Gesture) -> None:
        if self.on_gesture is not None:
            self.on_gesture(slice_node.GetLayoutName() or slice_node.GetName(),
                            matrix_to_numpy(slice_node.GetXYToRAS()), gesture)


class _BoxOutline:
    """A yellow rectangle in display coordinates, shown while a box is dragged."""

    def __init__(self) -> None:
        self.points = vtkPoints()
        self.points.SetNumberOfPoints(4)
        lines = vtkCellArray()
        lines.InsertNextCell(5, [0, 1, 2, 3, 0])
        polydata = vtkPolyData()
        polydata.SetPoints(self.points)
        polydata.SetLines(lines)
        mapper = vtkPolyDataMapper2D()
        mapper.SetInputData(polydata)
        self.actor = vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(1.0, 0.85, 0.1)
        self.actor.GetProperty().SetLineWidth(2)
        self.actor.VisibilityOff()

    def show(self, a: tuple[float, float], b: tuple[float, float]) -> None:
        for index, (x, y) in enumerate([(a[0], a[1]), (b[0], a[1]), (b[0], b[1]), (a[0], b[1])]):
            self.points.SetPoint(index, x, y, 0.0)
        self.points.Modified()
        self.actor.VisibilityOn()

    def hide(self) -> None:
        self.actor.VisibilityOff()


class MedSamPipeline(SegmentationEffectPipeline[MedSamEffect]):
    """Per-slice-view event handling for ``MedSamEffect`` (VTK naming, as trame-slicer pipelines use)."""

    def __init__(self) -> None:
        super().__init__()
        self._press: Press | None = None
        self._outline = _BoxOutline()
        self._handlers = {
            int(vtkCommand.LeftButtonPressEvent): self._LeftPress,
            int(vtkCommand.RightButtonPressEvent): self._RightPress,
            int(vtkCommand.MouseMoveEvent): self._Move,
            int(vtkCommand.LeftButtonReleaseEvent): self._Release,
            int(vtkCommand.RightButtonReleaseEvent): self._Release,
        }

    def OnRendererAdded(self, renderer: vtkRenderer | None) -> None:
        super().OnRendererAdded(renderer)
        if renderer is not None:
            renderer.AddViewProp(self._outline.actor)

    def OnRendererRemoved(self, renderer: vtkRenderer) -> None:
        super().OnRendererRemoved(renderer)
        if renderer is not None and renderer.HasViewProp(self._outline.actor):
            renderer.RemoveViewProp(self._outline.actor)

    def CanProcessInteractionEvent(self, event_data: vtkMRMLInteractionEventData) -> tuple[bool, float]:
        kind = event_data.GetType()
        if not self.IsActive() or kind not in self._handlers:
            return False, 0.0
        # mouse moves only matter during a drag; otherwise the slice view keeps its hover behaviour
        return (kind != vtkCommand.MouseMoveEvent or self._press is not None), 0.0

    def ProcessInteractionEvent(self, event_data: vtkMRMLInteractionEventData) -> bool:
        handler = self._handlers.get(event_data.GetType())
        return bool(handler(event_data)) if handler is not None else False

    def LoseFocus(self, event_data: vtkMRMLInteractionEventData | None) -> None:
        super().LoseFocus(event_data)
        self._press = None
        self._outline.hide()

    def _LeftPress(self, event_data: vtkMRMLInteractionEventData) -> bool:
        negative = bool(event_data.GetModifiers() & (_SHIFT | _CONTROL))
        self._press = Press(_xy(event_data), "left", negative)
        return True

    def _RightPress(self, event_data: vtkMRMLInteractionEventData) -> bool:
        self._press = Press(_xy(event_data), "right")
        return True

    def _Move(self, event_data: vtkMRMLInteractionEventData) -> bool:
        if self._press is None or self._press.button != "left":
            return False
        self._outline.show(self._press.xy, _xy(event_data))
        self.RequestRender()
        return True

    def _Release(self, event_data: vtkMRMLInteractionEventData) -> bool:
        press, self._press = self._press, None
        self._outline.hide()
        if press is None:
            return False
        slice_node = self.GetViewNode()
        if self._effect is not None and slice_node is not None:
            self._effect.emit(slice_node, classify(press, _xy(event_data), self._effect.negative_mode))
        self.RequestRender()
        return True


def _xy(event_data: vtkMRMLInteractionEventData) -> tuple[float, float]:
    x, y = event_data.GetDisplayPosition()
    return float(x), float(y)
