"""The shipped click adapter: attached by default, makes a single click segment an object, keeps boxes working."""

import dataclasses
import numpy as np
import pytest

from MedSAMAdapterLib.engine.prompts import SlicePrompts
from MedSAMAdapterLib.engine.session import InteractiveSession
from MedSAMAdapterLib.evaluation.metrics import dice_score
from MedSAMAdapterLib.models.checkpoints import read_card
from MedSAMAdapterLib.models.registry import get_spec
from Testing.conftest import SHARED_DATA, requires_litemedsam, requires_shared_data

pytestmark = [pytest.mark.integration, requires_litemedsam]


@pytest.fixture(scope="module")
def models():
    from MedSAMAdapterLib.models.loading import open_model

    return open_model("litemedsam"), open_model("litemedsam", adapter="none")


def test_shipped_adapter_is_registered_with_an_honest_card():
    spec = get_spec("litemedsam")
    card = read_card(spec.default_adapter_path)
    assert card["base_model"]["sha256"] == spec.sha256
    assert card["metrics"]["val_clicks_1"] > card["metrics"]["baseline"]["val_clicks_1"]
    assert card["metrics"]["val_box"] >= card["metrics"]["baseline"]["val_box"] - 0.01


def test_default_model_carries_the_adapter_and_none_gives_the_base(models):
    adapted, base = models
    assert getattr(adapted, "peft_config", None) is not None
    assert getattr(base, "peft_config", None) is None


def held_out_busi_dice(models, prompt_for) -> dict[str, list[float]]:
    """Dice of the adapted and the base model on 4 BUSI cases of the adapter's own validation split (never
    trained on), each prompted with ``prompt_for(ground truth)``."""
    from MedSAMAdapterLib.data.nnunet import open_dataset, read_case

    card = read_card(get_spec("litemedsam").default_adapter_path)
    held_out = next(d for d in card["data"]["datasets"] if d["name"] == "Dataset101_BUSI")["val_cases"][:4]
    dataset = open_dataset(SHARED_DATA / "Dataset101_BUSI")
    scores: dict[str, list[float]] = {"adapted": [], "base": []}
    for case in held_out:
        volume, labels = read_case(dataset, case)
        truth = labels[0] == 1
        for name, model in zip(("adapted", "base"), models):
            session = InteractiveSession(volume, model)
            mask = session.segment_slice(session.add_segment("x"), 0, 0, prompt_for(truth)).mask
            scores[name].append(dice_score(mask, truth))
    return scores


@requires_shared_data
def test_one_click_segments_held_out_lesions_only_with_the_adapter(models):
    """First click at the lesion centre."""
    from MedSAMAdapterLib.evaluation.clicks import first_click

    scores = held_out_busi_dice(models, lambda truth: SlicePrompts([first_click(truth)], [1]))
    assert np.mean(scores["adapted"]) > 0.6, scores
    assert np.mean(scores["base"]) < 0.1, scores


@requires_shared_data
def test_box_quality_is_kept_on_held_out_cases(models):
    """Tight boxes: the adapter is at least as good as the base model (within 1 point).

    (A synthetic bright disk is not used here: the encoder adapters were trained on real images, and such a disk
    scores 0.81 with the adapter against 0.9+ for the base - a fact of the adapter, not of medical images.)"""
    from MedSAMAdapterLib.evaluation.clicks import tight_box

    scores = held_out_busi_dice(models, lambda truth: SlicePrompts(box_rc=tight_box(truth)))
    assert np.mean(scores["adapted"]) >= np.mean(scores["base"]) - 0.01, scores
    assert np.mean(scores["adapted"]) > 0.8, scores


