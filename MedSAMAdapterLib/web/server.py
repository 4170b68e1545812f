"""``medsam-adapter serve``: check the options, set up offscreen rendering, build the app, load volumes, listen.

Everything that can be refused (exposed bind without a token, bad data folder, unreadable volume) is refused
before the server starts, with an ``InputError`` the CLI turns into one line and exit code 2.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from .security import DataRoots, UploadLimit, check_bind, url_for

SAMPLE = Path(__file__).resolve().parents[2] / "Resources" / "Samples" / "brain_mr.nrrd"


@dataclass
class ServeOptions:
    volumes: Sequence[Path] = ()
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    data_dirs: Sequence[Path] = ()
    model: str = "litemedsam"
    adapter: str | None = None
    device: str = "auto"
    intensity: str = "auto"
    max_upload_mb: int = 1024
    torch_threads: int | None = None
    work_dir: Path | None = None
    extra: list[str] = field(default_factory=list)


def configure_offscreen() -> str:
    """Render without a display: EGL unless the user chose otherwise (OSMesa is the usual fallback)."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    return os.environ["VTK_DEFAULT_OPENGL_WINDOW"]


def check_rendering() -> None:
    """Render one frame offscreen, so a machine without EGL/OSMesa fails now with advice, not on first view."""
    import vtk

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.AddRenderer(vtk.vtkRenderer())
    window.SetSize(8, 8)
    try:
        window.Render()
    except Exception as error:  # noqa: BLE001 - VTK raises assorted errors here; all mean the same thing
        raise InputError(f"offscreen rendering with {window.GetClassName()} failed ({error}); install EGL "
                         f"(apt-get install libegl1) or OSMesa (libosmesa6 and set "
                         f"VTK_DEFAULT_OPENGL_WINDOW=vtkOSOpenGLRenderWindow)") from None
    finally:
        window.Finalize()


def default_torch_threads(cpu_count: int | None = None) -> int:
    """Half the cores: the same process renders and JPEG-encodes four views, and on a busy machine torch's
    spinning worker threads fighting for every core made a ~0.1 s click decode take over 1 s (measured on 2
    cores with another job running); the background embedder is the only part that loses a little."""
    return max(1, (cpu_count or os.cpu_count() or 2) // 2)


def serve(options: ServeOptions) -> int:
    check_bind(options.host, options.token)
    if not 0 <= options.port < 65536:
        raise InputError(f"--port must be 0..65535, got {options.port}")
    if options.max_upload_mb < 1:
        raise InputError("--max-upload-mb must be at least 1")
    roots = DataRoots(options.data_dirs)
    volumes = list(options.volumes) or [SAMPLE]
    for path in volumes:
        if not Path(path).exists():
            raise InputError(f"{path}: no such file or folder")
    if options.torch_threads is not None and options.torch_threads < 1:
        raise InputError("--torch-threads must be at least 1")
    configure_offscreen()
    check_rendering()
    import torch

    torch.set_num_threads(options.torch_threads or default_torch_threads())
    app = build_app(options, roots)
    for path in volumes:  # the last one is shown; a bad file stops here with its reason
        app.load_volume(path)
    return start(app, options)


def build_app(options: ServeOptions, roots: DataRoots):
    from ..scene import ModelSettings
    from .app import MedSamWebApp

    settings = ModelSettings(options.model, options.adapter, options.device, options.intensity)
    return MedSamWebApp(controller_settings=settings, data_roots=roots,
                        upload_limit=UploadLimit(options.max_upload_mb * 1024 * 1024),
                        work_dir=options.work_dir, token=options.token)


def start(app, options: ServeOptions) -> int:
    def announce(**_):
        port = app.server.port
        print(f"MedSAM Adapter viewer: {url_for(options.host, port, options.token)}", flush=True)

    app.server.controller.on_server_ready.add(announce)
    # trame parses sys.argv for its own options: hand it only what we decided
    sys.argv = [sys.argv[0], *options.extra]
    app.server.start(host=options.host, port=options.port, open_browser=False, show_connection_info=False,
                     timeout=0)
    return 0
