"""HTTP side of the viewer (aiohttp, added to trame's web server): token gate, upload, download, JSON status.

The token gate covers every request, the page, its scripts and the websocket included: a request passes with
``?token=`` (then an HttpOnly cookie carries it for the page's own requests), ``Authorization: Bearer``, or
that cookie. MRML is touched only from these handlers and trame callbacks, all on the one asyncio loop.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import MedSAMAdapterError
from ..scene.volumes import matrix_to_numpy
from .security import request_token, safe_file_name, token_matches
from .session import SEGMENTATION_FORMATS

if TYPE_CHECKING:
    from .app import MedSamWebApp

COOKIE = "medsam_token"
CHUNK = 1 << 20


def bind_routes(aiohttp_app: web.Application, app: "MedSamWebApp") -> None:
    aiohttp_app.middlewares.append(_token_gate(app.token))
    aiohttp_app.add_routes([
        web.get("/api/status", partial(_status, app=app)),
        web.post("/api/upload", partial(_upload, app=app)),
        web.get("/api/download", partial(_download, app=app)),
    ])


def _token_gate(expected: str | None) -> Any:
    @web.middleware
    async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
        if not expected:
            return await handler(request)
        given = request_token(dict(request.query), dict(request.headers), dict(request.cookies), COOKIE)
        if not token_matches(given, expected):
            return web.Response(status=403, text="access token required: open the URL printed by "
                                                 "`medsam-adapter serve` (it ends with ?token=...)\n")
        response = await handler(request)
        if request.query.get("token") and not response.prepared:
            response.set_cookie(COOKIE, expected, httponly=True, samesite="Strict")
        return response

    return gate


def view_geometry(app: "MedSamWebApp") -> dict:
    """Each slice view's size and XYToRAS (how a page pixel maps to RAS), for tests and scripts."""
    views = {}
    for view in app.slicer.view_manager.get_slice_views():
        node = view.get_view_node()
        if node is None:
            continue
        views[node.GetLayoutName() or node.GetName()] = {
            "size": list(view.render_window().GetSize()),
            "xy_to_ras": matrix_to_numpy(node.GetXYToRAS()).tolist(),
            "orientation": node.GetOrientation(),
        }
    return views


async def _status(_request: web.Request, app: "MedSamWebApp") -> web.Response:
    try:
        status = app.session.status()
    except MedSAMAdapterError as error:
        status = {"error": str(error)}
    status["views"] = view_geometry(app)
    return web.json_response(status)


async def _upload(request: web.Request, app: "MedSamWebApp") -> web.Response:
    """Stream the body to ``work_dir/uploads`` (size-capped); the page then asks to load the saved file."""
    try:
        app.upload_limit.check(request.content_length)
        folder = app.work_dir / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / safe_file_name(request.query.get("name", ""))
        written = 0
        with open(target, "wb") as out:
            async for chunk in request.content.iter_chunked(CHUNK):
                written += len(chunk)
                app.upload_limit.check(written)
                out.write(chunk)
    except MedSAMAdapterError as error:
        if "target" in locals():
            Path(target).unlink(missing_ok=True)
        return web.Response(status=413, text=str(error))
    return web.json_response({"path": str(target), "bytes": written})


async def _download(request: web.Request, app: "MedSamWebApp") -> web.StreamResponse:
    fmt = request.query.get("format", "seg.nrrd")
    suffix = SEGMENTATION_FORMATS.get(fmt)
    if suffix is None:
        return web.Response(status=400, text=f"format must be one of {', '.join(SEGMENTATION_FORMATS)}")
    name = safe_file_name(app.session.status().get("volume") or "segmentation")
    folder = Path(tempfile.mkdtemp(prefix="medsam-dl-", dir=app.work_dir))
    try:
        path = app.session.save_segmentation(folder / f"{name}{suffix}")
    except MedSAMAdapterError as error:
        return web.Response(status=400, text=str(error))
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})

