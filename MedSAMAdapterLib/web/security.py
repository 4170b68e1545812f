"""What the web viewer lets in: which addresses it may bind, who may use it, which files it may touch.

Pure functions and small classes (no trame, no MRML), unit-tested without a browser:

* ``check_bind``: loopback by default; any other address needs a token, because the viewer reads and writes
  files on the server and runs models on it.
* ``token_matches``: constant-time comparison, so response timing does not leak the token.
* ``DataRoots``: server-side paths are accepted only inside the ``--data-dir`` folders, after resolving
  ``..`` and symlinks (a link inside a data folder that points outside it is refused).
* ``safe_file_name`` / ``UploadLimit``: uploaded files get a harmless name and a size cap.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import InputError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
DEFAULT_UPLOAD_LIMIT_MB = 1024


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, 'localhost')."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything: treat it as exposed


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token (InputError -> CLI exit code 2)."""
    if not host or not host.strip():
        raise InputError("--host must not be empty (use 127.0.0.1 for this machine only)")
    if not is_loopback(host) and not token:
        raise InputError(
            f"--host {host} makes the viewer reachable from other machines; it can read and write files and run "
            f"models there, so give an access token too: --token $(python -c 'import secrets; "
            f"print(secrets.token_urlsafe(24))'), then open the printed URL (it carries ?token=...)")
    if token is not None and len(token) < 8:
        raise InputError("--token must be at least 8 characters long")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_matches(given: str | None, expected: str | None) -> bool:
    """Whether a request may pass: always when no token is configured, else a constant-time match."""
    if not expected:
        return True
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def request_token(query: dict, headers: dict, cookies: dict, cookie_name: str) -> str | None:
    """The token a request carries: ``?token=``, ``Authorization: Bearer ...``, or the session cookie."""
    if query.get("token"):
        return str(query["token"])
    auth = headers.get("Authorization") or headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return cookies.get(cookie_name)


# ---- server-side files ----------------------------------------------------------------------------------------
class DataRoots:
    """The folders (``--data-dir``) inside which the page may read and write server files."""

    def __init__(self, folders: Iterable[str | os.PathLike]) -> None:
        roots = []
        for folder in folders:
            path = Path(folder).expanduser()
            if not path.is_dir():
                raise InputError(f"--data-dir {path}: not a folder")
            roots.append(path.resolve())
        self.roots: tuple[Path, ...] = tuple(roots)

    def __bool__(self) -> bool:
        return bool(self.roots)

    def resolve(self, user_path: str, *, must_exist: bool = True) -> Path:
        """The real path of ``user_path`` if it lies inside a data folder; InputError otherwise.

        Relative paths are taken inside the first data folder. Symlinks are followed before the check, so a
        link that points outside every data folder is refused even though its own name is inside one.
        """
        if not self.roots:
            raise InputError("server files are disabled: start the viewer with --data-dir FOLDER to allow them")
        text = (user_path or "").strip()
        if not text or "\x00" in text:
            raise InputError("give a file path inside a data folder")
        candidate = Path(text).expanduser()
        if not candidate.is_absolute():
            candidate = self.roots[0] / candidate
        real = candidate.resolve(strict=False)
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            raise InputError(f"{user_path}: outside the data folders ({', '.join(map(str, self.roots))})")
        if must_exist and not real.exists():
            raise InputError(f"{user_path}: no such file in the data folders")
        return real

    def listing(self, limit: int = 500) -> list[str]:
        """Readable image files under the data folders (for the page's picker), at most ``limit``."""
        found: list[str] = []
        for root in self.roots:
            for path in sorted(root.rglob("*")):
                if len(found) >= limit:
                    return found
                if _looks_like_image(path.name) and path.is_file() and self._inside(path):
                    found.append(str(path))
        return found

    def _inside(self, path: Path) -> bool:
        real = path.resolve()
        return any(real.is_relative_to(root) for root in self.roots)


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".bmp",
                  ".tif", ".tiff", ".dcm")


def _looks_like_image(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(IMAGE_SUFFIXES) and not lower.endswith(".seg.nrrd")


# ---- uploads --------------------------------------------------------------------------------------------------
def safe_file_name(name: str, default: str = "upload") -> str:
    """A browser-supplied file name reduced to one harmless path component (keeps multi-part suffixes)."""
    base = re.split(r"[\\/]", name or "")[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return cleaned[:120] or default


@dataclass(frozen=True)
class UploadLimit:
    """Largest upload accepted, in bytes; checked on the announced length and again while streaming."""

    max_bytes: int = DEFAULT_UPLOAD_LIMIT_MB * 1024 * 1024

    def check(self, size: int | None) -> None:
        if size is not None and size > self.max_bytes:
            raise InputError(f"file too large: {size / 1e6:.1f} MB, the limit is {self.max_bytes / 1e6:.0f} MB "
                             f"(start the viewer with a larger --max-upload-mb, or use a server path)")


def url_for(host: str, port: int, token: str | None, path: str = "/") -> str:
    """The address to open (IPv6 literals bracketed; ``0.0.0.0`` shown as the loopback address)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    query = f"?token={token}" if token else ""
    return f"http://{shown}:{port}{path}{query}"

