"""Fine-tuning from the page: export the current segmentation as a training case, run ``medsam-adapter
finetune`` in a background process, report its progress. No trame, no threads: the app polls ``progress()``.

Training runs in its own process (as the Slicer module does with QProcess) so it can use every core, be
cancelled, and never block or crash the viewer.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from ..scene import SceneController

RECIPES = ("decoder", "medsa", "lora", "autosam-vit", "autosam-cnn", "autosam-linear")


@dataclass
class FinetuneJob:
    """One background training run writing into ``run_dir``."""

    command: list[str]
    run_dir: Path
    log_path: Path
    process: Any = None

    def start(self) -> "FinetuneJob":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # the child imports this very package, wherever it was imported from (editable install or a checkout)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cancel(self) -> None:
        if self.running:
            self.process.terminate()

    def use_result(self, controller: SceneController) -> tuple[str, str]:
        """Put the run's result to use: a prompt-free model (finished run) is installed with the prompt-free
        models -> ('auto_model', name); a click adapter (best epoch so far) replaces the controller's ->
        ('adapter', path)."""
        from ..scene import ModelSettings

        progress = self.progress()
        if progress.get("auto_model"):
            if progress["state"] != "finished":
                raise InputError("the prompt-free model is still training: wait until the run finishes")
            return "auto_model", controller.install_auto_model(self.run_dir)
        if not progress.get("adapter"):
            raise InputError("no trained adapter yet: wait for the first finished epoch")
        settings = controller.settings
        controller.configure(ModelSettings(settings.name, progress["adapter"], settings.device, settings.intensity))
        return "adapter", progress["adapter"]

    def progress(self) -> dict:
        """{epoch, epochs, loss, best, curve, adapter} + state ('running' / 'finished' / 'failed') and a log tail."""
        out = SceneController.training_progress(self.run_dir)
        code = self.process.poll() if self.process is not None else None
        out["state"] = "running" if code is None else ("finished" if code == 0 else "failed")
        out["returncode"] = code
        out["log_tail"] = _tail(self.log_path)
        return out


def start_finetune(controller: SceneController, volume_node: Any, segmentation_node: Any, work_dir: Path,
                   recipe: str = "decoder", epochs: int = 5, extra_args: Sequence[str] = ()) -> FinetuneJob:
    """Add the volume + segments as a case of ``work_dir/Dataset950_Web`` and start training on that folder
    (every case added so far: label the next volume and train again to use them all)."""
    if recipe not in RECIPES:
        raise InputError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if volume_node is None or segmentation_node is None:
        raise InputError("load a volume and segment something first")
    dataset = controller.export_training_case(volume_node, segmentation_node, work_dir / "Dataset950_Web")
    runs = work_dir / "runs"
    previous = [p for p in runs.glob("run*") if p.is_dir()] if runs.is_dir() else []
    run_dir = runs / f"run{len(previous) + 1:03d}"
    start = controller.finetune_start_adapter(recipe, controller.settings.adapter)
    command = controller.finetune_command([dataset], run_dir, recipe, epochs, model=controller.settings.name,
                                          python=sys.executable, init_adapter=start) + list(extra_args)
    return FinetuneJob(command, run_dir, run_dir.parent / f"{run_dir.name}.log").start()


def png_data_url(path: str | os.PathLike | None) -> str:
    """A PNG as a data: URL the page can show without another route ('' when there is none yet)."""
    if not path or not Path(path).is_file():
        return ""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])
