"""The shipped prompt-free example model (ACDC heart, AutoSAM ViT head, 3 training patients) on a held-out case."""

import numpy as np
import pytest

from MedSAMAdapterLib.evaluation.metrics import dice_score
from MedSAMAdapterLib.models.auto_heads import read_auto_card
from Testing.conftest import REPO, SHARED_DATA, requires_litemedsam, requires_shared_data

pytestmark = [pytest.mark.integration, requires_litemedsam, requires_shared_data]

MODEL = REPO / "Resources" / "Models" / "acdc_heart_autosam.json"


def test_card_is_honest_about_data_and_held_out_patients():
    card = read_auto_card(MODEL)
    data = card["training"]["data"]
    assert set(data["train_patients"]).isdisjoint(data["val_patients"]) and len(data["val_patients"]) == 10
    assert "NC" in card["training"]["note"] and card["metrics"]["val_dice_mean"] > 0.6


def test_segments_a_held_out_heart():
    from MedSAMAdapterLib.data.nnunet import open_dataset, read_case
    from MedSAMAdapterLib.engine.auto import run_auto

    held_out = sorted(read_auto_card(MODEL)["training"]["data"]["val_cases"])[0]
    volume, truth = read_case(open_dataset(SHARED_DATA / "Dataset001_ACDC"), held_out)
    labels, segments = run_auto(volume, MODEL)
    assert [s.name for s in segments] == ["RV", "MYO", "LV"]
    dice = [dice_score(labels == v, truth == v) for v in (1, 2, 3)]
    assert np.mean(dice) > 0.5, dice
