"""Atomic file writes: a reader (or a crash) never sees a half-written output file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` in one rename.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.seg.nrrd``) because writers such as
    SimpleITK choose the format from them. On any exception the temporary file is removed and the target is
    left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".partial{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    mode = 0o666 & ~_current_umask()  # mkstemp makes 0600; outputs should be readable like any file
    os.chmod(tmp, mode)
    try:
        yield tmp
        os.chmod(tmp, mode)  # again: writers that recreate the file (safetensors) bring back 0600
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def copy_file_atomic(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy ``source`` to ``target`` (contents and times) so that ``target`` appears complete or not at all."""
    import shutil

    with atomic_path(target) as tmp:
        shutil.copy2(source, tmp)
