"""The shipped click adapter: attached by default, makes a single click segment an object, keeps boxes working."""

import numpy as np
import pytest

from MedSAMAdapterLib.engine.prompts import SlicePrompts
from MedSAMAdapterLib.engine.session import InteractiveSession
from MedSAMAdapterLib.evaluation.metrics import dice_score
from MedSAMAdapterLib.models.checkpoints import read_card
from MedSAMAdapterLib.models.registry import get_spec
from Testing.conftest import SHARED_DATA, make_volume, requires_litemedsam, requires_shared_data

pytestmark = [pytest.mark.integration, requires_litemedsam]


@pytest.fixture(scope="module")
def models():
    from MedSAMAdapterLib.models.loading import open_model

    return open_model("litemedsam"), open_model("litemedsam", adapter="none")


def disk_image(size=200, center=(90, 110), radius=35):
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2
    rng = np.random.default_rng(1)
    image = np.where(disk, 170.0, 60.0) + rng.normal(0, 8, disk.shape)
    return image[None].astype(np.float32), disk


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


@requires_shared_data
def test_one_click_segments_held_out_lesions_only_with_the_adapter(models):
    """Cases from the adapter's own validation split (never trained on): first click at the lesion centre."""
    from MedSAMAdapterLib.data.nnunet import open_dataset, read_case
    from MedSAMAdapterLib.evaluation.clicks import first_click

    card = read_card(get_spec("litemedsam").default_adapter_path)
    held_out = next(d for d in card["data"]["datasets"] if d["name"] == "Dataset101_BUSI")["val_cases"][:4]
    dataset = open_dataset(SHARED_DATA / "Dataset101_BUSI")
    scores: dict[str, list[float]] = {"adapted": [], "base": []}
    for case in held_out:
        volume, labels = read_case(dataset, case)
        truth = labels[0] == 1
        click = SlicePrompts([first_click(truth)], [1])
        for name, model in zip(("adapted", "base"), models):
            session = InteractiveSession(volume, model)
            scores[name].append(dice_score(session.segment_slice(session.add_segment("x"), 0, 0, click).mask, truth))
    assert np.mean(scores["adapted"]) > 0.6, scores
    assert np.mean(scores["base"]) < 0.1, scores


def test_box_quality_is_kept(models):
    adapted, _ = models
    image, disk = disk_image()
    session = InteractiveSession(make_volume(image), adapted)
    result = session.segment_slice(session.add_segment("disk"), 0, 0, SlicePrompts(box_rc=(53, 73, 127, 147)))
    assert dice_score(result.mask, disk) > 0.9
