"""Driving ``medsam-adapter serve`` from headless chromium (Playwright): shared by the browser test and
``benchmarks/browser_latency.py``. No test functions here.

The server runs as a subprocess on a free port with a token; the page is opened with ``?token=``. To click "on
the lesion" the helper asks ``/api/status`` for each slice view's XYToRAS and size, maps a RAS point to a view
pixel and that to page coordinates (``web.interaction``), so the test does not depend on the layout or zoom.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("MEDSAM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SAMPLE = REPO / "Resources" / "Samples" / "brain_mr.nrrd"
#: the enhancing lesion of the bundled brain MR (voxel i, j, k), from the demo's 3D box 162,84,11 - 208,153,17
LESION_CLICK_IJK = (185.0, 118.0, 12.0)
LESION_BOX_IJK = ((162.0, 84.0, 11.0), (208.0, 153.0, 17.0))


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import playwright  # noqa: F401
        import trame_slicer  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed (pip install 'medsam-adapter[web]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install chromium, or set MEDSAM_CHROMIUM)"
    return None


class ViewerServer:
    """A ``medsam-adapter serve`` subprocess; ``url`` is the address it printed (with the token)."""

    def __init__(self, volumes: Sequence[Path], work_dir: Path, token: str = "browser-test-token",
                 extra: Sequence[str] = (), timeout_s: float = 180.0) -> None:
        self.token = token
        self.work_dir = work_dir
        command = [sys.executable, "-m", "MedSAMAdapterLib.cli", "serve", *map(str, volumes), "--port", "0",
                   "--token", token, "--work-dir", str(work_dir), *extra]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.log_path = work_dir / "server.log"
        work_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        stdin=subprocess.DEVNULL)
        self.url = self._wait_for_url(timeout_s)
        self.base = self.url.split("?")[0].rstrip("/")

    def _wait_for_url(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            found = re.search(r"MedSAM Adapter viewer: (\S+)", text)
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{text[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"server did not start in {timeout_s:.0f} s:\n{self.log_path.read_text()[-3000:]}")

    def get(self, path: str, token: str | None = "use") -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path)
        if token == "use":
            token = self.token
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def status(self) -> dict:
        code, body = self.get("/api/status")
        if code != 200:
            raise RuntimeError(f"/api/status answered {code}: {body[:200]!r}")
        return json.loads(body)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


@contextmanager
def viewer(volumes: Sequence[Path], work_dir: Path, **options: Any) -> Iterator[ViewerServer]:
    server = ViewerServer(volumes, work_dir, **options)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def chromium_page(width: int = 1400, height: int = 900) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        finally:
            browser.close()


def wait_until(predicate: Callable[[], Any], timeout_s: float = 30.0, step_s: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what or predicate}")


def open_viewer(page: Any, server: ViewerServer) -> dict:
    """Load the page and wait until every slice view has its browser size and the volume is fitted."""
    page.goto(server.url)
    page.wait_for_selector(".medsam-view-Red", state="attached", timeout=60_000)

    def sized() -> dict | None:
        status = server.status()
        boxes = {name: element_box(page, name) for name in status["views"]}
        ok = all(abs(v["size"][0] - boxes[n][2]) <= 2 and abs(v["size"][1] - boxes[n][3]) <= 2
                 for n, v in status["views"].items())
        return status if ok else None

    wait_until(sized, 60, 0.25, "views sized to the page")
    time.sleep(1.0)  # the app refits the volume once sized
    return server.status()


def element_box(page: Any, view: str) -> list[float]:
    return page.evaluate(
        "(name) => { const r = document.querySelector('.medsam-view-' + name).parentElement"
        ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }", view)


def ijk_to_ras(ijk: Sequence[float], volume_file: Path = SAMPLE) -> np.ndarray:
    from MedSAMAdapterLib.engine.volume import read_volume

    matrix = read_volume(volume_file).geometry.ijk_to_ras_matrix()
    return (matrix @ np.r_[np.asarray(ijk, float), 1.0])[:3]


def page_point(page: Any, server: ViewerServer, view: str, ras: Sequence[float]) -> tuple[float, float]:
    """Page coordinates (CSS px) where ``view`` shows the world point ``ras`` (projected on its slice)."""
    from MedSAMAdapterLib.web.interaction import display_to_page, ras_to_xy

    info = server.status()["views"][view]
    return display_to_page(ras_to_xy(info["xy_to_ras"], ras), info["size"], element_box(page, view))


def view_pixels(page: Any, view: str) -> np.ndarray:
    """The view as the page shows it, RGB uint8."""
    from PIL import Image

    x, y, w, h = element_box(page, view)
    png = page.screenshot(clip={"x": x, "y": y, "width": w, "height": h})
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def changed_fraction(before: np.ndarray, after: np.ndarray, threshold: int = 30) -> float:
    """Share of pixels whose colour moved by more than ``threshold`` (any channel)."""
    return float((np.abs(before.astype(int) - after.astype(int)).max(axis=-1) > threshold).mean())


def total_voxels(status: dict) -> int:
    return sum(int(s["voxels"]) for s in status["segments"])

