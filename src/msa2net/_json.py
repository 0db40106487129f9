"""Strict JSON: undefined figures (NaN, infinity) become ``null``, and files are written atomically.

A leaf module: summaries, checkpoints' records and published ``config.json`` files all go through it, so every
floor of the package (models included) can use it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._atomic import write_text_atomic

__all__ = ["json_safe", "write_json"]


def json_safe(value: object) -> object:
    """``value`` with NaN/inf floats replaced by ``None`` (JSON null), recursively, so it dumps as strict JSON.

    NumPy scalars become Python numbers, tuples become lists and mapping keys become strings.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], data: object) -> Path:
    """Write ``json_safe(data)`` as indented strict JSON (NaN as ``null``) atomically; returns the path."""
    return write_text_atomic(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
