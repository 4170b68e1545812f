"""Box refinement of automatic results (engine/refine.py): which planes get a box, how results compose."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSAMAdapterLib.cli import main
from MedSAMAdapterLib.engine.auto import AutoSegmenter, open_box_refiner
from MedSAMAdapterLib.engine.cache import EmbeddingCache
from MedSAMAdapterLib.engine.refine import BoxRefinement, box_promptable, refine_with_boxes
from MedSAMAdapterLib.engine.session import SliceResult
from MedSAMAdapterLib.errors import InputError
from MedSAMAdapterLib.models.auto_heads import save_auto_model
from MedSAMAdapterLib.models.registry import build_tiny_test_model
from Testing.conftest import make_volume
from Testing.unit.test_auto import synthetic_case, tiny_auto_model


def disc(shape=(40, 40), centre=(20, 20), radius=8.0) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def ring(gap_px: int = 0) -> np.ndarray:
    mask = disc(radius=12) & ~disc(radius=7)
    if gap_px:
        mask[19:19 + gap_px, 20:] = False  # cut the ring open on one side
    return mask


class FixedPredictor:
    """Draws a given mask on every plane it is asked for; records the boxes."""

    def __init__(self, drawn: np.ndarray) -> None:
        self.drawn, self.calls = drawn, []

    def predict_slice(self, axis, index, prompts):
        self.calls.append((axis, index, prompts.box_rc))
        return SliceResult(self.drawn, 1.0, axis, index)


@pytest.mark.parametrize("mask, expected", [
    (disc(), False), (ring(), True), (ring(gap_px=2), True), (disc() & ~disc(centre=(20, 28), radius=8), False),
])
def test_ring_test_tells_rings_from_solid_masks(mask, expected):
    # a disc and a crescent are a box's objects; a ring (also one open by a small gap) is not
    assert BoxRefinement().is_ring(mask) is expected
    assert not BoxRefinement(ring_gap_px=0).is_ring(ring(gap_px=2))  # without closing, an open ring has no hole


def test_plane_boxes_skip_small_planes_and_ignore_stray_fragments():
    volume = np.zeros((3, 40, 40), bool)
    volume[0] = disc()
    volume[0, 0, 0] = True  # a stray pixel must not stretch the box to the corner
    volume[1, 5:7, 5:7] = True  # 4 pixels: too small
    boxes = BoxRefinement(margin_px=1).plane_boxes(volume, axis=0)
    assert boxes == [(0, (11.0, 11.0, 29.0, 29.0))]
    assert BoxRefinement().plane_boxes(np.moveaxis(volume, 0, 2), axis=2)[0][0] == 0


def test_a_class_of_rings_is_never_refined_but_its_rare_solid_plane_would_be_judged_with_it():
    volume = np.stack([ring(), ring(gap_px=2), ring(), disc()])
    assert BoxRefinement().plane_boxes(volume, 0) == []  # 3 of 4 planes are rings: keep the automatic result
    assert [i for i, _ in BoxRefinement(max_ring_planes=1.0).plane_boxes(volume, 0)] == [3]


def test_refinement_composes_one_label_per_voxel():
    # class 1 (automatic, too small) is redrawn larger; class 2 is a ring around it and stays as it was
    shape = (2, 40, 40)
    probabilities = np.zeros((3, *shape), np.float16)
    small, myo = disc(radius=5), ring()
    probabilities[0] = 0.8
    probabilities[1][:, small] = 0.9
    probabilities[2][:, myo] = 0.9
    probabilities[2][:, small] = 0.85  # the ring class is second best inside its hole
    classes = probabilities.argmax(0)
    drawn = disc(radius=6)
    predictor = FixedPredictor(drawn)
    refined = refine_with_boxes(probabilities.copy(), classes, predictor, axis=0)
    assert [call[1] for call in predictor.calls] == [0, 1]  # class 1 on both planes; the ring class never
    assert np.array_equal(refined[0] == 1, drawn)
    assert np.array_equal(refined[0] == 2, myo)  # untouched
    # a redrawn mask that takes voxels away hands them to the next most probable class
    shrunk = refine_with_boxes(probabilities.copy(), classes, FixedPredictor(disc(radius=3)), axis=0)
    assert np.array_equal(shrunk[0] == 1, disc(radius=3))
    assert (shrunk[0][small & ~disc(radius=3)] == 2).all()


def test_known_ring_classes_keep_the_automatic_result():
    probabilities = np.zeros((3, 1, 40, 40), np.float16)
    probabilities[0] = 0.5
    probabilities[1][:, disc(radius=5)] = 0.9
    probabilities[2][:, disc(centre=(8, 8), radius=4)] = 0.9  # solid, so only the class flag protects it
    predictor = FixedPredictor(disc(radius=6))
    refine_with_boxes(probabilities.copy(), probabilities.argmax(0), predictor, box_prompt=[None, False])
    assert len(predictor.calls) == 1  # class 1 only


def test_known_solid_classes_are_redrawn_on_planes_with_holes():
    # a blood pool with a papillary muscle inside is still a box's object when the class is known to be solid
    probabilities = np.zeros((2, 1, 40, 40), np.float16)
    probabilities[0] = 0.5
    probabilities[1][:, ring()] = 0.9
    classes = probabilities.argmax(0)
    judged, trusted = FixedPredictor(disc(radius=12)), FixedPredictor(disc(radius=12))
    refine_with_boxes(probabilities.copy(), classes, judged)
    refine_with_boxes(probabilities.copy(), classes, trusted, box_prompt=[True])
    assert (len(judged.calls), len(trusted.calls)) == (0, 1)


def test_box_promptable_reads_rings_from_ground_truth():
    from Testing.unit.test_auto import synthetic_case

    maps = [synthetic_case(seed)[1] for seed in range(2)]
    assert box_promptable(maps, [1, 2]) == {1: True, 2: False}  # the disc, and the ring around it
    assert box_promptable([], [1]) == {1: True}  # no evidence against a box


def test_refinement_checks_shapes_and_settings():
    with pytest.raises(InputError, match="do not match"):
        refine_with_boxes(np.zeros((2, 1, 4, 4), np.float16), np.zeros((1, 4, 5), int), FixedPredictor(None))
    with pytest.raises(InputError, match="invalid box refinement"):
        BoxRefinement(max_ring_planes=2.0)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_test_model(seed=0)


def test_auto_segmenter_refines_with_a_session_on_the_volume(tmp_path, tiny):
    image, _ = synthetic_case(3)
    volume = make_volume(image)
    save_auto_model(tmp_path / "m", tiny_auto_model(tiny, "linear"))
    segmenter = AutoSegmenter(tmp_path / "m", base_model=tiny, cache=EmbeddingCache(tmp_path / "cache"))
    plain = segmenter.predict(volume)
    assert open_box_refiner(segmenter, "none") is tiny  # the base model: the head's embeddings are reused
    session = segmenter.refine_session(volume, tiny)
    asked = []
    real_predict = session.predict_slice
    session.predict_slice = lambda axis, index, prompts: asked.append(index) or real_predict(axis, index, prompts)
    labels = segmenter.predict_refined(volume, session)
    assert labels.shape == volume.shape and labels.dtype == plain.dtype
    assert set(np.unique(labels)) <= {0, *[c.label_value for c in segmenter.classes]}
    assert np.array_equal(segmenter.segment(volume, refiner=tiny)[0], labels)  # a session of its own: the same
    expected = sum(len(BoxRefinement().plane_boxes(plain == c.label_value, 0)) for c in segmenter.classes
                   if c.box_prompt is not False)
    assert len(asked) == expected  # one decoder call per refinable plane of each class
    assert not session.segments  # refinement leaves the session's segments alone


def test_cli_auto_and_evaluate_take_refine_boxes_and_turn_search(tmp_path, tiny, monkeypatch, capsys):
    import SimpleITK as sitk

    from MedSAMAdapterLib.models import loading
    from Testing.unit.test_auto import write_nnunet

    opened = []
    monkeypatch.setattr(loading, "open_model", lambda *a, **k: opened.append(k.get("adapter")) or tiny)
    save_auto_model(tmp_path / "m", tiny_auto_model(tiny, "linear"))
    root = write_nnunet(tmp_path / "Dataset900_T")
    image = sorted((root / "imagesTr").iterdir())[0]
    out = tmp_path / "out.nii.gz"
    assert main(["auto", str(image), "--model", str(tmp_path / "m"), "-o", str(out), "--refine-boxes",
                 "--cache-dir", str(tmp_path / "c"), "--turn-search", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["turned_degrees"] in (0, 90, 180, 270)
    assert opened == ["none"]  # the head's base model, which is also the refiner (no second model)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert labels.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(image))).shape
    assert main(["evaluate", str(root), "--protocol", "auto", "--model", str(tmp_path / "m"), "--refine-boxes",
                 "default", "--max-cases", "1", "--out", str(tmp_path / "eval"), "--turn-search"]) == 0
    assert opened[-1] is None  # ``default``: the base model opened again with the shipped click adapter
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["box_refinement"] == "default" and summary["cases"] and summary["turn_search"] is True
    assert summary["cases"][0]["quarter_turns"] in (0, 1, 2, 3)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| box refinement | default |" in report and "| turn search | True (" in report
    assert main(["evaluate", str(root), "--protocol", "box", "--model", "tiny-test", "--refine-boxes",
                 "--out", str(tmp_path / "e2")]) != 0
    assert "box refinement and turn search apply to the auto protocol" in capsys.readouterr().err


def test_shipped_cards_mark_their_rings():
    from Testing.conftest import REPO

    cards = {p.stem: json.loads(p.read_text()) for p in (REPO / "Resources" / "Models").glob("*_autosam.json")}
    flags = {name: {c["name"]: c["box_prompt"] for c in card["classes"]} for name, card in cards.items()}
    assert flags["acdc_heart_autosam"] == {"RV": True, "MYO": False, "LV": True}
    assert flags["abdomen_ct_autosam"]["vertebrae"] is False and flags["abdomen_ct_autosam"]["liver"] is True


def test_auto_timing_benchmark_races_refinement_and_turn_search_against_the_plain_head(tmp_path, tiny, monkeypatch):
    import importlib.util

    from MedSAMAdapterLib.models import loading
    from Testing.conftest import REPO
    from Testing.unit.test_auto import write_nnunet

    spec = importlib.util.spec_from_file_location("auto_timing", REPO / "benchmarks" / "auto_timing.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(loading, "open_model", lambda *a, **k: tiny)
    save_auto_model(tmp_path / "m", tiny_auto_model(tiny, "linear"))
    root = write_nnunet(tmp_path / "Dataset900_T", cases=1)
    runs = {"teacher": tmp_path / "m", "teacher + turns": tmp_path / "m", "teacher + boxes": tmp_path / "m"}
    result = bench.run(runs, root, None, 1, "cpu", {"teacher + boxes"}, {"teacher + turns": True})
    rows = result["models"]
    assert set(rows) == set(runs) and all(r["median_s"] > 0 for r in rows.values())
    assert [r["turn_search"] for r in rows.values()] == [False, True, False]  # the tiny card's default: off
    assert rows["teacher + turns"]["turned_degrees"] in (0, 90, 180, 270)
    markdown = bench.to_markdown(result)
    assert "teacher / teacher + boxes time ratio" in markdown and "| on (turned " in markdown
