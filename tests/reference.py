"""Parity data for the tests, vendored in ``tests/data/parity`` (made with the authors' code; see its README),
and the deterministic weights and input it was made with.

No weight file is shipped: every weight of a parity case is a function of its official key name, its shape and
a seed (:func:`fill_tensor`), and the input is a function of its shape and a seed (:func:`reference_input`).
Both reproduce, bit for bit, the routine the reference data was produced with (``tests/test_reference.py``
checks that against the original whenever ``../shared/reference`` sits beside the repository, and the vendored
arrays against the originals' recorded digests always).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: The vendored parity data.
DATA_DIR = Path(__file__).resolve().parent / "data" / "parity"
VARIANTS = ("paper", "released")
#: The parity case of each variant: weights from ``fill_state_dict(official keys, PARITY_SEED)``, one input
#: ``reference_input(PARITY_INPUT_SHAPE, PARITY_SEED)``, 9 classes.
PARITY_SEED = 1
PARITY_INPUT_SHAPE = (1, 1, 224, 224)
#: Arrays stored once because both variants' originals hold identical values (see :func:`pack_parity_data`).
COMMON_FILE = "parity_common.npz"
#: SHA-256 digests of the original reference files, recorded when they were packed (:func:`original_digests`).
DIGESTS_FILE = "originals.sha256.json"

#: One state-dict entry of a key file: (key, shape, dtype).
Entry = tuple[str, tuple[int, ...], torch.dtype]

_SEED_STRIDE = 1_000_003  # generator seed of an entry: seed * _SEED_STRIDE + crc32(key)
# Blob centre (x, y) and radius of reference_input: u * _BLOB_SCALE - _BLOB_SHIFT for u ~ U[0, 1)^3. The
# constants are float32 on purpose: the reference data was made with float32-rounded ones.
_BLOB_SCALE = (1.2, 1.2, 0.5)
_BLOB_SHIFT = (0.6, 0.6, -0.2)


# ---------------------------------------------------------------------------------------------- weights


def _entry_generator(key: str, seed: int) -> torch.Generator:
    """A CPU generator of its own for each (key, seed): ``seed * 1_000_003 + crc32(utf-8 key)``."""
    return torch.Generator().manual_seed(seed * _SEED_STRIDE + zlib.crc32(key.encode("utf-8")))


def fill_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """The deterministic value of one state-dict entry; it depends on ``key``, ``shape``, ``dtype`` and ``seed``
    only (not on the other entries, nor on any global random state).

    Non-floating dtypes (BatchNorm's ``num_batches_tracked``) are zeros. Otherwise ``n`` is a float64 standard
    normal sample of ``shape`` from :func:`_entry_generator`, always drawn first, and by the key's last
    dot-separated name:

    - ``running_var``: ``0.75 + 0.5 * u``, ``u`` uniform in [0, 1) drawn from the same generator after ``n``;
    - ``running_mean``: ``0.1 * n``; ``bias``: ``0.02 * n``;
    - ``temperature``, and 1-D ``weight`` (norm scales): ``1 + 0.1 * n``;
    - any other 1-D entry (layer scales such as ``gamma``): ``0.1 + 0.02 * n``;
    - anything else (kernels): ``n / sqrt(fan_in)`` with ``fan_in`` the product of ``shape[1:]``.

    Computed in float64, then cast to ``dtype``.
    """
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    generator = _entry_generator(key, seed)
    normal = torch.randn(shape, generator=generator, dtype=torch.float64)
    name = key.rpartition(".")[2]
    if name == "running_var":
        value = 0.75 + 0.5 * torch.rand(shape, generator=generator, dtype=torch.float64)
    elif name == "running_mean":
        value = 0.1 * normal
    elif name == "bias":
        value = 0.02 * normal
    elif name == "temperature" or (name == "weight" and len(shape) == 1):
        value = 1.0 + 0.1 * normal
    elif len(shape) == 1:
        value = 0.1 + 0.02 * normal
    else:
        value = normal / math.sqrt(math.prod(shape[1:]))
    return value.to(dtype)


def fill_state_dict(entries: Iterable[Entry], seed: int) -> dict[str, torch.Tensor]:
    """``{key: fill_tensor(key, shape, dtype, seed)}`` for every entry, in the entries' order."""
    return {key: fill_tensor(key, tuple(shape), dtype, seed) for key, shape, dtype in entries}


def fill_model(model: nn.Module, seed: int) -> nn.Module:
    """Load ``model`` (in place, strictly) with :func:`fill_state_dict` of its own state-dict entries.

    Unlike a default initialisation, every branch then contributes at full strength (layer scales 0.1, not
    1e-6; non-trivial norms and BatchNorm statistics), so a test on a small model sees every path.
    """
    entries = [(key, tuple(t.shape), t.dtype) for key, t in model.state_dict().items()]
    model.load_state_dict(fill_state_dict(entries, seed), strict=True)
    return model


def _parse_shape(text: str) -> tuple[int, ...]:
    """``"(9, 96, 1, 1)"``, ``"(3,)"`` or ``"()"`` -> tuple of ints."""
    inner = text.strip()
    if not (inner.startswith("(") and inner.endswith(")")):
        raise ValueError(f"not a shape: {text!r}")
    return tuple(int(part) for part in inner[1:-1].split(",") if part.strip())


def _parse_dtype(text: str) -> torch.dtype:
    """``"torch.float32"`` -> ``torch.float32``."""
    dtype = getattr(torch, text.strip().removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {text!r}")
    return dtype


def read_key_file(path: Path) -> list[Entry]:
    """The entries of a key file, in file order: one ``key<TAB>shape<TAB>dtype`` line per state-dict entry,
    e.g. ``decoder_0.last_layer.weight\\t(9, 96, 1, 1)\\ttorch.float32``; blank lines are skipped. A ``.gz``
    file is decompressed."""
    opener = gzip.open if path.suffix == ".gz" else open
    entries = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise ValueError(f"{path}:{number}: expected key<TAB>shape<TAB>dtype, got {line!r}")
            key, shape, dtype = fields
            entries.append((key, _parse_shape(shape), _parse_dtype(dtype)))
    return entries


# ---------------------------------------------------------------------------------------------- input


def reference_input(shape: tuple[int, int, int, int], seed: int) -> torch.Tensor:
    """The deterministic (B, C, H, W) float32 input of a reference case, in [-1, 1].

    One generator seeded with ``seed`` serves the whole tensor. On the grid ``x, y = linspace(-1, 1)`` (W and H
    points), plane (b, c), visited b-major, is ``0.3 * sin(3x + 2y + b + c) + 0.6 * blob``, where the Gaussian
    ``blob = exp(-((x - cx)^2 + (y - cy)^2) / (2 r^2))`` takes its centre and radius from three uniforms drawn
    for that plane (``cx, cy`` in [-0.6, 0.6), ``r`` in [0.2, 0.7)); then standard normal noise times 0.1,
    drawn after all planes, is added and the sum clamped to [-1, 1]. Computed in float64, then cast.
    """
    batch, channels, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, height, dtype=torch.float64),
        torch.linspace(-1, 1, width, dtype=torch.float64),
        indexing="ij",
    )
    scale = torch.tensor(_BLOB_SCALE, dtype=torch.float32)
    shift = torch.tensor(_BLOB_SHIFT, dtype=torch.float32)
    smooth = torch.zeros(shape, dtype=torch.float64)
    for b in range(batch):
        for c in range(channels):
            cx, cy, r = torch.rand(3, generator=generator, dtype=torch.float64) * scale - shift
            blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))
            smooth[b, c] = torch.sin(3 * xx + 2 * yy + b + c) * 0.3 + blob * 0.6
    noise = 0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)
    return (smooth + noise).clamp(-1, 1).to(torch.float32)


