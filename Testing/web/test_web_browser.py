"""The viewer in headless chromium: a click in the axial view and a box on the sagittal view make segments
with voxels in the MRML scene (read back through /api/status) and change what the page shows; undo takes the
box back. Real LiteMedSAM weights with the shipped click adapter, on the bundled brain MR."""

from __future__ import annotations

import time

import pytest

from Testing.browser import (LESION_BOX_IJK, LESION_CLICK_IJK, SAMPLE, browser_unavailable, changed_fraction,
                             chromium_page, ijk_to_ras, open_viewer, page_point, total_voxels, view_pixels,
                             viewer, wait_until)
from Testing.conftest import requires_litemedsam

pytestmark = [pytest.mark.browser, pytest.mark.integration, requires_litemedsam,
              pytest.mark.skipif(browser_unavailable() is not None, reason=str(browser_unavailable()))]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with viewer([SAMPLE], tmp_path_factory.mktemp("viewer")) as running:
        yield running


def test_page_and_api_need_the_token(server):
    assert server.get("/", token=None)[0] == 403
    assert server.get("/api/status", token="wrong-token-value")[0] == 403
    code, body = server.get("/")
    assert code == 200 and b"<html" in body.lower()


def test_click_box_and_undo_in_the_browser(server):
    with chromium_page() as page:
        status = open_viewer(page, server)
        assert status["volume"] == "brain_mr" and status["segments"] == []

        # positive click on the lesion in the axial (Red) view
        before = view_pixels(page, "Red")
        page.mouse.click(*page_point(page, server, "Red", ijk_to_ras(LESION_CLICK_IJK)))
        status = wait_until(lambda: (s := server.status())["segments"] and total_voxels(s) > 0 and s, 60,
                            what="a segment with voxels after the click")
        assert status["last"]["error"] == "" and "click" in status["last"]["message"]
        first = status["segments"][0]
        assert wait_until(lambda: changed_fraction(before, view_pixels(page, "Red")) > 0.001, 20,
                          what="the axial view to show the mask")

        # box dragged on the sagittal (Yellow) view, which the click moved through the lesion, into a new segment
        page.click("#medsam-add")
        wait_until(lambda: len(server.status()["segments"]) == 2, 20, what="a second segment")
        before = view_pixels(page, "Yellow")
        i = LESION_CLICK_IJK[0]
        corners = [page_point(page, server, "Yellow", ijk_to_ras((i, j, k))) for (_, j, k) in LESION_BOX_IJK]
        page.mouse.move(*corners[0])
        page.mouse.down()
        for step in range(1, 6):
            page.mouse.move(*(a + (b - a) * step / 5 for a, b in zip(corners[0], corners[1])))
        page.mouse.up()
        status = wait_until(lambda: (s := server.status())["segments"][1]["voxels"] > 0 and s, 60,
                            what="the box segment to get voxels")
        assert "box" in status["last"]["message"], status["last"]
        assert status["segments"][0]["voxels"] == first["voxels"]  # keep_others: the click segment is untouched
        assert wait_until(lambda: changed_fraction(before, view_pixels(page, "Yellow")) > 0.001, 20,
                          what="the sagittal view to show the box result")

        # undo (button) removes the box result again
        page.click("#medsam-undo")
        status = wait_until(lambda: (s := server.status())["segments"][1]["voxels"] == 0 and s, 30,
                            what="undo to empty the box segment")
        assert status["segments"][0]["voxels"] == first["voxels"] and status["can_redo"]
        # the prompting switches reach the server (zoom on small objects is on by default)
        assert status["prompting"] == {"names_as_text": True, "zoom": True}
        page.click("#medsam-zoom-small-objects")
        wait_until(lambda: server.status()["prompting"]["zoom"] is False, 20, what="the zoom switch to turn off")
        time.sleep(0.5)
        assert page.locator("#medsam-error").count() == 0


def test_upload_limits_unreadable_files_and_download(server, tmp_path):
    code, body = server.get("/api/download?format=seg.nrrd")
    assert code in (200, 400)  # 400 when no segment exists yet: the reason is in the body
    assert server.get("/api/download?format=exe")[0] == 400
    big = tmp_path / "big.nrrd"
    big.write_bytes(b"\0" * (2 * 1024 * 1024))
    with chromium_page() as page:
        open_viewer(page, server)
        page.click("text=Files")
        garbage = tmp_path / "garbage.nii.gz"
        garbage.write_bytes(b"this is not an image")
        page.set_input_files("#medsam-upload", str(garbage))
        page.wait_for_selector("#medsam-error", timeout=30_000)
        assert "garbage.nii.gz" in page.inner_text("#medsam-error")
        assert server.status()["volume"] == "brain_mr"  # still serving the previous volume
        page.evaluate("window.medsamUploadLimit = 1024 * 1024")  # the server's own cap is checked below
        page.set_input_files("#medsam-upload", str(big))
        page.wait_for_function("document.querySelector('#medsam-error').innerText.includes('too large')",
                               timeout=30_000)
        page.evaluate("window.medsamUploadLimit = 0")
        page.set_input_files("#medsam-upload", str(SAMPLE.with_name("breast_us.png")))
        status = wait_until(lambda: (s := server.status())["volume"] == "breast_us" and s, 60,
                            what="the uploaded picture to become the volume")
        assert status["shape"] == [1, 471, 562] and status["segments"] == []
