"""Shared fixtures. Data fixtures (prefixed ``data_``) build tiny phantoms once per session; tests that modify the
files copy them first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run the torch ops of the module that asks for it on one thread (``pytestmark =
    pytest.mark.usefixtures("one_thread")``, or per test). On a shared 2-core machine, two OpenMP threads competing
    with other processes make the small models many times slower; they gain nothing from a second thread anyway."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
