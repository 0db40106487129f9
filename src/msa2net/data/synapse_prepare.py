"""Synapse preparation: the raw BTCV download (``RawData/Training/img``, ``label``) -> the TransUNet layout that
:mod:`msa2net.data.synapse` describes and reads (plus ``spacing.json``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from msa2net._progress import progress_enabled
from msa2net.data.io import Geometry, ImageReadError, atomic_path, read_image, write_text_atomic
from msa2net.data.preprocessing import CT_PREPROCESSING
from msa2net.data.synapse import TEST_CASES, TRAIN_CASES, _read_spacing, btcv_to_synapse, case_name

__all__ = ["prepare_synapse"]

_IMAGE_RE = re.compile(r"^img(\d+)\.nii(\.gz)?$")


def _find_training_dir(raw_dir: Path) -> Path:
    for candidate in (raw_dir / "RawData" / "Training", raw_dir / "Training", raw_dir):
        if (candidate / "img").is_dir() and (candidate / "label").is_dir():
            return candidate
    raise FileNotFoundError(
        f"no BTCV training data under {raw_dir}: expected {raw_dir}/RawData/Training/img and .../label "
        f"(or {raw_dir}/Training/img and .../label); point raw_dir at the folder that contains RawData, or at RawData"
    )


def _discover(training: Path) -> list[tuple[str, Path, Path]]:
    """``[(case name, image path, label path)]`` sorted by case; missing labels raise ValueError."""
    images: dict[str, Path] = {}
    for path in sorted((training / "img").iterdir()):
        match = _IMAGE_RE.match(path.name)
        if match and path.is_file():
            images[case_name(match.group(1))] = path
    if not images:
        raise FileNotFoundError(f"no imgXXXX.nii.gz files in {training / 'img'}; is this the BTCV RawData folder?")
    pairs, missing = [], []
    for case, image_path in sorted(images.items()):
        digits = image_path.name[3 : image_path.name.index(".")]
        candidates = (training / "label" / f"label{digits}.nii.gz", training / "label" / f"label{digits}.nii")
        label_path = next((p for p in candidates if p.is_file()), None)
        if label_path is None:
            missing.append(f"{case} (expected {training / 'label' / f'label{digits}.nii.gz'})")
        else:
            pairs.append((case, image_path, label_path))
    if missing:
        raise ValueError(
            f"no label for {len(missing)} image(s): {'; '.join(missing)}. Training needs both img and label for each "
            f"case: add the label files, or move those images out of {training / 'img'}"
        )
    return pairs


def _header_info(case: str, path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Size (x, y, z) and spacing (x, y, z) from the header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ValueError(
            f"{case}: cannot read the header of {path} ({str(err).strip().splitlines()[-1]}); the file is corrupt or "
            f"truncated: download it again"
        ) from err
    size, spacing = tuple(reader.GetSize()), tuple(reader.GetSpacing())
    if len(size) != 3:
        raise ValueError(f"{case}: {path} is {len(size)}D, expected a 3D CT volume")
    return size, spacing


def _check_geometry(case: str, image_path: Path, label_path: Path, image: Geometry, label: Geometry) -> None:
    for name, rtol, atol in (("spacing", 1e-3, 1e-4), ("origin", 1e-5, 1e-2), ("direction", 0.0, 1e-3)):
        a, b = getattr(image, name), getattr(label, name)
        if not np.allclose(a, b, rtol=rtol, atol=atol):
            found_image = tuple(round(v, 4) for v in a)
            found_label = tuple(round(v, 4) for v in b)
            raise ValueError(
                f"{case}: {image_path.name} and {label_path.name} differ in {name}: image {found_image} vs label "
                f"{found_label}. The label must lie on the image's voxel grid: resample it onto the image (nearest "
                f"neighbour) or export it again from the annotation tool"
            )


def _load_case(case: str, image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Read, check and convert one case: unit image (D, H, W) float32, Synapse labels (D, H, W) float32."""
    try:
        hu, image_geometry = read_image(image_path)
        btcv, label_geometry = read_image(label_path)
    except ImageReadError as err:
        raise ValueError(f"{case}: {err}") from err
    if hu.ndim != 3 or btcv.ndim != 3:
        raise ValueError(
            f"{case}: expected 3D volumes, found image {hu.shape} and label {btcv.shape}; "
            f"check that {image_path.name} and {label_path.name} are single-channel CT volumes"
        )
    if hu.shape != btcv.shape:
        raise ValueError(
            f"{case}: image {image_path.name} has shape {hu.shape} (Z, Y, X) but label {label_path.name} has "
            f"{btcv.shape}; the label must lie on the image's voxel grid: resample it onto the image (nearest "
            f"neighbour) or replace the mismatched file"
        )
    _check_geometry(case, image_path, label_path, image_geometry, label_geometry)
    if not np.all(np.isfinite(hu)):
        raise ValueError(f"{case}: {image_path.name} holds NaN or infinite values; the file is damaged")
    try:
        synapse = btcv_to_synapse(btcv)
    except ValueError as err:
        raise ValueError(
            f"{case}: {label_path.name}: {err}; this is not a BTCV 13-organ label map (ids 0..13)"
        ) from err
    return CT_PREPROCESSING.to_unit(hu), synapse.astype(np.float32), image_geometry


