"""Synapse multi-organ CT (BTCV abdomen, 8 organs): the TransUNet layout, its datasets and :class:`SynapseSource`.

Layout (the public TransUNet release, which works as is, plus ``spacing.json`` from ``prepare synapse``):
``train_npz/caseXXXX_sliceZZZ.npz`` slices, ``test_vol_h5/caseXXXX.npy.h5`` volumes ``(Z, Y, X)`` in NIfTI file
order, ``lists_Synapse/{train,test_vol}.txt`` and ``spacing.json`` (``[z, y, x]`` mm per case). Images are HU
windowed to [0, 1] (:data:`~msa2net.data.preprocessing.CT_PREPROCESSING`), labels the 8 classes of :data:`CLASS_NAMES`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from msa2net.constants import SYNAPSE_CLASS_NAMES, DatasetRecord, builtin_dataset
from msa2net.data.io import Geometry
from msa2net.data.preprocessing import CT_PREPROCESSING, Preprocessing
from msa2net.data.source import Case, EpochSeededDataset, Source, register_source

__all__ = [
    "BTCV_TO_SYNAPSE",
    "CLASS_NAMES",
    "LABEL_MODES",
    "INTENSITY_MODES",
    "TEST_CASES",
    "TRAIN_CASES",
    "SynapseSliceDataset",
    "SynapseSource",
    "SynapseVolumeDataset",
    "available_cases",
    "btcv_to_synapse",
    "case_name",
]

#: The 12 test cases of the TransUNet split (BTCV numbering).
TEST_CASES: tuple[str, ...] = (
    "0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038",
)  # fmt: skip
#: The 18 training cases (2211 slices in the real data).
TRAIN_CASES: tuple[str, ...] = (
    "0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024", "0026",
    "0027", "0028", "0030", "0031", "0033", "0034", "0037", "0039", "0040",
)  # fmt: skip
#: BTCV label id (0..13) -> Synapse class id (0..8); structures outside the 8 organs become background.
BTCV_TO_SYNAPSE: dict[int, int] = {
    0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 0, 6: 5, 7: 6, 8: 7, 9: 0, 10: 0, 11: 8, 12: 0, 13: 0,
}  # fmt: skip
#: Class names by Synapse class id (the paper's table columns are classes 1..8 in this order).
CLASS_NAMES: tuple[str, ...] = SYNAPSE_CLASS_NAMES
#: ``labels=`` choices: stored ids are the 8 Synapse classes, or 14-class BTCV ids to be mapped.
LABEL_MODES: tuple[str, ...] = ("synapse8", "btcv14")
#: ``intensity=`` choices: values outside [0, 1] are an error, or are clipped.
INTENSITY_MODES: tuple[str, ...] = ("strict", "clip")

_BTCV_LUT = np.array([BTCV_TO_SYNAPSE[i] for i in range(14)], dtype=np.int64)
_SLICE_RE = re.compile(r"^(case\d+)_slice(\d+)$")
_RANGE_TOL = 1e-3


def case_name(case: str | int) -> str:
    """Normalise a case id: ``"0005"``, ``5`` or ``"case0005"`` -> ``"case0005"``."""
    text = str(case).strip()
    digits = text[4:] if text.lower().startswith("case") else text
    if not digits.isdigit():
        raise ValueError(f"case ids look like 'case0005', '0005' or 5; got {case!r}")
    return f"case{int(digits):04d}"


def btcv_to_synapse(labels: np.ndarray) -> np.ndarray:
    """Map BTCV ids 0..13 to Synapse classes 0..8 (uint8, same shape); other values are a ValueError.

    Integer label maps (as BTCV ships them) are looked up as they are: no float or int64 copies of the volume."""
    arr = np.asarray(labels)
    ids = arr if np.issubdtype(arr.dtype, np.integer) else np.rint(arr)
    if arr.size and (ids.min() < 0 or ids.max() > 13 or (ids is not arr and not np.array_equal(ids, arr))):
        found = [f"{v:g}" for v in np.unique(arr).tolist() if not (0 <= v <= 13 and v == round(v))]
        raise ValueError(f"BTCV labels are whole numbers 0..13; found {', '.join(found[:10])}")
    return _BTCV_LUT.astype(np.uint8)[ids if ids is arr else ids.astype(np.intp)]


def _read_spacing(out_dir: Path) -> dict[str, list[float]]:
    path = out_dir / "spacing.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and re-run msa2net prepare synapse") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} should map case names to [z, y, x] spacing; delete it and re-run prepare")
    return data


# --------------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------------


def _check_modes(labels: str, intensity: str) -> None:
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")


def _checked_arrays(
    image: np.ndarray, label: np.ndarray, name: str, source: Path, labels: str, intensity: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert one slice or volume: image float32 in [0, 1], label int64 Synapse classes."""
    if image.shape != label.shape:
        raise ValueError(f"{name}: image shape {image.shape} differs from label shape {label.shape} in {source}")
    image = np.asarray(image, dtype=np.float32)
    if image.size and not np.all(np.isfinite(image)):
        raise ValueError(f"{name}: image in {source} holds NaN or infinite values; re-run msa2net prepare synapse")
    if image.size:
        lo, hi = float(image.min()), float(image.max())
        if intensity == "strict" and (lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL):
            raise ValueError(
                f"{name}: image values in {source} span [{lo:.4g}, {hi:.4g}], expected [0, 1] (HU window "
                f"[-125, 275] mapped to [0, 1]); pass intensity='clip' to clip them to [0, 1], or re-run "
                f"msa2net prepare synapse on the raw data"
            )
        if intensity == "clip" or lo < 0.0 or hi > 1.0:
            image = np.clip(image, 0.0, 1.0)
    ids = np.rint(label)
    if label.size and not np.array_equal(ids, label):
        raise ValueError(f"{name}: label in {source} holds non-integer values; class ids must be whole numbers")
    ids = ids.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name}: label in {source} holds negative values {sorted(set(ids[ids < 0].tolist()))[:10]}")
    if labels == "btcv14":
        if ids.size and ids.max() > 13:
            found = sorted({int(v) for v in np.unique(ids) if v > 13})
            raise ValueError(f"{name}: label values {found} in {source} are not BTCV ids (0..13)")
        return image, _BTCV_LUT[ids]
    if ids.size and ids.max() > 8:
        found = sorted({int(v) for v in np.unique(ids) if v > 8})
        raise ValueError(
            f"label values {set(found)} found in {name}: this looks like the 14-class BTCV release; pass "
            f"labels='btcv14' to map BTCV ids to the 8 Synapse classes, or re-run msa2net prepare synapse"
        )
    return image, ids


