"""Report and plots from a hand-made summary (the shape evaluate_dataset writes to summary.json)."""

import json

import pytest

from MedSAMAdapterLib.errors import InputError
from MedSAMAdapterLib.evaluation.report import load_summary, rebuild_report, render_markdown, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def case(name, dices, seconds=1.25, absent=()):
    levels = {}
    for level, per_label in dices.items():
        levels[level] = {lb: {"dice": d, "nsd": d, "hd95": None if d == 0 else 2.5} for lb, d in per_label.items()}
    return {
        "case": name,
        "metrics": levels,
        "mean_dice": {lv: sum(v.values()) / len(v) for lv, v in dices.items()},
        "seconds": {"total": seconds},
        "absent_labels": list(absent),
    }


def clicks_summary():
    cases = [
        case("p1", {"clicks_1": {"liver": 0.6, "spleen": 0.4}, "clicks_3": {"liver": 0.8, "spleen": 0.7},
                    "clicks_5": {"liver": 0.9, "spleen": 0.8}}),
        case("p2", {"clicks_1": {"liver": 0.5}, "clicks_3": {"liver": 0.7}, "clicks_5": {"liver": 0.8}},
             absent=("spleen",)),
    ]
    return {
        "protocol": "clicks", "levels": ["clicks_1", "clicks_3", "clicks_5"], "model": "litemedsam", "adapter": None,
        "complete": True, "n_cases": 2, "nsd_tolerance_mm": 2.0, "date": "2026-01-01T00:00:00+00:00",
        "dataset": {"name": "Dataset999_Toy", "root": "/data/toy", "dimensionality": "2D",
                    "labels": {"liver": 1, "spleen": 2}},
        "cases": cases,
        "per_label": {
            "clicks_1": {"liver": {"dice": 0.55, "nsd": 0.55, "hd95": 2.5, "n": 2},
                         "spleen": {"dice": 0.4, "nsd": 0.4, "hd95": 2.5, "n": 1}},
            "clicks_3": {"liver": {"dice": 0.75, "nsd": 0.75, "hd95": 2.5, "n": 2},
                         "spleen": {"dice": 0.7, "nsd": 0.7, "hd95": 2.5, "n": 1}},
            "clicks_5": {"liver": {"dice": 0.85, "nsd": 0.85, "hd95": 2.5, "n": 2},
                         "spleen": {"dice": 0.8, "nsd": 0.8, "hd95": None, "n": 1}},
        },
        "overall": {"clicks_1": {"dice": 0.475, "nsd": 0.475, "hd95": 2.5},
                    "clicks_3": {"dice": 0.725, "nsd": 0.725, "hd95": 2.5},
                    "clicks_5": {"dice": 0.825, "nsd": 0.825, "hd95": None}},
        "composed_overall": {"clicks_5": {"dice": 0.8125, "nsd": 0.8, "hd95": 3.0}},
        "dice_vs_clicks": {"liver": [0.55, 0.65, 0.75, 0.8, 0.85], "spleen": [0.4, 0.6, 0.7, 0.75, 0.8]},
        "overall_dice_vs_clicks": [0.475, 0.625, 0.725, 0.775, 0.825],
        "timing": {"total_seconds": 2.5, "mean_case_seconds": 1.25},
        "examples": [{"rank": "best", "case": "p1", "mean_dice": 0.85, "slice_index": 0,
                      "files": {"prediction": "examples/best_p1_prediction.png"}}],
        "notes": ["Overall = mean over labels of the per-label means (macro average)."],
        "warnings": ["overlay of p2 failed: OSError: disk full"],
        "versions": {"torch": "2.13.0"},
    }


def test_report_and_plots_written(tmp_path):
    report = write_report(clicks_summary(), tmp_path)
    assert report == tmp_path / "report.md"
    for plot in ("dice_per_label.png", "dice_vs_clicks.png"):
        assert (tmp_path / plot).read_bytes()[:8] == PNG_MAGIC
    text = report.read_text()
    for expected in ("Dataset999_Toy", "litemedsam", "## Results: 1 click", "## Results: 5 clicks",
                     "| liver | 2 | 0.550 |", "| spleen | 1 | 0.800 |", "0.825", "Composed label map", "Dice 0.812",
                     "n/a",
                     "| **overall** | 0.475 | 0.625 | 0.725 | 0.775 | 0.825 |", "![Dice vs clicks](dice_vs_clicks.png)",
                     "examples/best_p1_prediction.png", "| p2 | 0.500 | 0.700 | 0.800 | 1.25 | spleen |",
                     "disk full", "macro average"):
        assert expected in text, expected
    assert not list(tmp_path.glob(".*partial*"))  # atomic writes leave no temporaries
    named = write_report({**clicks_summary(), "text_prompts": ["liver"]}, tmp_path / "named").read_text()
    assert "| text prompts | liver |" in named
    zoomed = write_report({**clicks_summary(), "focus": {"margin": 0.4, "min_zoom": 1.5, "max_zoom": 4.0}},
                          tmp_path / "zoomed").read_text()
    assert "| zoom on small objects | margin 0.4, min_zoom 1.5, max_zoom 4 |" in zoomed
    assert "| zoom on small objects | off |" in write_report({**clicks_summary(), "focus": None},
                                                             tmp_path / "flat").read_text()


def test_box_summary_has_no_click_plot_and_flags_incomplete_runs(tmp_path):
    summary = clicks_summary()
    summary.update(protocol="box", levels=["box"], complete=False, dice_vs_clicks=None, overall_dice_vs_clicks=None)
    summary["cases"] = [case("p1", {"box": {"liver": 0.9, "spleen": 0.0}})]
    summary["per_label"] = {"box": {"liver": {"dice": 0.9, "nsd": 0.9, "hd95": 2.5, "n": 1},
                                    "spleen": {"dice": 0.0, "nsd": 0.0, "hd95": None, "n": 1}}}
    summary["overall"] = {"box": {"dice": 0.45, "nsd": 0.45, "hd95": 2.5}}
    write_report(summary, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Incomplete run" in text and "| liver | 1 | 0.900 |" in text and "0.450" in text
    assert "zoom on small objects" not in text  # a summary from before zoom existed says nothing about it
    summary["focus"] = {"margin": 0.5, "box_min_zoom": 2.5, "max_spill": 0.1}  # boxes zoom too
    text = write_report(summary, tmp_path / "zoomed").read_text()
    assert "| zoom on small objects | margin 0.5, box_min_zoom 2.5, max_spill 0.1 |" in text
    assert (tmp_path / "dice_per_label.png").exists() and not (tmp_path / "dice_vs_clicks.png").exists()


def test_rebuild_from_summary_json(tmp_path):
    path = tmp_path / "run" / "summary.json"
    path.parent.mkdir()
    path.write_text(json.dumps(clicks_summary()))
    report = rebuild_report(path)
    assert report.parent == path.parent and "0.725" in report.read_text()
    other = rebuild_report(path, tmp_path / "elsewhere")
    assert other == tmp_path / "elsewhere" / "report.md"


def test_load_summary_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_summary(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_summary(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(InputError, match="not an evaluation summary"):
        load_summary(tmp_path / "other.json")


def test_markdown_without_cases():
    summary = clicks_summary()
    summary.update(cases=[], per_label={}, overall={}, dice_vs_clicks={}, examples=[])
    assert "Dataset999_Toy" in render_markdown(summary)
