"""Progress bars that a log file can switch off."""

from __future__ import annotations

import os


def progress_enabled(requested: bool) -> bool:
    """Whether to draw a progress bar: ``requested``, unless ``TQDM_DISABLE`` is set to a true value.

    tqdm reads ``TQDM_DISABLE`` only for arguments a caller does not pass; msa2net passes ``disable`` itself, so it
    honours the variable here (batch jobs set it to keep carriage-return lines out of their logs).
    """
    return bool(requested) and os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("1", "true", "yes", "on")
