"""Evaluation runner bookkeeping with a fake session (real-model runs are integration tests).

The synthetic images are their own ground truth (intensity = 50 x label), so the fake session can answer any
prompt with the exact object, half of it, or nothing, and the expected metrics are known.
"""

import json
import math
import types

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAMAdapterLib.errors import InputError, PromptError
from MedSAMAdapterLib.data.nnunet import parse_regions
from MedSAMAdapterLib.evaluation.protocols import evaluate_dataset, largest_slice, level_names, pick_examples

LABELS = {"background": 0, "liver": 1, "spleen": 2}
REGIONS = {"organs": (1, 2)}  # what FakeSession answers for a segment named after a region


class FakeSession:
    """Implements the InteractiveSession calls the runner uses; records every prompt it is given."""

    def __init__(self, volume, mode="perfect"):
        self.gt = np.rint(np.asarray(volume.array, np.float32) / 50).astype(int)
        self.mode = mode
        self.masks, self.names, self.calls, self.propagated, self.closed = {}, {}, [], [], False

    def add_segment(self, name):
        segment = f"segment_{len(self.masks) + 1}"
        self.masks[segment], self.names[segment] = np.zeros(self.gt.shape, bool), name
        return segment

    def segment_slice(self, segment, axis, index, prompts):
        assert axis == 0
        self.calls.append((self.names[segment], index, prompts))
        plane = self._target(self.names[segment])[index]
        mask = self._answer(plane, prompts)
        self.masks[segment][index] = mask
        return types.SimpleNamespace(mask=mask, iou=0.9)

    def _answer(self, plane, prompts):
        if self.mode == "empty":
            return np.zeros_like(plane)
        if prompts.box_rc is not None:
            r0, c0, r1, c1 = (int(v) for v in prompts.box_rc)
            inside = np.zeros_like(plane)
            inside[r0 : r1 + 1, c0 : c1 + 1] = True
            return plane & inside
        if self.mode == "half" and len(prompts.points_rc) == 1:
            rows = np.nonzero(plane)[0]
            half = plane.copy()
            half[: int(np.median(rows))] = False  # the upper half is missed after one click
            return half
        return plane

    def propagate(self, segment, axis, start_index, direction="both"):
        if not self.masks[segment][start_index].any():
            raise PromptError("empty start slice")
        self.propagated.append((self.names[segment], start_index, direction))
        target = self._target(self.names[segment])
        written = [k for k in range(self.gt.shape[0]) if k != start_index and target[k].any()]
        self.masks[segment][written] = target[written]
        return written

    def _target(self, name):
        return np.isin(self.gt, REGIONS.get(name, (LABELS.get(name),)))

    def segment_mask(self, segment):
        return self.masks[segment].copy()

    def close(self):
        self.closed = True


def factory(mode="perfect", sessions=None):
    def make(volume):
        session = FakeSession(volume, mode)
        if sessions is not None:
            sessions.append(session)
        return session

    return make


def write_dataset_json(root, ending, **extra):
    meta = {"channel_names": {"0": "CT"}, "labels": LABELS, "file_ending": ending, **extra}
    (root / "dataset.json").write_text(json.dumps(meta))


def make_2d_dataset(root):
    """Three 40x50 PNG cases; case c is missing the spleen; HC18-style pixel spacing for case a."""
    from PIL import Image

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name, spleen in (("a", True), ("b", True), ("c", False)):
        labels = np.zeros((40, 50), np.uint8)
        labels[5:20, 5:25] = 1
        if spleen:
            labels[25:35, 30:45] = 2
        Image.fromarray(labels * 50).save(root / "imagesTr" / f"{name}_0000.png")
        Image.fromarray(labels).save(root / "labelsTr" / f"{name}.png")
    write_dataset_json(root, ".png", pixel_spacing_mm={"a": 0.5})
    return root


