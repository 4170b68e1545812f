"""The left panel of the page (Vuetify 3 widgets bound to the app's trame state). Layout only, no logic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trame.widgets import html
from trame.widgets import vuetify3 as v3

if TYPE_CHECKING:
    from .app import MedSamWebApp

HELP = ("Left click: object (positive). Shift/Ctrl + click, right click or the − toggle: background (negative). "
        "Drag: box. Works in any slice view.")


def build_panel(app: "MedSamWebApp") -> None:
    with html.Div(classes="pa-2"):
        html.Div("MedSAM Adapter", classes="text-h6")
        html.Div("{{ volume_name || 'no volume' }}", classes="text-caption mb-1", id="medsam-volume")
        _messages()
        with v3.VTabs(v_model=("tab",), density="compact", grow=True):
            v3.VTab("Segment", value="segment")
            v3.VTab("Files", value="files")
            v3.VTab("Fine-tune", value="finetune")
        with v3.VWindow(v_model=("tab",)):
            with v3.VWindowItem(value="segment"):
                _segment_tab(app)
            with v3.VWindowItem(value="files"):
                _files_tab(app)
            with v3.VWindowItem(value="finetune"):
                _finetune_tab(app)


def _messages() -> None:
    v3.VAlert(v_if="error", text=("error",), type="error", density="compact", closable=True, classes="my-1",
              id="medsam-error", click_close="error = ''")
    html.Div("{{ message }}", classes="text-caption text-green-lighten-2", id="medsam-message")
    with html.Div(v_if="embedding.total > 0 && (embedding.running || embedding.done < embedding.total)",
                  id="medsam-embedding"):
        html.Div("embedding slices {{ embedding.done }} / {{ embedding.total }}", classes="text-caption")
        v3.VProgressLinear(model_value=("100 * embedding.done / Math.max(embedding.total, 1)",), height=4,
                           color="teal")
    html.Div("{{ embedding.error }}", v_if="embedding.error", classes="text-caption text-red")


def _segment_tab(app: "MedSamWebApp") -> None:
    html.Div(HELP, classes="text-caption my-2")
    with html.Div(classes="d-flex align-center ga-1 flex-wrap"):
        with v3.VBtnToggle(v_model=("negative_mode",), mandatory=True, density="compact", divided=True,
                           variant="outlined"):
            v3.VBtn("+", value=False, id="medsam-positive", title="clicks add the object")
            v3.VBtn("−", value=True, id="medsam-negative", title="clicks mark background")
        v3.VBtn("Propagate", click=app.ctrl.medsam_propagate, density="compact", id="medsam-propagate",
                prepend_icon="mdi-layers-triple")
        v3.VBtn(icon="mdi-undo", click=app.ctrl.medsam_undo, disabled=("!can_undo",), density="compact",
                id="medsam-undo", title="undo")
        v3.VBtn(icon="mdi-redo", click=app.ctrl.medsam_redo, disabled=("!can_redo",), density="compact",
                id="medsam-redo", title="redo")
    v3.VSwitch(v_model=("show_3d",), label="Show segments in 3D", density="compact", hide_details=True)
    _segment_list(app)
    v3.VSwitch(v_model=("names_as_text",), label="Segment names as text prompts", density="compact",
               hide_details=True, id="medsam-names-as-text",
               title="a name the adapter was trained on (optic cup, liver...) goes with your clicks and boxes, "
                     "so one click says which structure you mean; other names change nothing")
    v3.VSwitch(v_model=("zoom_small_objects",), label="Zoom in on small objects", density="compact",
               hide_details=True, id="medsam-zoom-small-objects",
               title="after the first click, further clicks on a small object are answered on a magnified window "
                     "around it (finer borders; one more encoder pass per window)")
    _auto_section(app)


def _segment_list(app: "MedSamWebApp") -> None:
    with html.Div(classes="d-flex align-center mt-2"):
        html.Div("Segments", classes="text-subtitle-2")
        v3.VSpacer()
        v3.VBtn("Add", click=app.ctrl.medsam_add, density="compact", prepend_icon="mdi-plus", id="medsam-add")
    with v3.VList(density="compact", id="medsam-segments"):
        with v3.VListItem(v_for="seg in segments", key="seg.id", active=("seg.id === active_segment",),
                          click="trigger('medsam_select', [seg.id])", classes="px-1"):
            with html.Div(classes="d-flex align-center ga-1"):
                html.Input(type="color", value=("seg.color",), style="width: 28px; height: 22px;",
                           change="trigger('medsam_recolor', [seg.id, $event.target.value])", click_stop=True)
                html.Input(value=("seg.name",), classes="flex-grow-1 text-body-2",
                           style="min-width: 0; border-bottom: 1px solid #555; color: inherit;",
                           change="trigger('medsam_rename', [seg.id, $event.target.value])", click_stop=True)
                html.Span("{{ seg.voxels }} vx", classes="text-caption")
                v3.VBtn(icon="mdi-delete", size="x-small", variant="text",
                        click_stop="trigger('medsam_delete', [seg.id])")


def _auto_section(app: "MedSamWebApp") -> None:
    html.Div("Automatic segmentation", classes="text-subtitle-2 mt-3")
    with html.Div(classes="d-flex align-center ga-1"):
        v3.VSelect(v_model=("auto_model",), items=("auto_models",), density="compact", hide_details=True,
                   disabled=("auto_models.length === 0",), label="prompt-free model")
        v3.VBtn("Run", click=app.ctrl.medsam_auto, disabled=("auto_models.length === 0",), density="compact",
                id="medsam-auto")
    v3.VCheckbox(v_model=("auto_refine",), label="refine boundaries with boxes", density="compact",
                 hide_details=True, id="medsam-auto-refine",
                 title="the base model redraws each structure from a box around the automatic mask "
                       "(rings such as the myocardium keep the automatic result)")
    v3.VCheckbox(v_model=("auto_turns",), label="also try the planes turned by 90, 180, 270 degrees",
                 density="compact", hide_details=True, id="medsam-auto-turns",
                 title="for images whose in-plane orientation is unknown (cardiac short-axis MRI): the turn the "
                       "model is surest of wins; 4x the work. Models whose card asks for it always do")
    html.Div("{{ auto_reason }}", v_if="auto_reason", classes="text-caption text-grey")


def _files_tab(app: "MedSamWebApp") -> None:
    html.Div("Load a volume (NIfTI, NRRD, MHA, PNG...)", classes="text-subtitle-2 mt-2")
    html.Input(type="file", change="window.medsamUpload($event, trigger)", id="medsam-upload",
               classes="text-caption my-1")
    html.Div("upload limit {{ (upload_limit / 1e6).toFixed(0) }} MB", classes="text-caption text-grey")
    with html.Div(v_if="data_dirs.length"):
        html.Div("or a file on the server (inside {{ data_dirs.join(', ') }})", classes="text-caption mt-2")
        v3.VCombobox(v_model=("server_path",), items=("server_files",), density="compact", hide_details=True,
                     label="server path")
        v3.VBtn("Open", click=app.ctrl.medsam_open_path, density="compact", classes="mt-1", id="medsam-open")
    html.Div("Save segmentation", classes="text-subtitle-2 mt-4")
    with html.Div(classes="d-flex ga-2 my-1"):
        html.A("Download .seg.nrrd", href="api/download?format=seg.nrrd", download=True, classes="text-blue")
        html.A("Download NIfTI", href="api/download?format=nii.gz", download=True, classes="text-blue")
    with html.Div(v_if="data_dirs.length", classes="d-flex align-center ga-1"):
        v3.VTextField(v_model=("save_name",), density="compact", hide_details=True, label="save on server as")
        v3.VBtn("Save", click=app.ctrl.medsam_save_path, density="compact", id="medsam-save")


def _finetune_tab(app: "MedSamWebApp") -> None:
    html.Div("Train on the current segments (runs `medsam-adapter finetune` in the background): a click adapter "
             "(decoder, medsa, lora) or a prompt-free model (autosam-*), which 'Use result' adds to the "
             "prompt-free models.",
             classes="text-caption my-2")
    with html.Div(classes="d-flex ga-1"):
        v3.VSelect(v_model=("ft_recipe",), items=("ft_recipes",), density="compact", hide_details=True,
                   label="recipe")
        v3.VTextField(v_model_number=("ft_epochs",), type="number", density="compact", hide_details=True,
                      label="epochs", style="max-width: 90px;")
    with html.Div(classes="d-flex ga-1 mt-1"):
        v3.VBtn("Start", click=app.ctrl.medsam_finetune, density="compact", id="medsam-ft-start",
                disabled=("ft.state === 'running'",))
        v3.VBtn("Cancel", click=app.ctrl.medsam_finetune_cancel, density="compact",
                disabled=("ft.state !== 'running'",))
        v3.VBtn("Use result", click=app.ctrl.medsam_use_trained, density="compact", id="medsam-ft-use",
                disabled=("!ft.adapter && !(ft.auto_model && ft.state === 'finished')",))
    with html.Div(v_if="ft.state", id="medsam-ft-progress"):
        html.Div("{{ ft.state }}: epoch {{ ft.epoch }} / {{ ft.epochs }}  loss {{ ft.loss }}",
                 classes="text-caption mt-1")
        v3.VProgressLinear(model_value=("100 * (ft.epoch || 0) / Math.max(ft.epochs || 1, 1)",), height=4)
        html.Pre("{{ ft.log_tail }}", v_if="ft.state === 'failed'", classes="text-caption text-red",
                 style="white-space: pre-wrap;")
    html.Img(src=("ft_curve",), v_if="ft_curve", style="width: 100%;", classes="mt-2")