@requires_shared_data
def test_structure_names_tell_one_click_on_the_disc_centre_which_structure_is_meant(models):
    """Held-out fundus images: one click at the centre of the optic disc lands on the cup. With the names as text
    prompts the mean Dice of disc and cup after that click is higher than without (README: 0.812 vs 0.774)."""
    from MedSAMAdapterLib.data.nnunet import open_dataset, read_case
    from MedSAMAdapterLib.evaluation.clicks import first_click

    adapted = models[0]
    assert adapted.understands("optic_disc") and adapted.understands("Optic Cup") and not adapted.understands("RV")
    card = read_card(get_spec("litemedsam").default_adapter_path)
    held_out = next(d for d in card["data"]["datasets"] if d["name"] == "Dataset104_FundusODOC")["val_cases"]
    dataset = open_dataset(SHARED_DATA / "Dataset104_FundusODOC")
    scores: dict[bool, list[float]] = {True: [], False: []}
    for case in held_out:
        volume, labels = read_case(dataset, case)
        for name, truth in (("optic_disc", labels[0] > 0), ("optic_cup", labels[0] == 2)):
            click = SlicePrompts([first_click(truth)], [1])
            for names_as_text in (True, False):
                session = InteractiveSession(volume, adapted, names_as_text=names_as_text)
                result = session.segment_slice(session.add_segment(name), 0, 0, click)
                assert (result.text == name) is names_as_text
                scores[names_as_text].append(dice_score(result.mask, truth))
    assert np.mean(scores[True]) > np.mean(scores[False]) + 0.02, scores


@requires_shared_data
@pytest.mark.parametrize("protocol", ["box", "clicks"])
def test_zoom_on_small_ct_organs_with_the_real_model(models, tmp_path, protocol):
    """The held-out CT slice (15 small, touching structures): with the default zoom, boxes and corrective clicks on
    the ribs, back muscles and the aorta are answered on windows. Box Dice rises (README: 0.699 -> 0.83); after three
    clicks Dice does not fall; the first click never zooms."""
    from MedSAMAdapterLib.engine.cache import EmbeddingCache
    from MedSAMAdapterLib.engine.focus import DEFAULT_FOCUS
    from MedSAMAdapterLib.evaluation.protocols import evaluate_dataset

    summaries = {}
    for focus in (DEFAULT_FOCUS, None):
        summaries[focus is not None] = evaluate_dataset(
            SHARED_DATA / "Dataset106_CTSlices2D", protocol, "litemedsam", out_dir=tmp_path / str(focus),
            cases=["s0114_111"], progress=False, save_predictions=False, n_examples=0,
            session_factory=lambda volume, f=focus: InteractiveSession(
                volume, models[0], cache=EmbeddingCache(use_disk=False), focus=f))
    zoomed, plain = (summaries[z]["overall"] for z in (True, False))
    assert summaries[True]["focus"] == dataclasses.asdict(DEFAULT_FOCUS)
    if protocol == "box":
        assert zoomed["box"]["dice"] > plain["box"]["dice"] + 0.08, (zoomed, plain)
        ribs = [summaries[z]["per_label"]["box"]["rib_right_9"]["dice"] for z in (True, False)]
        assert ribs[0] > 0.5 > 0.1 > ribs[1], ribs
    else:
        assert zoomed["clicks_1"]["dice"] == pytest.approx(plain["clicks_1"]["dice"])
        assert zoomed["clicks_3"]["dice"] >= plain["clicks_3"]["dice"] - 0.01, (zoomed, plain)


@requires_shared_data
def test_negative_clicks_are_obeyed_on_the_held_out_prostate(models):
    """Held-out prostate I2CVB: the first click also takes a bright structure above the gland. Before the clicks
    were painted into the mask prompt, the negative clicks placed there were ignored and Dice fell to 0.64 after
    five clicks; now it rises with every click (README: 0.75 -> 0.88)."""
    from MedSAMAdapterLib.data.nnunet import open_dataset, read_case
    from MedSAMAdapterLib.evaluation.clicks import first_click, next_click

    volume, labels = read_case(open_dataset(SHARED_DATA / "Dataset105_ProstateMRI2D"), "I2CVB_test_00_00")
    truth = labels[0] == 1
    session = InteractiveSession(volume, models[0])
    segment = session.add_segment("prostate")
    clicks, scores = [(*first_click(truth), True)], []
    for _ in range(5):
        prompts = SlicePrompts([c[:2] for c in clicks], [int(c[2]) for c in clicks], None, use_previous_mask=True)
        mask = session.segment_slice(segment, 0, 0, prompts).mask
        scores.append(dice_score(mask, truth))
        clicks.append(next_click(truth, mask))
    assert any(not positive for _, _, positive in clicks[1:5]), clicks  # negative clicks were needed
    assert scores[-1] > 0.85 and scores[-1] > scores[0] + 0.08, scores
