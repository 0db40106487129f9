"""Shared fixtures. Data fixtures (prefixed ``data_``) build tiny phantoms once per session; tests that modify the
files copy them first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every test, and every process a test starts, runs torch on one OpenMP thread (unless the caller set
# OMP_NUM_THREADS) and imports this checkout's msa2net. make test runs two pytest workers on two cores: a second
# thread per process only competes for them, and makes the small models here many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
_SRC = str(Path(__file__).resolve().parents[1] / "src")
os.environ["PYTHONPATH"] = os.pathsep.join([_SRC, *filter(None, [os.environ.get("PYTHONPATH")])])

#: Tiny Synapse phantom: two test cases and two training cases, 64x64 pixels, 6-8 slices.
DATA_SYNAPSE_CASES = ("0001", "0002", "0005", "0006")


@pytest.fixture(scope="session")
def data_synapse_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding ``RawData/Training/{img,label}`` of a tiny Synapse phantom (do not modify; copy first)."""
    from msa2net.data.phantom import make_synapse_phantom

    root = tmp_path_factory.mktemp("synapse_raw")
    make_synapse_phantom(root, cases=DATA_SYNAPSE_CASES, seed=3, slices=(6, 8), size=64)
    return root


@pytest.fixture(scope="session")
def data_synapse_prepared(data_synapse_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``prepare_synapse`` output of :func:`data_synapse_raw` (do not modify; copy first)."""
    from msa2net.data.synapse_prepare import prepare_synapse

    out = tmp_path_factory.mktemp("synapse_prepared")
    prepare_synapse(data_synapse_raw, out, progress=False)
    return out


@pytest.fixture(scope="session")
def data_isic_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding a 24-image ISIC 2018 phantom, 48x64 pixels (do not modify; copy first)."""
    from msa2net.data.phantom import make_isic_phantom

    root = tmp_path_factory.mktemp("isic_raw")
    make_isic_phantom(root, n=24, seed=5, size=(48, 64))
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """A factory of checkpoints of an untrained ``msa2net_test``: ``tiny_checkpoint(class_names, preprocessing,
    path=None, *, seed=0, img_size=64, **training_state)`` returns the checkpoint dict, or writes it to ``path`` and
    returns the path. ``preprocessing`` is a :class:`~msa2net.data.preprocessing.Preprocessing` (its channels are
    the model's); the weights are those of ``torch.manual_seed(seed)``."""
    import torch

    import msa2net
    from msa2net.engine.checkpoint import make_checkpoint, save_checkpoint

    def make(class_names, preprocessing, path: Path | None = None, *, seed: int = 0, img_size: int = 64, **state):
        torch.manual_seed(seed)
        model = msa2net.create_model(
            "msa2net_test", num_classes=len(class_names), in_channels=preprocessing.in_channels, img_size=img_size
        )
        ckpt = make_checkpoint(model, "msa2net_test", preprocessing.to_dict(), list(class_names), **state)
        if path is None:
            return ckpt
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt, path)
        return Path(path)

    return make
