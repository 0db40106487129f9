"""Access to the parity data in ../shared/reference (made with the authors' code)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "reference"
REFERENCE_DIR = Path(os.environ.get("MSA2NET_REFERENCE_DIR", _DEFAULT))


def _fill_module():
    path = REFERENCE_DIR / "fill.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"parity reference not found at {REFERENCE_DIR}; set MSA2NET_REFERENCE_DIR to the shared/reference folder"
        )
    spec = importlib.util.spec_from_file_location("msa2net_reference_fill", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fill = _fill_module()


def official_state_dict(variant: str, seed: int = 1) -> dict:
    """The official-key state dict of a variant, filled deterministically from the key list."""
    return fill.fill_state_dict(fill.read_key_file(REFERENCE_DIR / f"official_keys_{variant}.txt"), seed=seed)


def official_entries(variant: str) -> list:
    return fill.read_key_file(REFERENCE_DIR / f"official_keys_{variant}.txt")


def parity_case(variant: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCE_DIR / f"parity_{variant}.npz") as data:
        return {k: data[k] for k in data.files}