def _read_list(root: Path, list_file: str) -> list[str]:
    path = root / "lists_Synapse" / list_file
    if not path.is_file():
        raise FileNotFoundError(
            f"list file {path} not found; expected the TransUNet layout (train_npz/, test_vol_h5/, lists_Synapse/) "
            f"under {root}: run msa2net prepare synapse, or point root at the unpacked TransUNet download"
        )
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"list file {path} is empty; re-run msa2net prepare synapse")
    return names


def _case_of(name: str) -> str:
    match = _SLICE_RE.match(name)
    return match.group(1) if match else name


def _filter_cases(names: list[str], cases: Iterable[str | int] | None, source: Path) -> list[str]:
    if cases is None:
        return names
    wanted = {case_name(c) for c in cases}
    present = {_case_of(n) for n in names}
    missing = sorted(wanted - present)
    if missing:
        raise ValueError(
            f"cases {missing} are not in {source} (it lists {len(present)} cases: {sorted(present)[:6]}...); "
            f"check the case ids or the list file"
        )
    return [n for n in names if _case_of(n) in wanted]


def available_cases(root: str | os.PathLike[str], list_file: str = "train.txt") -> list[str]:
    """Sorted case names (``caseXXXX``) present in ``root/lists_Synapse/<list_file>`` (slice or case lists)."""
    return sorted({_case_of(n) for n in _read_list(Path(root), list_file)})