def _save_slice(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    """Write one training slice as an uncompressed npz (the release's format: fast to load)."""
    with open(path, "wb") as handle:
        np.savez(handle, image=image, label=label)


def _slice_names(case: str, depth: int) -> list[str]:
    return [f"{case}_slice{z:03d}" for z in range(depth)]


def _spacing_zyx(spacing_xyz: Sequence[float]) -> list[float]:
    """SimpleITK (x, y, z) spacing -> [z, y, x] mm, rounded to the 7 significant digits a NIfTI header holds."""
    return [float(f"{float(v):.7g}") for v in reversed(spacing_xyz)]


def _merge_spacing(out_dir: Path, updates: dict[str, list[float]]) -> None:
    spacing = _read_spacing(out_dir)
    if all(spacing.get(k) == v for k, v in updates.items()):
        return
    spacing.update(updates)
    rows = [f"  {json.dumps(case)}: {json.dumps(value)}" for case, value in sorted(spacing.items())]
    write_text_atomic(out_dir / "spacing.json", "{\n" + ",\n".join(rows) + "\n}\n")


def _write_train_case(train_dir: Path, case: str, image: np.ndarray, label: np.ndarray) -> None:
    """Write all slices of a case into a hidden staging folder, then move them into place."""
    staging = train_dir / f".partial-{case}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    names = _slice_names(case, image.shape[0])
    try:
        for z, name in enumerate(names):
            _save_slice(staging / f"{name}.npz", image[z], label[z])
        for old in train_dir.glob(f"{case}_slice*.npz"):
            old.unlink()
        for name in names:
            os.replace(staging / f"{name}.npz", train_dir / f"{name}.npz")
    except BaseException:
        # An interruption while moving would leave part of the case: remove it, the next run redoes the case.
        for moved in train_dir.glob(f"{case}_slice*.npz"):
            moved.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_synapse(
    raw_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert the raw BTCV release (``raw_dir`` holds ``RawData`` or is it) to the TransUNet npz/h5 layout.

    :data:`TEST_CASES` become volumes, the others (unofficial ones with a warning) slices, at their own in-plane
    size; ``spacing.json`` is merged after every case and the lists are rewritten at the end. Writes are atomic and a
    case whose outputs exist is skipped unless ``overwrite``, so an interrupted run resumes. Returns a summary.
    """
    raw = Path(raw_dir)
    out = Path(out_dir)
    pairs = _discover(_find_training_dir(raw))
    unofficial = [case for case, _, _ in pairs if case[4:] not in TEST_CASES + TRAIN_CASES]
    if unofficial:
        warnings.warn(
            f"{', '.join(unofficial)} not in the official Synapse split (30 BTCV training cases); "
            f"they are added to the training set",
            stacklevel=2,
        )
    train_dir, test_dir, list_dir = out / "train_npz", out / "test_vol_h5", out / "lists_Synapse"
    for folder in (train_dir, test_dir, list_dir):
        folder.mkdir(parents=True, exist_ok=True)

    done: list[str] = []
    skipped: list[str] = []
    train_names: list[str] = []
    train_cases: list[str] = []
    test_cases: list[str] = []
    for case, image_path, label_path in tqdm(
        pairs, desc="prepare synapse", unit="case", disable=not progress_enabled(progress)
    ):
        size, spacing_xyz = _header_info(case, image_path)
        depth = size[2]
        is_test = case[4:] in TEST_CASES
        if is_test:
            test_cases.append(case)
            outputs = [test_dir / f"{case}.npy.h5"]
        else:
            train_cases.append(case)
            names = _slice_names(case, depth)
            train_names.extend(names)
            outputs = [train_dir / f"{name}.npz" for name in names]
        if not overwrite and all(p.is_file() for p in outputs):
            skipped.append(case)
            _merge_spacing(out, {case: _spacing_zyx(spacing_xyz)})
            continue
        image, label, geometry = _load_case(case, image_path, label_path)
        _merge_spacing(out, {case: _spacing_zyx(geometry.spacing)})
        if is_test:
            with atomic_path(outputs[0]) as tmp, h5py.File(tmp, "w") as handle:
                handle.create_dataset("image", data=image)
                handle.create_dataset("label", data=label)
        else:
            _write_train_case(train_dir, case, image, label)
        done.append(case)

    write_text_atomic(list_dir / "train.txt", "".join(f"{n}\n" for n in sorted(train_names)))
    write_text_atomic(list_dir / "test_vol.txt", "".join(f"{c}\n" for c in sorted(test_cases)))
    return {
        "out_dir": str(out),
        "done": done,
        "skipped": skipped,
        "train_cases": sorted(train_cases),
        "test_cases": sorted(test_cases),
        "train_slices": len(train_names),
    }
