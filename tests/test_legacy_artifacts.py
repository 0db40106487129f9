"""Model artifacts written by earlier msa2net versions still load: a checkpoint, exported folders (model.json and a
safetensors file describing the model in its metadata) and published folders of formats 1 and 2.

Each is rebuilt from the metadata that version wrote (vendored in tests/data/legacy, see its README) and the weights
it was written with; every one must segment a scan exactly as the checkpoint does."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from msa2net.data.preprocessing import Preprocessing
from msa2net.engine.checkpoint import LegacyModelWarning
from msa2net.engine.predictor import Predictor

LEGACY = Path(__file__).parent / "data" / "legacy"
CLASSES = ["background", "liver", "spleen"]


@pytest.fixture(scope="module")
def state(tiny_checkpoint) -> dict[str, torch.Tensor]:
    return tiny_checkpoint(CLASSES, Preprocessing(kind="ct_window", in_channels=1), seed=0)["model"]


@pytest.fixture(scope="module")
def scan() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(0, 150, (3, 40, 48)) + np.where(rng.random((3, 40, 48)) > 0.5, 100, -50)).astype(np.int16)


def _labels(source: Path, scan: np.ndarray) -> np.ndarray:
    return Predictor.from_pretrained(source).predict(scan, spacing=(3.0, 0.8, 0.8)).labels


def _write_published(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), {"format": "pt"})
    return folder


def test_every_earlier_artifact_segments_as_the_checkpoint(tmp_path: Path, state, scan) -> None:
    meta = json.loads((LEGACY / "checkpoint-ccced9f.json").read_text())
    torch.save({**meta, "model": state}, tmp_path / "model.pt")
    reference = _labels(tmp_path / "model.pt", scan)
    assert len(np.unique(reference)) > 1

    for commit in ("3f2316c", "ccced9f"):
        folder = tmp_path / f"export-{commit}"
        folder.mkdir()
        shutil.copy(LEGACY / f"export-{commit}-model.json", folder / "model.json")
        metadata = json.loads((LEGACY / f"export-{commit}-safetensors-metadata.json").read_text())
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata)
        np.testing.assert_array_equal(_labels(folder, scan), reference)  # the folder
        np.testing.assert_array_equal(_labels(folder / "model.safetensors", scan), reference)  # its weights file

    v2 = _write_published(tmp_path / "v2", json.loads((LEGACY / "published-ccced9f.json").read_text()), state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyModelWarning)  # format 2 records the orientation: no warning
        np.testing.assert_array_equal(_labels(v2, scan), reference)
    v1 = _write_published(tmp_path / "v1", json.loads((LEGACY / "published-3f2316c.json").read_text()), state)
    with pytest.warns(LegacyModelWarning, match="did not record the plane"):
        np.testing.assert_array_equal(_labels(v1, scan), reference)
