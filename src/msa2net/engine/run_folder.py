"""A training run's folder: one writer at a time, never silently reused, no stale temporary files.

``train`` holds :class:`RunFolderLock` (an advisory ``flock`` on ``<run>/.lock``) for its whole life, so a second
``train`` into the same folder is refused at once with a message naming the holder. :func:`prepare_run_folder`
refuses a folder that already holds files unless the run resumes or ``overwrite`` is given, and removes the
temporary files that interrupted atomic writes (``.tmp-*``, see :mod:`msa2net._atomic`) left behind.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import IO

__all__ = ["RUN_OUTPUTS", "RunFolderBusy", "RunFolderLock", "prepare_run_folder", "remove_run_outputs"]

#: What a training run writes into its folder (``--overwrite`` removes exactly these).
RUN_OUTPUTS: tuple[str, ...] = ("config.yaml", "last.pt", "best.pt", "metrics.csv", "curves.png", "tensorboard")
_LOCK_NAME = ".lock"


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


class RunFolderLock:
    """Exclusive advisory lock on a run folder, held from :meth:`acquire` to :meth:`release` (or a context).

    The lock file records its holder (process id, host, start time, command line) so a refused writer can say who
    holds the folder. The operating system releases the lock when the holder dies, even by SIGKILL, so a killed run
    never leaves the folder locked.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunFolderBusy` naming the folder and the holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / _LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            _lock(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderBusy(
                f"run folder {self.folder} is in use by {holder}; wait for that run to finish (or stop it), or train "
                "into another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started} ({' '.join(sys.argv)})\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Release the lock (the lock file stays; it is empty of meaning without the lock)."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.truncate(0)
            self._handle.close()  # closing releases the flock
            self._handle = None

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(handle: IO[str]) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def prepare_run_folder(folder: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> list[str]:
    """Make ``folder`` ready for a run; call it while holding :class:`RunFolderLock`.

    Removes stale ``.tmp-*`` files of interrupted atomic writes (nobody else can be writing: the caller holds the
    lock). A folder that holds other entries is refused unless ``resume`` (the run continues there) or ``overwrite``
    (the previous run's outputs, :data:`RUN_OUTPUTS`, are removed; other files are kept).

    Returns:
        Names of what was removed.

    Raises:
        FileExistsError: the folder holds files and neither ``resume`` nor ``overwrite`` is set.
    """
    folder = Path(folder)
    removed = []
    for tmp in sorted(folder.glob(".tmp-*")):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    entries = sorted(p.name for p in folder.iterdir() if p.name != _LOCK_NAME)
    if not entries or resume:
        return removed
    if not overwrite:
        shown = ", ".join(entries[:6]) + (" ..." if len(entries) > 6 else "")
        last = folder / "last.pt"
        how = f"continue that run with --resume {last}" if last.is_file() else "(no last.pt to resume from)"
        raise FileExistsError(
            f"run folder {folder} already holds {shown}; {how}, replace it with --overwrite, or train into another "
            "--out"
        )
    return removed + remove_run_outputs(folder)


def remove_run_outputs(folder: str | os.PathLike[str]) -> list[str]:
    """Remove a run's own outputs (:data:`RUN_OUTPUTS`) from ``folder``, nothing else; returns the names removed."""
    removed = [name for name in RUN_OUTPUTS if (Path(folder) / name).exists()]
    for path in (Path(folder) / name for name in removed):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed
