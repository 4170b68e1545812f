"""The trame-slicer page: three slice views + 3D, the MedSAM tool, segments, files, auto segmentation, fine-tune.

Wiring only: widgets and mouse gestures call ``WebSession`` (scene + engine logic) and ``finetune``; every
action runs through ``_guard`` so a user-fixable error becomes a message in the page and the server keeps
running. HTTP routes (``routes.py``) add the token gate, uploads, downloads and a JSON status for tests.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from trame.app import TrameApp
from trame.ui.vuetify3 import VAppLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from ..engine.focus import FocusPolicy
from ..errors import MedSAMAdapterError
from ..scene import ModelSettings, SceneController
from .effect import MedSamEffect
from .finetune import RECIPES, FinetuneJob, png_data_url, start_finetune
from .interaction import Gesture, xy_to_ras
from .security import DataRoots, UploadLimit
from .session import WebSession

log = logging.getLogger(__name__)

LAYOUT = "Quad View"  # coronal + sagittal | 3D + axial: three slice views and the 3D view at once
UPLOAD_JS = """
window.medsamUpload = async (event, trigger) => {
  const file = event.target.files && event.target.files[0];
  if (!file) return;
  const limit = window.medsamUploadLimit || 0;
  if (limit && file.size > limit) { trigger('medsam_upload_failed', [`file too large: ${(file.size/1e6).toFixed(1)} MB, the limit is ${(limit/1e6).toFixed(0)} MB`]); return; }
  const response = await fetch('api/upload?name=' + encodeURIComponent(file.name), {method: 'POST', body: file, credentials: 'same-origin'});
  const text = await response.text();
  event.target.value = '';
  if (response.ok) { trigger('medsam_uploaded', [JSON.parse(text).path]); } else { trigger('medsam_upload_failed', [text]); }
};
"""


class MedSamWebApp(TrameApp):
    """One scene per server; everything shown comes from ``WebSession.status()``."""

    def __init__(self, server: Any = None, *, controller_settings: ModelSettings | None = None,
                 data_roots: DataRoots | None = None, upload_limit: UploadLimit | None = None,
                 work_dir: Path | None = None, token: str | None = None, loader: Callable | None = None) -> None:
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server, slice_view_ui_f=_slice_view_ui,
                               three_d_view_ui_f=_threed_view_ui)
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)

        controller = SceneController(self.slicer.scene, **({"loader": loader} if loader else {}))
        if controller_settings is not None:
            controller.configure(controller_settings)
        self.session = WebSession(self.slicer.scene, controller)
        self.session.volume_changed.append(self._show_volume)
        self.data_roots = data_roots or DataRoots([])
        self.upload_limit = upload_limit or UploadLimit()
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="medsam-web-"))
        self.token = token
        self.finetune_job: FinetuneJob | None = None

        editor = self.slicer.segmentation_editor
        self.effect: MedSamEffect = editor.get_effect(MedSamEffect)
        self.effect.on_gesture = self._on_gesture

        self._init_state()
        self._build_ui()
        self._bind_triggers()
        self.server.controller.on_server_ready.add(self._start_polling)
        self.server.controller.on_client_connected.add(self._on_client_connected)
        from .routes import bind_routes

        self.server.controller.on_server_bind.add(lambda wslink: bind_routes(wslink.app, self))

    # --- volumes -------------------------------------------------------------------------------------------------
    def _show_volume(self, volume_node: Any) -> None:
        display = self.slicer.display_manager
        display.show_volume_in_slice_background(volume_node)
        display.show_volume_in_slice_foreground(None)
        display.reset_views()
        editor = self.slicer.segmentation_editor
        editor.set_active_segmentation(self.session.segmentation_node, volume_node)
        editor.set_active_effect(self.effect)  # after set_active_segmentation, which resets the effect

    def load_volume(self, path: str | Path, name: str | None = None) -> None:
        """Load a file as the current volume and start embedding its axial slices."""
        self.session.load_volume(path, name)
        self.session.precompute("axial")
        self._refresh_auto_models()

    def _refresh_auto_models(self, select: str | None = None) -> None:
        """The picker's models (the loaded volume's kind first); ``select`` one, else the first."""
        choices = self.session.auto_model_choices()
        chosen = select if select in choices else (choices[0] if choices else None)
        self.state.update({"auto_models": choices, "auto_model": chosen,
                           "auto_reason": self.session.auto_unavailable_reason()})

    # --- gestures and buttons ------------------------------------------------------------------------------------
    def _on_gesture(self, view: str, xy_to_ras_matrix: np.ndarray, gesture: Gesture) -> None:
        self.state.last_view = view
        if self._guard(lambda: self.session.gesture(xy_to_ras_matrix, gesture)) is not None:
            self._jump_other_views(view, xy_to_ras(xy_to_ras_matrix, np.mean(gesture.points, axis=0)))

    def _jump_other_views(self, view: str, ras: np.ndarray) -> None:
        """Move the other slice views through the prompted point (as Slicer's Shift+move does), so the new
        segment is seen in all three orientations; their in-plane position and zoom stay."""
        for other in self.slicer.view_manager.get_slice_views():
            node = other.get_view_node()
            if node is not None and (node.GetLayoutName() or node.GetName()) != view:
                node.JumpSliceByOffsetting(*(float(v) for v in ras))

    def _guard(self, action: Callable[[], Any]) -> Any:
        """Run an action; show a user error in the page instead of raising, then refresh what the page shows."""
        result = None
        try:
            result = action()
            self.state.error = ""
        except MedSAMAdapterError as error:
            self.session.log.fail(str(error))
            self.state.error = str(error)
        except Exception as error:  # noqa: BLE001 - a bug must not take the viewer down; log it in full
            log.exception("action failed")
            self.session.log.fail(f"internal error: {error}")
            self.state.error = f"internal error: {error} (see the server log)"
        self.refresh()
        return result

    async def _busy(self, action: Callable[[], Any]) -> Any:
        """Long actions (propagate, auto, load): show the busy bar before the loop is blocked."""
        self.state.busy = True
        self.state.flush()
        await asyncio.sleep(0.05)
        try:
            return self._guard(action)
        finally:
            self.state.busy = False
            self.state.flush()

    def refresh(self) -> None:
        status = self.session.status()
        state = self.state
        state.status = status
        state.segments = status["segments"]
        state.active_segment = status["active_segment"]
        state.can_undo, state.can_redo = status["can_undo"], status["can_redo"]
        state.message = status["last"]["message"]
        state.volume_name = status["volume"] or ""
        state.flush()

    # --- state and triggers --------------------------------------------------------------------------------------
    def _init_state(self) -> None:
        state = self.state
        state.trame__title = "MedSAM Adapter"
        auto = self.session.auto_model_choices()
        controller = self.session.controller  # the switches start from its settings
        state.update({
            "status": {}, "segments": [], "active_segment": None, "can_undo": False, "can_redo": False,
            "message": "", "error": "", "busy": False, "negative_mode": False, "volume_name": "", "last_view": "",
            "embedding": {"done": 0, "total": 0, "running": False, "error": ""},
            "auto_models": auto, "auto_model": auto[0] if auto else None, "auto_refine": False,
            "auto_turns": False, "names_as_text": controller.names_as_text,
            "zoom_small_objects": controller.focus is not None,
            "auto_reason": self.session.auto_unavailable_reason(),
            "server_path": "", "server_files": self.data_roots.listing() if self.data_roots else [],
            "data_dirs": [str(r) for r in self.data_roots.roots], "save_name": "segmentation.seg.nrrd",
            "upload_limit": self.upload_limit.max_bytes, "show_3d": False,
            "ft_recipe": "decoder", "ft_recipes": list(RECIPES), "ft_epochs": 5, "ft": {}, "ft_curve": "",
            "tab": "segment",
        })

        @state.change("negative_mode")
        def _negative(negative_mode: bool, **_: Any) -> None:
            self.effect.negative_mode = self.session.negative_mode = bool(negative_mode)

        @state.change("names_as_text")
        def _names_as_text(names_as_text: bool, **_: Any) -> None:
            self.session.controller.names_as_text = bool(names_as_text)

        @state.change("zoom_small_objects")
        def _zoom(zoom_small_objects: bool, **_: Any) -> None:
            self.session.controller.focus = FocusPolicy() if zoom_small_objects else None

        @state.change("show_3d")
        def _show_3d(show_3d: bool, **_: Any) -> None:
            if self.session.segmentation_node is not None:
                self.slicer.segmentation_editor.set_surface_representation_enabled(bool(show_3d))
                for view in self.slicer.view_manager.get_threed_views():
                    view.reset_view()  # frame the segments: the empty 3D view was fitted to nothing

    def _bind_triggers(self) -> None:
        ctrl, session = self.server.controller, self.session
        ctrl.trigger("medsam_select")(lambda sid: self._guard(lambda: session.select_segment(sid)))
        ctrl.trigger("medsam_rename")(lambda sid, name: self._guard(lambda: session.rename_segment(sid, name)))
        ctrl.trigger("medsam_recolor")(lambda sid, color: self._guard(lambda: session.recolor_segment(sid, color)))
        ctrl.trigger("medsam_delete")(lambda sid: self._guard(lambda: session.delete_segment(sid)))
        ctrl.trigger("medsam_uploaded")(self._on_uploaded)
        ctrl.trigger("medsam_upload_failed")(self._on_upload_failed)
        ctrl.medsam_add = lambda: self._guard(session.add_segment)
        ctrl.medsam_undo = lambda: self._guard(session.undo)
        ctrl.medsam_redo = lambda: self._guard(session.redo)
        ctrl.medsam_propagate = lambda: self._busy(session.propagate)
        ctrl.medsam_auto = lambda: self._busy(lambda: session.run_auto(
            self.state.auto_model, refine_boxes=bool(self.state.auto_refine),
            turn_search=True if self.state.auto_turns else None))  # unticked: as the model card says
        ctrl.medsam_open_path = lambda: self._busy(
            lambda: self.load_volume(self.data_roots.resolve(self.state.server_path)))
        ctrl.medsam_save_path = lambda: self._guard(self._save_to_server)
        ctrl.medsam_finetune = lambda: self._guard(self._start_finetune)
        ctrl.medsam_finetune_cancel = lambda: self.finetune_job and self.finetune_job.cancel()
        ctrl.medsam_use_trained = lambda: self._guard(self._use_trained)

    async def _on_uploaded(self, path: str) -> None:
        await self._busy(lambda: self.load_volume(path))

    def _on_upload_failed(self, message: str) -> None:
        self.state.error = f"upload failed: {message}"
        self.session.log.fail(self.state.error)

    def _save_to_server(self) -> None:
        target = self.data_roots.resolve(self.state.save_name, must_exist=False)
        path = self.session.save_segmentation(target)
        self.session.log.ok(f"saved {path}", 0.0)

    # --- fine-tuning ---------------------------------------------------------------------------------------------
    def _start_finetune(self) -> None:
        if self.finetune_job is not None and self.finetune_job.running:
            raise MedSAMAdapterError("a training run is already going; cancel it first")
        self.finetune_job = start_finetune(self.session.controller, self.session.volume_node,
                                           self.session.segmentation_node, self.work_dir / "finetune",
                                           self.state.ft_recipe, int(self.state.ft_epochs))
        self.session.log.ok(f"training started in {self.finetune_job.run_dir}", 0.0)

    def _use_trained(self) -> None:
        if self.finetune_job is None:
            raise MedSAMAdapterError("no training run yet")
        kind, value = self.finetune_job.use_result(self.session.controller)
        if kind == "auto_model":
            self._refresh_auto_models(value)
            self.session.log.ok(f"prompt-free model '{value}' added", 0.0)
        else:
            self.session.log.ok(f"using adapter {value}", 0.0)

    # --- polling: embedding and training progress ----------------------------------------------------------------
    def _start_polling(self, **_: Any) -> None:
        asyncio.get_event_loop().create_task(self._poll())

    def _on_client_connected(self, *_: Any, **__: Any) -> None:
        self.refresh()
        asyncio.get_event_loop().create_task(self._fit_views_once_sized())

    async def _fit_views_once_sized(self, timeout_s: float = 10.0) -> None:
        """Views are created at a default size; fit the volume again once the browser gave them theirs."""
        views = self.slicer.view_manager.get_slice_views()
        initial = [tuple(view.render_window().GetSize()) for view in views]
        for _ in range(int(timeout_s / 0.2)):
            await asyncio.sleep(0.2)
            if all(tuple(view.render_window().GetSize()) != size for view, size in zip(views, initial)):
                break
        self.slicer.display_manager.reset_views()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                self._poll_once()
            except Exception:  # noqa: BLE001 - polling must survive a bad run folder or a vanished process
                log.exception("status poll failed")

    def _poll_once(self) -> None:
        embedding = self.session.embedding_progress()
        changed = embedding != self.state.embedding
        if changed:
            self.state.embedding = embedding
        if self.finetune_job is not None:
            progress = self.finetune_job.progress()
            if progress != self.state.ft:
                self.state.ft = progress
                self.state.ft_curve = png_data_url(progress.get("curve"))
                changed = True
        if changed:
            self.state.flush()

    # --- page ----------------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        with VAppLayout(self.server, full_height=True, theme="dark") as self.ui:
            client.Script(UPLOAD_JS + f"\nwindow.medsamUploadLimit = {self.upload_limit.max_bytes};\n")
            client.Style("html { overflow-y: hidden; } .medsam-panel { font-size: 0.85rem; }")
            with v3.VNavigationDrawer(permanent=True, width=360, classes="medsam-panel"):
                from .panel import build_panel

                build_panel(self)
            with v3.VMain(), html.Div(style="position: relative; height: 100vh;", id="medsam-views"):
                v3.VProgressLinear(indeterminate=True, v_show="busy", absolute=True, color="amber",
                                   style="z-index: 10;")
                self.layout_manager.initialize_layout_grid(self.ui)


def _slice_view_ui(server: Any, view_id: str, view: Any) -> None:
    """trame-slicer's slice gutter (slider, buttons) plus a marker naming the view, so scripts find it."""
    from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

    html.Div(classes=f"medsam-view medsam-view-{view.get_singleton_tag()}", style="display: none;")
    create_vertical_slice_view_gutter_ui(server, view_id, view)


def _threed_view_ui(server: Any, view_id: str, view: Any) -> None:
    from trame_slicer.app.ui import create_vertical_view_gutter_ui

    html.Div(classes="medsam-view medsam-view-ThreeD", style="display: none;")
    create_vertical_view_gutter_ui(server, view_id, view)
