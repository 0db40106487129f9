"""The test-support routines and vendored parity data of ``tests/reference.py`` against the originals they were
made from (``../shared/reference``: the reference set's ``fill.py``, key files and arrays). The vendored data are
checked against the originals' digests, recorded when they were packed, in every clone; the comparisons with the
original files and the original ``fill.py`` (which is not vendored) are skipped when that folder is not beside the
repository."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from reference import (
    DATA_DIR,
    PARITY_INPUT_SHAPE,
    PARITY_SEED,
    VARIANTS,
    case_digests,
    fill_state_dict,
    fill_tensor,
    official_entries,
    official_state_dict,
    original_digests,
    parity_case,
    read_key_file,
    recorded_digests,
    reference_input,
    vendored_digests,
)

SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
_ABSENT = f"original reference set not found at {SHARED_REFERENCE} (only the vendored copy is available)"


@pytest.fixture(scope="module")
def original_fill() -> ModuleType:
    """The reference set's own ``fill.py``, imported from its file."""
    path = SHARED_REFERENCE / "fill.py"
    if not path.is_file():
        pytest.skip(_ABSENT)
    spec = importlib.util.spec_from_file_location("shared_reference_fill", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_same_state(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    unequal = [k for k in theirs if ours[k].dtype != theirs[k].dtype or not torch.equal(ours[k], theirs[k])]
    assert unequal == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_fill_reproduces_the_original_state_dicts(original_fill: ModuleType, variant: str) -> None:
    """Every tensor of the parity weights, bit for bit, from the original key file and from the vendored one."""
    theirs_entries = original_fill.read_key_file(SHARED_REFERENCE / f"official_keys_{variant}.txt")
    assert official_entries(variant) == theirs_entries
    theirs = original_fill.fill_state_dict(theirs_entries, seed=PARITY_SEED)
    _assert_same_state(official_state_dict(variant), theirs)
    assert all(t.abs().sum() > 0 for t in theirs.values() if t.is_floating_point())  # not a comparison of zeros


def test_fill_reproduces_every_rule_at_other_seeds_and_dtypes(original_fill: ModuleType) -> None:
    """Each naming rule, scalars, float64/float16 and integer entries, at the seeds other tests use."""
    entries = [
        ("a.conv.weight", (8, 3, 3, 3), torch.float32),
        ("a.fc.weight", (5, 7), torch.float64),
        ("a.norm.weight", (6,), torch.float32),
        ("a.norm.bias", (6,), torch.float16),
        ("a.bn.running_mean", (4,), torch.float32),
        ("a.bn.running_var", (4,), torch.float32),
        ("a.bn.num_batches_tracked", (), torch.int64),
        ("a.attn.temperature", (2, 1, 1), torch.float32),
        ("a.ls1.gamma", (6,), torch.float32),
        ("a.layer_scale_1", (6,), torch.float32),
        ("scalar", (), torch.float32),
        ("a.pos.weight", (3, 0), torch.float32),
    ]
    for seed in (0, 1, 2, 3, 12345):
        _assert_same_state(fill_state_dict(entries, seed), original_fill.fill_state_dict(entries, seed))
        for key, shape, dtype in entries:
            assert torch.equal(fill_tensor(key, shape, dtype, seed), original_fill.fill_tensor(key, shape, dtype, seed))


def test_reference_input_reproduces_the_original(original_fill: ModuleType) -> None:
    for shape, seed in ((PARITY_INPUT_SHAPE, PARITY_SEED), ((2, 1, 224, 224), 3), ((2, 3, 16, 24), 5)):
        ours, theirs = reference_input(shape, seed), original_fill.reference_input(shape, seed)
        assert ours.dtype == theirs.dtype == torch.float32
        assert torch.equal(ours, theirs), (shape, seed)


def test_key_files_parse_like_the_original(original_fill: ModuleType, tmp_path: Path) -> None:
    for variant in VARIANTS:
        original = SHARED_REFERENCE / f"official_keys_{variant}.txt"
        assert read_key_file(original) == original_fill.read_key_file(original)
    odd = tmp_path / "keys.txt"
    odd.write_text("x.weight\t(2, 3)\ttorch.float64\n\ny\t()\ttorch.int64\nz.bias\t(4,)\ttorch.float16\n")
    assert read_key_file(odd) == original_fill.read_key_file(odd)


@pytest.mark.parametrize("variant", VARIANTS)
def test_vendored_data_match_the_recorded_digests_of_the_originals(variant: str) -> None:
    """Runs in every clone: the unzipped key file and every array of the parity case (the regenerated input
    included) have the dtype, shape and SHA-256 the originals had when they were packed."""
    recorded = recorded_digests()[variant]
    assert set(recorded["arrays"]) == {"input", "logits", "decoder_1", "decoder_2", "decoder_3"} | {
        f"encoder.{i}" for i in range(4)
    }
    assert vendored_digests(variant) == recorded


def test_digests_tell_arrays_apart() -> None:
    """A changed value, dtype or shape changes the digest record (so the check above can fail)."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = a.copy()
    b[1, 2] = np.nextafter(b[1, 2], np.float32(np.inf))
    base = case_digests(b"k", {"x": a})
    assert case_digests(b"k", {"x": b}) != base
    assert case_digests(b"k", {"x": a.astype(np.float64)}) != base
    assert case_digests(b"k", {"x": a.reshape(3, 2)}) != base
    assert case_digests(b"k ", {"x": a}) != base
    assert case_digests(b"k", {"x": a.copy()}) == base


def test_recorded_digests_are_those_of_the_originals() -> None:
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(_ABSENT)
    assert recorded_digests() == original_digests(SHARED_REFERENCE)


@pytest.mark.parametrize("variant", VARIANTS)
def test_vendored_data_equals_the_originals(variant: str) -> None:
    """The packed copy loses nothing: same arrays (regenerated input included), dtypes and key-file bytes."""
    keys = SHARED_REFERENCE / f"official_keys_{variant}.txt"
    arrays = SHARED_REFERENCE / f"parity_{variant}.npz"
    if not (keys.is_file() and arrays.is_file()):
        pytest.skip(_ABSENT)
    with gzip.open(DATA_DIR / f"official_keys_{variant}.txt.gz", "rb") as f:
        assert f.read() == keys.read_bytes()
    ours = parity_case(variant)
    with np.load(arrays) as data:
        assert sorted(ours) == sorted(data.files)
        for name in data.files:
            assert ours[name].dtype == data[name].dtype, name
            assert ours[name].shape == data[name].shape, name
            np.testing.assert_array_equal(ours[name], data[name], err_msg=name, strict=True)
