"""Fine-tuning from the page: the background job's progress, and what start_finetune exports and runs."""

from __future__ import annotations

import sys
import time

import pytest

pytest.importorskip("slicer", reason="slicer-core (MRML without Qt) is not installed: pip install .[scene]")

from MedSAMAdapterLib.errors import InputError  # noqa: E402
from MedSAMAdapterLib.scene.controller import SceneController  # noqa: E402
from MedSAMAdapterLib.web import finetune  # noqa: E402
from MedSAMAdapterLib.web.finetune import FinetuneJob, png_data_url  # noqa: E402

FAKE_TRAINING = """
import json, pathlib, sys, time
run = pathlib.Path(sys.argv[1])
(run / "history.json").write_text(json.dumps({"config": {"epochs": 2}, "history": [{"epoch": 1, "loss": 0.5}]}))
(run / "training_curve.png").write_bytes(b"\\x89PNG fake")
print("epoch 1 done")
sys.exit(int(sys.argv[2]))
"""


@pytest.mark.parametrize("code,state", [(0, "finished"), (3, "failed")])
def test_job_reports_epochs_curve_state_and_log(tmp_path, code, state):
    run = tmp_path / "run001"
    job = FinetuneJob([sys.executable, "-c", FAKE_TRAINING, str(run), str(code)], run, tmp_path / "run001.log").start()
    deadline = time.monotonic() + 60
    while job.running and time.monotonic() < deadline:
        time.sleep(0.1)
    progress = job.progress()
    assert progress["state"] == state and progress["returncode"] == code
    assert (progress["epoch"], progress["epochs"], progress["loss"]) == (1, 2, 0.5)
    assert "epoch 1 done" in progress["log_tail"]
    assert png_data_url(progress["curve"]).startswith("data:image/png;base64,")
    assert png_data_url(None) == "" and png_data_url(tmp_path / "missing.png") == ""


def test_start_exports_the_case_and_runs_the_finetune_cli(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(FinetuneJob, "start", lambda self: started.append(self) or self)

    class Controller:
        settings = type("S", (), {"name": "litemedsam", "adapter": None})()
        export_training_case = staticmethod(lambda volume, seg, root: root.mkdir(parents=True) or root)
        finetune_command = staticmethod(SceneController.finetune_command)
        finetune_start_adapter = staticmethod(SceneController.finetune_start_adapter)

    job = finetune.start_finetune(Controller(), "volume", "seg", tmp_path, "decoder", 3)
    assert started == [job] and job.run_dir == tmp_path / "runs" / "run001"
    assert job.command[1:4] == ["-m", "MedSAMAdapterLib.cli", "finetune"]
    assert str(tmp_path / "Dataset950_Web") in job.command and "--epochs" in job.command
    assert job.command[job.command.index("--recipe") + 1] == "decoder"
    assert job.command[job.command.index("--init-adapter") + 1] == "default"  # clicks keep working
    with pytest.raises(InputError, match="recipe"):
        finetune.start_finetune(Controller(), "volume", "seg", tmp_path, "nope", 3)
    with pytest.raises(InputError, match="load a volume"):
        finetune.start_finetune(Controller(), None, None, tmp_path)


def test_use_result_installs_a_prompt_free_model_or_switches_the_adapter(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_ADAPTER_HOME", str(tmp_path / "home"))
    run = tmp_path / "runs" / "run001"
    run.mkdir(parents=True)
    (run / "history.json").write_text('{"config": {"epochs": 2}, "history": [{"epoch": 1, "loss": 0.5}]}')
    configured = []

    class Controller:
        settings = type("S", (), {"name": "litemedsam", "adapter": None, "device": "cpu", "intensity": "auto"})()
        configure = staticmethod(configured.append)
        install_auto_model = staticmethod(lambda run_dir: f"installed:{run_dir.name}")

    def job(returncode):
        process = type("P", (), {"poll": lambda self: returncode})()
        return FinetuneJob(["x"], run, tmp_path / "run001.log", process)

    with pytest.raises(InputError, match="no trained adapter"):
        job(None).use_result(Controller())
    (run / "best_adapter.safetensors").write_bytes(b"adapter")
    assert job(None).use_result(Controller()) == ("adapter", str(run / "best_adapter.safetensors"))
    assert configured[-1].adapter == str(run / "best_adapter.safetensors")
    (run / "best_adapter.safetensors").unlink()
    (run / "auto_model.json").write_text("{}")
    with pytest.raises(InputError, match="still training"):
        job(None).use_result(Controller())
    assert job(0).use_result(Controller()) == ("auto_model", "installed:run001")
