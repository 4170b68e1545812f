"""HTTP side of the viewer against a stand-in app: token gate (query, cookie, bearer), upload cap, download."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("slicer", reason="slicer-core not installed")
pytest.importorskip("aiohttp", reason="aiohttp (trame's web server) not installed")

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from MedSAMAdapterLib.errors import InputError  # noqa: E402
from MedSAMAdapterLib.web.routes import COOKIE, bind_routes  # noqa: E402
from MedSAMAdapterLib.web.security import UploadLimit  # noqa: E402

TOKEN = "route-test-token"


class FakeSession:
    def __init__(self):
        self.saved: list[Path] = []

    def status(self):
        return {"volume": "ct scan", "segments": []}

    def save_segmentation(self, path):
        if path.name.endswith(".nii.gz"):
            raise InputError("nothing to save: the segmentation has no segments yet")
        path.write_bytes(b"NRRD0004")
        self.saved.append(path)
        return path


def fake_app(tmp_path, token=TOKEN, limit=1000):
    views = SimpleNamespace(get_slice_views=lambda: [])
    return SimpleNamespace(token=token, upload_limit=UploadLimit(limit), work_dir=tmp_path, session=FakeSession(),
                           slicer=SimpleNamespace(view_manager=views))


def run(tmp_path, scenario, **options):
    async def main():
        app = web.Application()
        app.router.add_get("/", _page)
        bind_routes(app, fake_app(tmp_path, **options))
        async with TestClient(TestServer(app)) as client:
            await scenario(client)

    asyncio.run(main())


async def _page(_request):
    return web.Response(text="<html>page</html>", content_type="text/html")


def test_every_route_needs_the_token_and_the_page_sets_a_cookie(tmp_path):
    async def scenario(client):
        for path in ("/", "/api/status", "/api/download"):
            assert (await client.get(path)).status == 403
        assert (await client.get("/?token=wrong-token-x")).status == 403
        response = await client.get(f"/?token={TOKEN}")
        assert response.status == 200 and COOKIE in response.cookies
        assert response.cookies[COOKIE]["httponly"]
        assert (await client.get("/api/status")).status == 200  # the cookie now carries the token
        client.session.cookie_jar.clear()
        assert (await client.get("/api/status")).status == 403
        ok = await client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status == 200 and (await ok.json())["views"] == {}

    run(tmp_path, scenario)


def test_no_token_configured_means_open_on_loopback(tmp_path):
    async def scenario(client):
        assert (await client.get("/api/status")).status == 200

    run(tmp_path, scenario, token=None)


def test_uploads_are_capped_named_safely_and_kept_in_the_work_dir(tmp_path):
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def chunks(size):
        for _ in range(size // 100):
            yield b"x" * 100

    async def scenario(client):
        response = await client.post("/api/upload?name=../../evil.nii.gz", data=b"y" * 500, headers=auth)
        assert response.status == 200
        saved = Path((await response.json())["path"])
        assert saved == tmp_path / "uploads" / "evil.nii.gz" and saved.read_bytes() == b"y" * 500
        too_big = await client.post("/api/upload?name=a.nrrd", data=b"z" * 1001, headers=auth)
        assert too_big.status == 413 and "too large" in await too_big.text()
        streamed = await client.post("/api/upload?name=b.nrrd", data=chunks(3000), headers=auth)  # no length
        assert streamed.status == 413 and not (tmp_path / "uploads" / "b.nrrd").exists()

    run(tmp_path, scenario)


def test_download_formats(tmp_path):
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def scenario(client):
        response = await client.get("/api/download?format=seg.nrrd", headers=auth)
        assert response.status == 200 and await response.read() == b"NRRD0004"
        assert 'filename="ct_scan.seg.nrrd"' in response.headers["Content-Disposition"]
        empty = await client.get("/api/download?format=nii.gz", headers=auth)
        assert empty.status == 400 and "no segments" in await empty.text()
        assert (await client.get("/api/download?format=exe", headers=auth)).status == 400

    run(tmp_path, scenario)