def make_3d_dataset(root, spacing=(0.8, 0.8, 3.0)):
    """Two 8x30x30 NIfTI cases with anisotropic spacing; the liver is biggest on slice 4."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name in ("x", "y"):
        labels = np.zeros((8, 30, 30), np.uint8)
        for k, size in zip(range(2, 7), (3, 5, 8, 4, 2)):
            labels[k, 5 : 5 + size, 5 : 5 + size] = 1
        labels[3:5, 20:26, 20:26] = 2
        for array, path in ((labels * 50.0, root / "imagesTr" / f"{name}_0000.nii.gz"),
                            (labels, root / "labelsTr" / f"{name}.nii.gz")):
            image = sitk.GetImageFromArray(array.astype(np.float32 if array.dtype.kind == "f" else np.uint8))
            image.SetSpacing(spacing)
            sitk.WriteImage(image, str(path))
    write_dataset_json(root, ".nii.gz")
    return root


def test_box_2d_perfect(tmp_path):
    root = make_2d_dataset(tmp_path / "Dataset990_Toy2D")
    sessions = []
    out = tmp_path / "out"
    summary = evaluate_dataset(root, "box", "fake-model", out_dir=out, session_factory=factory("perfect", sessions),
                               progress=False)
    assert summary["complete"] and summary["n_cases"] == 3 and summary["levels"] == ["box"]
    assert summary["overall"]["box"] == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}
    assert summary["per_label"]["box"]["liver"]["n"] == 3 and summary["per_label"]["box"]["spleen"]["n"] == 2
    assert summary["composed_overall"]["box"]["dice"] == 1.0
    records = {r["case"]: r for r in summary["cases"]}
    assert records["c"]["absent_labels"] == ["spleen"] and "spleen" not in records["c"]["metrics"]["box"]
    assert records["a"]["spacing"] == [0.5, 0.5, 1.0] and records["b"]["spacing"] == [1.0, 1.0, 1.0]
    assert all(s.closed for s in sessions)
    box = sessions[0].calls[0][2].box_rc
    assert box == (5.0, 5.0, 19.0, 24.0) and not sessions[0].propagated  # 2D: no propagation
    saved = json.loads((out / "summary.json").read_text())  # strict JSON (no NaN), same numbers
    assert saved["overall"]["box"]["dice"] == 1.0 and saved["model"] == "fake-model" and saved["adapter"] is None
    assert {"date", "versions", "timing", "dataset"} <= set(saved) and saved["versions"]["monai"]
    for name in ("report.md", "dice_per_label.png", "predictions/a.npz"):
        assert (out / name).is_file(), name
    assert [e["rank"] for e in saved["examples"]][:1] == ["best"]
    for example in saved["examples"]:
        for path in example["files"].values():
            assert (out / path).is_file()
    assert "1.000" in (out / "report.md").read_text()


def test_box_3d_propagates_from_largest_slice(tmp_path):
    root = make_3d_dataset(tmp_path / "Dataset991_Toy3D")
    sessions = []
    summary = evaluate_dataset(root, "box", "fake", out_dir=tmp_path / "o", progress=False, save_predictions=False,
                               session_factory=factory("perfect", sessions))
    assert summary["overall"]["box"]["dice"] == 1.0 and summary["overall"]["box"]["hd95"] == 0.0
    record = summary["cases"][0]
    assert record["slice_index"] == {"liver": 4, "spleen": 3}
    assert record["spacing"] == pytest.approx([0.8, 0.8, 3.0]) and record["shape"] == [8, 30, 30]
    assert sessions[0].propagated == [("liver", 4, "both"), ("spleen", 3, "both")]
    assert summary["examples"] == [] and not (tmp_path / "o" / "predictions").exists()


def test_box_failures_are_scored_not_raised(tmp_path):
    root = make_3d_dataset(tmp_path / "Dataset992_Toy3D")
    summary = evaluate_dataset(root, "box", "fake", out_dir=tmp_path / "o", session_factory=factory("empty"),
                               progress=False, max_cases=1)
    metrics = summary["cases"][0]["metrics"]["box"]["liver"]
    assert metrics["dice"] == 0.0 and metrics["nsd"] == 0.0 and math.isnan(metrics["hd95"])
    saved = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert saved["cases"][0]["metrics"]["box"]["liver"]["hd95"] is None
    assert saved["n_cases"] == 1


def test_clicks_2d_levels_and_curve(tmp_path):
    root = make_2d_dataset(tmp_path / "Dataset993_Toy2D")
    sessions = []
    out = tmp_path / "out"
    summary = evaluate_dataset(root, "clicks", "fake", out_dir=out, session_factory=factory("half", sessions),
                               cases=["b", "a"], progress=False)
    assert [r["case"] for r in summary["cases"]] == ["b", "a"]
    assert summary["levels"] == level_names("clicks") == ["clicks_1", "clicks_3", "clicks_5"]
    assert summary["overall"]["clicks_1"]["dice"] < 1.0
    assert summary["overall"]["clicks_3"]["dice"] == 1.0 and summary["overall"]["clicks_5"]["dice"] == 1.0
    curve = summary["overall_dice_vs_clicks"]
    assert len(curve) == 5 and curve[0] < 1.0 and curve[1:] == [1.0] * 4
    liver_calls = [p for name, _, p in sessions[0].calls if name == "liver"]
    assert len(liver_calls) == 2  # perfect after the second click: no more clicks needed
    assert all(p.use_previous_mask and p.box_rc is None for p in liver_calls)
    second = liver_calls[1]
    assert second.point_labels.tolist() == [1, 1]  # the missed upper half gets a positive click
    assert second.points_rc[1][0] < 12  # ... in the upper half of rows 5..19
    assert summary["composed_overall"]["clicks_1"]["dice"] < 1.0
    assert (out / "dice_vs_clicks.png").is_file()
    assert "Mean Dice vs number of clicks" in (out / "report.md").read_text()


def test_clicks_3d_on_largest_slice(tmp_path):
    root = make_3d_dataset(tmp_path / "Dataset994_Toy3D")
    sessions = []
    summary = evaluate_dataset(root, "clicks", "fake", out_dir=tmp_path / "o", max_cases=1,
                               progress=True,  # the tqdm bar must not disturb anything
                               session_factory=factory("perfect", sessions))
    assert [(name, index) for name, index, _ in sessions[0].calls] == [("liver", 4), ("spleen", 3)]
    assert summary["overall"]["clicks_5"] == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}
    assert summary["cases"][0]["composed"] is None  # labels on different slices: no composed map
    assert summary["composed_overall"] == {}


def test_argument_errors(tmp_path):
    root = make_2d_dataset(tmp_path / "Dataset995_Toy2D")
    kwargs = dict(out_dir=tmp_path / "o", session_factory=factory(), progress=False)
    with pytest.raises(InputError, match="protocol"):
        evaluate_dataset(root, "scribbles", "fake", **kwargs)
    with pytest.raises(InputError, match="adapter"):
        evaluate_dataset(root, "box", "fake", adapter=tmp_path / "missing.pt", **kwargs)
    with pytest.raises(InputError, match="unknown case"):
        evaluate_dataset(root, "box", "fake", cases=["zzz"], **kwargs)
    with pytest.raises(InputError, match="max_cases"):
        evaluate_dataset(root, "box", "fake", max_cases=0, **kwargs)
    adapter = tmp_path / "adapter.pt"
    adapter.write_bytes(b"")
    summary = evaluate_dataset(root, "box", "fake", adapter=adapter, max_cases=1, **kwargs)
    assert summary["adapter"] == str(adapter) and summary["n_cases"] == 1


def test_helpers():
    mask = np.zeros((4, 5, 5), bool)
    mask[1, :2, :2] = True
    mask[2, :3, :3] = True
    mask[3, :3, :3] = True
    assert largest_slice(mask) == 2  # first of the tied maxima
    scores = (("a", 0.5), ("b", 0.9), ("c", float("nan")), ("d", 0.1))
    records = [{"case": c, "mean_dice": {"box": d}} for c, d in scores]
    picked = [(rank, r["case"]) for rank, r in pick_examples(records, "box")]
    assert picked == [("best", "b"), ("median", "a"), ("worst", "d")]
    assert [r["case"] for _, r in pick_examples(records[:1], "box")] == ["a"]


# --- automatic models scored on another dataset's label numbers --------------------------------------------------
def test_auto_classes_match_by_structure_name_then_by_value():
    from MedSAMAdapterLib.evaluation.auto_protocol import class_key, match_classes

    model = {class_key(n): v for n, v in {"liver": 5, "spleen": 1, "RV": 3}.items()}
    ct_slices = {"aorta": 1, "liver": 16, "spleen": 23}
    assert match_classes(model, ct_slices) == ({"liver": 16, "spleen": 23}, {5: 16, 1: 23}, "name")
    acdc_alias = {"heart_ventricle_right": 12}  # the terminology knows both names as the right ventricle
    assert match_classes(model, acdc_alias)[1] == {3: 12}
    unnamed = {"label_1": 1, "label_9": 9}
    assert match_classes(model, unnamed) == ({"label_1": 1}, {1: 1}, "value")


def test_auto_run_is_scored_in_the_dataset_label_values():
    from types import SimpleNamespace

    from MedSAMAdapterLib.evaluation.auto_protocol import AutoRun, run_auto_case

    gt = np.zeros((1, 8, 8), np.uint8)
    gt[0, :4, :4] = 16  # liver in the dataset's numbering
    predicted = np.zeros_like(gt)
    predicted[0, :4, :4] = 5  # liver in the model's numbering
    predicted[0, 6:, 6:] = 14  # a model class the dataset does not have: not scored, not counted as liver
    segmenter = SimpleNamespace(classes=[SimpleNamespace(name="liver", label_value=5),
                                         SimpleNamespace(name="urinary_bladder", label_value=14)],
                                predict=lambda volume, refiner=None: predicted)
    outcome = run_auto_case(AutoRun(None, segmenter), gt, {"liver": 16, "aorta": 1}, (1.0, 1.0, 1.0), 2.0)
    record = outcome["record"]
    assert record["scored_labels"] == ["liver"] and record["classes_matched_by"] == "name"
    assert record["metrics"]["auto"]["liver"]["dice"] == pytest.approx(1.0)
    assert set(np.unique(outcome["prediction"])) == {0, 16}


def test_regions_are_prompted_and_scored_as_unions_of_labels(tmp_path):
    root = make_2d_dataset(tmp_path / "Dataset990_Toy2D")
    regions = parse_regions(["organs=liver,2", "liver=1"], {"liver": 1, "spleen": 2})
    assert regions == {"organs": (1, 2), "liver": (1,)}
    sessions = []
    summary = evaluate_dataset(root, "box", "fake", out_dir=tmp_path / "box", session_factory=factory("perfect", sessions),
                               progress=False, regions=regions)
    assert summary["regions"] == {"organs": [1, 2], "liver": [1]}
    assert summary["overall"]["box"]["dice"] == 1.0 and not summary["composed_overall"]  # regions overlap
    first_box = sessions[0].calls[0][2].box_rc
    assert first_box == (5.0, 5.0, 34.0, 44.0)  # the box around liver and spleen together
    assert "organs = {1, 2}" in (tmp_path / "box" / "report.md").read_text()
    clicks = evaluate_dataset(root, "clicks", "fake", out_dir=tmp_path / "c", session_factory=factory("half"),
                              progress=False, regions={"organs": (1, 2)})
    assert clicks["per_label"]["clicks_1"]["organs"]["dice"] < 1.0 == clicks["per_label"]["clicks_5"]["organs"]["dice"]
    with pytest.raises(InputError, match="box and clicks"):
        evaluate_dataset(root, "auto", "fake", out_dir=tmp_path / "a", session_factory=factory(), regions=regions)


@pytest.mark.parametrize("item,message", [("organs", "NAME=LABEL"), ("=1", "NAME=LABEL"), ("x=", "NAME=LABEL"),
                                          ("x=liver,kidney", "'kidney' is not a label"), ("x=7", "'7' is not")])
def test_bad_regions_are_refused(item, message):
    with pytest.raises(InputError, match=message):
        parse_regions([item], {"liver": 1, "spleen": 2})


def test_names_the_sessions_sent_as_text_are_listed_per_case_and_in_the_summary(tmp_path):
    from MedSAMAdapterLib.engine.session import InteractiveSession
    from Testing.helpers import BrightRegionModel

    class KnowsLiver(BrightRegionModel):
        def understands(self, text):
            return text == "liver"

    root = make_2d_dataset(tmp_path / "Dataset902_Toy")
    for names_as_text, expected in ((True, ["liver"]), (False, [])):
        summary = evaluate_dataset(
            root, "clicks", "stand-in", out_dir=tmp_path / f"ev{names_as_text}", progress=False,
            session_factory=lambda volume: InteractiveSession(volume, KnowsLiver(), names_as_text=names_as_text),
            save_predictions=False)
        assert summary["text_prompts"] == expected
        assert all(case["text_prompts"] == expected for case in summary["cases"])


def test_clicks_protocol_records_the_sessions_focus(tmp_path):
    from MedSAMAdapterLib.engine.focus import FocusPolicy
    from MedSAMAdapterLib.engine.session import InteractiveSession
    from Testing.helpers import BrightRegionModel

    root = make_2d_dataset(tmp_path / "Dataset903_Toy")
    for focus in (FocusPolicy(margin=0.5), None):
        summary = evaluate_dataset(
            root, "clicks", "stand-in", out_dir=tmp_path / f"ev{focus is None}", progress=False,
            session_factory=lambda volume: InteractiveSession(volume, BrightRegionModel(), focus=focus),
            save_predictions=False)
        expected = None if focus is None else {"margin": 0.5, "min_zoom": 5.0, "max_zoom": 8.0, "box_min_zoom": 2.5,
                                               "max_spill": 0.1}
        assert summary["complete"] and summary["focus"] == expected
        assert all(case["focus"] == expected for case in summary["cases"])
