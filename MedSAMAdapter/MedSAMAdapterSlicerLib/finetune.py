"""Fine-tuning in a background process (``medsam-adapter finetune``), followed through its run folder.

The trainer writes ``history.json`` and ``training_curve.png`` after each epoch; the module polls them with a
QTimer (``progress()``), so nothing depends on the wording of the process's console output and Slicer never
blocks. ``cancel()`` kills the process; the run can be resumed later with ``--resume``.
"""

import logging
import os

import qt

from MedSAMAdapterLib.scene.controller import SceneController


class FinetuneProcess:
    def __init__(self, command: list, runDir, environment: dict) -> None:
        self.command = [str(c) for c in command]
        self.runDir = str(runDir)
        self.environment = environment
        self.process = None
        self._log = []
        self._installed = None

    def start(self) -> None:
        os.makedirs(self.runDir, exist_ok=True)
        self.process = qt.QProcess()
        self.process.setProcessChannelMode(qt.QProcess.MergedChannels)
        env = qt.QProcessEnvironment()
        for key, value in self.environment.items():
            env.insert(key, value)
        self.process.setProcessEnvironment(env)
        self.process.connect("readyRead()", self._read)
        logging.info("MedSAMAdapter fine-tuning: %s", " ".join(self.command))
        self.process.start(self.command[0], self.command[1:])

    def _read(self) -> None:
        text = bytes(self.process.readAll().data()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip():
                self._log.append(line)
                logging.info("finetune: %s", line)
        del self._log[:-200]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.state() != qt.QProcess.NotRunning

    def cancel(self) -> None:
        if self.running:
            self.process.kill()
            self.process.waitForFinished(3000)

    def progress(self) -> dict:
        return SceneController.training_progress(self.runDir)

    def finishedAutoModel(self):
        """Name of the prompt-free model an autosam-* run trained, copied once into the user model folder after
        the process ended well (so the Automatic section lists it); None for adapter runs and before that."""
        if (self._installed is None and self.process is not None and not self.running
                and self.process.exitCode() == 0 and self.progress()["auto_model"]):
            self._installed = SceneController.install_auto_model(self.runDir)
        return self._installed

    def statusText(self) -> str:
        if self.running:
            return self._log[-1] if self._log else "starting..."
        if self.process is None:
            return ""
        code = self.process.exitCode()
        auto = self.finishedAutoModel()
        if auto:
            return f"done: prompt-free model '{auto}' added (Automatic segmentation)"
        adapter = self.progress()["adapter"]
        if code == 0 and adapter:
            return f"done: {adapter} (choose it as the adapter above)"
        return f"stopped (exit code {code}): {self._log[-1] if self._log else ''}"
