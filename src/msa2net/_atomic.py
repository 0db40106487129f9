"""Atomic writes: a temporary file (or folder) beside the target, renamed over the target when complete.

A kill at any moment leaves either the previous file or folder or the new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _default_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open(path, "w")`` gives a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a hidden temporary path next to ``path`` and rename it onto ``path`` when the block succeeds.

    The temporary name keeps the full file name as its tail (``.tmp-<hex>-name.nii.gz``) so that writers choosing a
    format by suffix still work. On an exception the temporary file is removed and ``path`` is left untouched. The
    parent folder is created if needed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex[:12]}-{target.name}"
    try:
        yield tmp
        if tmp.is_file():  # some writers (safetensors) create 0600 files: give every output the usual mode
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike[str], *, overwrite: bool = False, what: str = "output folder", error: type = ValueError
) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``path`` and swap it into place when the block succeeds.

    An existing ``path`` is replaced only with ``overwrite`` (or when empty), and only once the new folder is
    complete; if the swap fails the previous folder is put back. On an exception nothing at ``path`` changes.

    Raises:
        error: ``path`` is a file, or a non-empty folder without ``overwrite`` (checked before the block runs).
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise error(f"{target} exists and is not a folder; choose another {what}")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise error(
            f"{what} {target} exists and is not empty; choose a new folder, or replace it (--overwrite on the "
            "command line, overwrite=True in Python)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".tmp-{uuid.uuid4().hex[:12]}-{target.name}"
    trash = target.parent / f".trash-{uuid.uuid4().hex[:12]}-{target.name}"
    staging.mkdir()
    try:
        yield staging
        if target.exists():
            os.replace(target, trash)
        try:
            os.replace(staging, target)
        except BaseException:
            if trash.exists():
                os.replace(trash, target)  # put the previous folder back
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(trash, ignore_errors=True)