# ---------------------------------------------------------------------------------------------- vendored data


def official_entries(variant: str) -> list[Entry]:
    """Every state-dict entry of the authors' ``variant`` network (official key names), in their order."""
    return read_key_file(DATA_DIR / f"official_keys_{variant}.txt.gz")


@functools.lru_cache(maxsize=2)  # both variants at the parity seed: ~0.8 GB
def _official_state_dict(variant: str, seed: int) -> dict[str, torch.Tensor]:
    return fill_state_dict(official_entries(variant), seed=seed)


def official_state_dict(variant: str, seed: int = PARITY_SEED) -> dict[str, torch.Tensor]:
    """The official-key state dict of a variant, filled deterministically from its key list.

    Each call returns new tensors (clones of a cached fill, which is many times slower than a copy), so a
    caller may modify them.
    """
    return {key: value.clone() for key, value in _official_state_dict(variant, seed).items()}


@functools.cache
def _load_npz(name: str) -> Mapping[str, np.ndarray]:
    with np.load(DATA_DIR / name) as data:
        return {key: data[key] for key in data.files}


def parity_case(variant: str) -> dict[str, np.ndarray]:
    """The parity case of ``variant`` (new float32 arrays at each call): ``input`` (1, 1, 224, 224), ``logits``
    (1, 9, 224, 224), ``encoder.0..3`` (the official encoder outputs, deepest first) and ``decoder_3``,
    ``decoder_2``, ``decoder_1`` (token outputs of those decoder stages)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    stored = {**_load_npz(COMMON_FILE), **_load_npz(f"parity_{variant}.npz")}
    return {
        "input": reference_input(PARITY_INPUT_SHAPE, PARITY_SEED).numpy(),
        **{k: a.copy() for k, a in stored.items()},
    }


def case_digests(key_file: bytes, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """SHA-256 of a key file's bytes and, per array, its dtype, shape and the SHA-256 of its C-order bytes."""
    return {
        "official_keys": hashlib.sha256(key_file).hexdigest(),
        "arrays": {
            name: {
                "dtype": a.dtype.str,
                "shape": list(a.shape),
                "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(),
            }
            for name, a in sorted(arrays.items())
        },
    }