class SynapseSliceDataset(EpochSeededDataset):
    """Training slices ``root/train_npz/<name>.npz`` listed in ``root/lists_Synapse/<list_file>``.

    Items are ``{"image", "label", "name"}``, through ``transform(image, label, rng)`` when given. ``labels``:
    ``"synapse8"`` ids or ``"btcv14"`` ids mapped by :data:`BTCV_TO_SYNAPSE`; ``intensity``: ``"strict"`` (outside
    [0, 1] by more than 1e-3 is an error) or ``"clip"``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        cases: Iterable[str | int] | None = None,
        list_file: str = "train.txt",
        transform: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
        labels: str = "synapse8",
        intensity: str = "strict",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        _check_modes(labels, intensity)
        self.root = Path(root)
        self.labels = labels
        self.intensity = intensity
        self.transform = transform
        self.slice_dir = self.root / "train_npz"
        if not self.slice_dir.is_dir():
            raise FileNotFoundError(
                f"{self.slice_dir} not found; run msa2net prepare synapse or point root at the TransUNet download"
            )
        self.names = _filter_cases(_read_list(self.root, list_file), cases, self.root / "lists_Synapse" / list_file)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def cases(self) -> list[str]:
        """Sorted case names covered by this dataset."""
        return sorted({_case_of(n) for n in self.names})

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Checked arrays of item ``index``: image float32 ``(H, W)`` in [0, 1], label int64 ``(H, W)``."""
        name = self.names[index]
        path = self.slice_dir / f"{name}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed but missing; re-run msa2net prepare synapse")
        with np.load(path) as data:
            if "image" not in data or "label" not in data:
                raise ValueError(f"{path} holds arrays {sorted(data.files)}, expected 'image' and 'label'")
            image, label = data["image"], data["label"]
        if image.ndim != 2:
            raise ValueError(f"{name}: expected a 2D slice in {path}, found shape {image.shape}")
        return _checked_arrays(image, label, name, path, self.labels, self.intensity)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.load(index)
        if self.transform is not None:
            image_t, label_t = self.transform(image, label, self.rng(index))
        else:
            image_t = torch.from_numpy(image[None].copy())  # (H, W) -> (1, H, W)
            label_t = torch.from_numpy(label)
        return {"image": image_t, "label": label_t, "name": self.names[index]}


class SynapseVolumeDataset(Dataset):
    """Whole test volumes ``root/test_vol_h5/<case>.npy.h5`` as :class:`~msa2net.data.source.Case` records.

    Spacing comes from ``spacing.json`` (None without it); :meth:`from_train_slices` stacks training slices instead.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        cases: Iterable[str | int] | None = None,
        list_file: str = "test_vol.txt",
        labels: str = "synapse8",
        intensity: str = "strict",
    ) -> None:
        root = Path(root)
        listed = [_case_of(n) for n in _read_list(root, list_file)]
        names = _filter_cases(list(dict.fromkeys(listed)), cases, root / "lists_Synapse" / list_file)
        self._setup(root, names, labels, intensity, source="h5")

    def _setup(self, root: Path, case_names: list[str], labels: str, intensity: str, source: str) -> None:
        _check_modes(labels, intensity)
        self.root = root
        self.case_names = case_names
        self.labels = labels
        self.intensity = intensity
        self.source = source
        self._spacing = _read_spacing(root)

    @classmethod
    def from_train_slices(
        cls,
        root: str | os.PathLike[str],
        cases: Iterable[str | int],
        labels: str = "synapse8",
        intensity: str = "strict",
    ) -> SynapseVolumeDataset:
        """Volumes assembled from ``train_npz/<case>_sliceZZZ.npz`` stacked in slice order (for validation)."""
        root = Path(root)
        names = sorted({case_name(c) for c in cases})
        if not names:
            raise ValueError("no cases given; pass the held-out training cases, e.g. from split_train_val")
        slice_dir = root / "train_npz"
        missing = [c for c in names if not any(slice_dir.glob(f"{c}_slice*.npz"))]
        if missing:
            raise ValueError(
                f"no slices for {missing} in {slice_dir}; these cases are not training cases of this root "
                f"(see available_cases(root, 'train.txt'))"
            )
        dataset = cls.__new__(cls)
        dataset._setup(root, names, labels, intensity, source="slices")
        return dataset

    def __len__(self) -> int:
        return len(self.case_names)

    def __iter__(self) -> Iterator[Case]:
        """Yield the volumes one at a time (each is loaded when reached)."""
        for index in range(len(self)):
            yield self[index]

    def _load_h5(self, case: str) -> tuple[np.ndarray, np.ndarray, Path]:
        path = self.root / "test_vol_h5" / f"{case}.npy.h5"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed but missing; re-run msa2net prepare synapse")
        try:
            with h5py.File(path, "r") as handle:
                if "image" not in handle or "label" not in handle:
                    raise ValueError(f"{path} holds datasets {sorted(handle.keys())}, expected 'image' and 'label'")
                image, label = handle["image"][()], handle["label"][()]
        except OSError as err:
            raise ValueError(
                f"cannot read {path} ({err}); the file is damaged: re-run msa2net prepare synapse"
            ) from err
        return image, label, path

    def _load_slices(self, case: str) -> tuple[np.ndarray, np.ndarray, Path]:
        slice_dir = self.root / "train_npz"
        found = {
            int(match.group(2)): path
            for path in slice_dir.glob(f"{case}_slice*.npz")
            if (match := _SLICE_RE.match(path.stem))
        }
        gaps = sorted(set(range(max(found, default=-1) + 1)) - set(found))
        if not found or gaps:
            raise ValueError(
                f"{case}: slices {gaps[:10]} missing in {slice_dir}; the volume cannot be assembled: "
                f"re-run msa2net prepare synapse"
            )
        images, labels = [], []
        for z in range(len(found)):
            with np.load(found[z]) as data:
                images.append(data["image"])
                labels.append(data["label"])
        return np.stack(images), np.stack(labels), slice_dir / f"{case}_slice*.npz"

    def __getitem__(self, index: int) -> Case:
        case = self.case_names[index]
        image, label, source = self._load_h5(case) if self.source == "h5" else self._load_slices(case)
        if image.ndim != 3:
            raise ValueError(f"{case}: expected a (D, H, W) volume in {source}, found shape {image.shape}")
        image, label = _checked_arrays(image, label, case, source, self.labels, self.intensity)
        spacing, geometry = None, None
        if (value := self._spacing.get(case)) is not None:
            spacing = (float(value[0]), float(value[1]), float(value[2]))
            geometry = Geometry(spacing=spacing[::-1], origin=(0.0,) * 3, direction=Geometry.identity(3).direction)
        return Case(case, image, label, spacing, geometry)


@register_source
class SynapseSource(Source):
    """A prepared Synapse folder as a :class:`Source`: ``train.txt`` cases train, ``test_vol.txt`` cases test."""

    kind = "synapse"
    OPTIONS = {"labels": LABEL_MODES, "intensity": INTENSITY_MODES}

    def __init__(self, root: str | os.PathLike[str], labels: str = "synapse8", intensity: str = "strict") -> None:
        _check_modes(labels, intensity)
        self.root = Path(root)
        self.labels, self.intensity = labels, intensity
        self.class_names = list(CLASS_NAMES)
        self.in_channels = 1
        self.preprocessing = CT_PREPROCESSING

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "lists_Synapse").is_dir() and ((root / "train_npz").is_dir() or (root / "test_vol_h5").is_dir())

    def dataset_record(self) -> DatasetRecord:
        """The Synapse record of :data:`msa2net.constants.BUILTIN_DATASETS` (name, description, reference, ...)."""
        return builtin_dataset("synapse", self.class_names, ["CT"])

    def normalize_id(self, case: str) -> str:
        return case_name(case)

    def train_ids(self) -> list[str]:
        return available_cases(self.root, "train.txt")

    def test_ids(self) -> list[str]:
        if not (self.root / "lists_Synapse" / "test_vol.txt").is_file():
            return []
        return available_cases(self.root, "test_vol.txt")

    def training_dataset(
        self, ids: Sequence[str], transform: Callable[..., tuple[torch.Tensor, torch.Tensor]], seed: int
    ) -> SynapseSliceDataset:
        return SynapseSliceDataset(
            self.root, cases=ids, transform=transform, labels=self.labels, intensity=self.intensity, seed=seed
        )

    def cases(self, ids: Sequence[str], preprocessing: Preprocessing | None = None) -> Iterator[Case]:
        # prepared data are stored windowed to [0, 1]: no raw mapping to apply
        test = set(self.test_ids())
        for case in (self.normalize_id(c) for c in ids):
            volumes = SynapseVolumeDataset if case in test else SynapseVolumeDataset.from_train_slices
            yield volumes(self.root, [case], labels=self.labels, intensity=self.intensity)[0]