def original_digests(source: Path) -> dict[str, Any]:
    """:func:`case_digests` of each variant's original files in ``source`` (``official_keys_*.txt``,
    ``parity_*.npz``)."""
    digests = {}
    for variant in VARIANTS:
        with np.load(source / f"parity_{variant}.npz") as data:
            arrays = {key: data[key] for key in data.files}
        digests[variant] = case_digests((source / f"official_keys_{variant}.txt").read_bytes(), arrays)
    return digests


def vendored_digests(variant: str) -> dict[str, Any]:
    """:func:`case_digests` of the vendored copy of ``variant``: the unzipped key file and :func:`parity_case`."""
    with gzip.open(DATA_DIR / f"official_keys_{variant}.txt.gz", "rb") as f:
        return case_digests(f.read(), parity_case(variant))


def recorded_digests() -> dict[str, Any]:
    """The digests of the originals recorded in :data:`DIGESTS_FILE` when they were packed."""
    return json.loads((DATA_DIR / DIGESTS_FILE).read_text(encoding="utf-8"))


def pack_parity_data(source: Path, dest: Path = DATA_DIR) -> None:
    """Pack the reference folder ``source`` (``official_keys_*.txt``, ``parity_*.npz``) into ``dest``.

    Key files are gzipped unchanged (no name or time in the header, so repacking gives the same bytes). The
    ``input`` arrays are dropped after checking that :func:`reference_input` regenerates them bit for bit;
    arrays identical in both variants go once into :data:`COMMON_FILE`, the rest into ``parity_<variant>.npz``,
    all with ``np.savez_compressed`` (lossless). :data:`DIGESTS_FILE` records the originals' digests, so that a
    clone without them still checks its copy against them.
    """
    dest.mkdir(parents=True, exist_ok=True)
    (dest / DIGESTS_FILE).write_text(json.dumps(original_digests(source), indent=1) + "\n", encoding="utf-8")
    cases = {}
    for variant in VARIANTS:
        raw = (source / f"official_keys_{variant}.txt").read_bytes()
        with open(dest / f"official_keys_{variant}.txt.gz", "wb") as f:
            with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=f, mtime=0) as gz:
                gz.write(raw)
        with np.load(source / f"parity_{variant}.npz") as data:
            cases[variant] = {key: data[key] for key in data.files}
        expected = reference_input(PARITY_INPUT_SHAPE, PARITY_SEED).numpy()
        if not np.array_equal(cases[variant].pop("input"), expected):
            raise ValueError(f"parity_{variant}.npz: input is not reference_input({PARITY_INPUT_SHAPE}, {PARITY_SEED})")
    first, *others = cases.values()
    common = {k: v for k, v in first.items() if all(k in o and np.array_equal(v, o[k]) for o in others)}
    np.savez_compressed(dest / COMMON_FILE, **common)
    for variant, arrays in cases.items():
        np.savez_compressed(dest / f"parity_{variant}.npz", **{k: v for k, v in arrays.items() if k not in common})


if __name__ == "__main__":  # repack: python tests/reference.py ../shared/reference
    import sys

    pack_parity_data(Path(sys.argv[1]))


@functools.cache
def benchmark_module(name: str) -> Any:
    """A script of ``benchmarks/`` loaded as a module, once: e.g. ``legacy_reference``, the authors' slice-by-slice
    procedure written independently of msa2net, which tests and benchmarks both compare with."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"msa2net_bench_{name}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_liver_folder(
    root: Path, channel: str = "CT", background: float = 0.0, contrast: float = 200.0, **dataset_json: Any
) -> Path:
    """A 3-case 3D dataset folder (classes background, liver, tumour; int16 images of ``background + noise +
    contrast * label``, spacing 0.8 x 0.8 x 3 mm) whose ``dataset.json`` names ``channel`` and carries
    ``dataset_json``; returns ``root``."""
    import json

    import numpy as np
    import SimpleITK as sitk

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        label = np.zeros((4, 48, 40), np.uint8)
        label[:, 10 + i : 30, 8:24] = 1
        label[1:3, 30:40, 26:36] = 2
        image = (rng.normal(background, 20, label.shape) + contrast * label).astype(np.int16)
        for arr, path in (
            (image, root / "imagesTr" / f"c{i}_0000.nii.gz"),
            (label, root / "labelsTr" / f"c{i}.nii.gz"),
        ):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing((0.8, 0.8, 3.0))
            sitk.WriteImage(img, str(path))
    spec = {
        "channel_names": {"0": channel},
        "labels": {"background": 0, "liver": 1, "tumour": 2},
        "file_ending": ".nii.gz",
        **dataset_json,
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return root
