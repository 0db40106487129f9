"""Users' own data in an nnU-Net-like folder: the slice-wise training dataset, the per-case volume dataset and the
:class:`~msa2net.data.source.Source`; ``dataset.json`` and validation are in :mod:`msa2net.data.folder_check`.

Layout: ``dataset.json``, ``imagesTr/<case>_0000<file_ending>`` (one file per channel; a 3-channel 2D case may be
one RGB file), ``labelsTr/<case><file_ending>``, optional ``imagesTs/`` and, making those labelled test cases,
``labelsTs/``. Volumes train slice by slice along the first array axis, 2D rasters one image per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from msa2net.constants import DatasetRecord
from msa2net.data.folder_check import (  # noqa: F401 (re-exported: the folder's public names in one place)
    GEOMETRY_TOLERANCE,
    DatasetSpec,
    FolderReport,
    FolderValidationError,
    PathLike,
    _Case,
    _reread_case,
    _validate,
    load_dataset_json,
    validate_folder,
)
from msa2net.data.io import Geometry
from msa2net.data.orientation import axis_code
from msa2net.data.preprocessing import Preprocessing
from msa2net.data.source import Case, EpochSeededDataset, Source, register_source
from msa2net.data.transforms import SegmentationTransform

__all__ = [
    "DatasetSpec",
    "FolderReport",
    "FolderSliceDataset",
    "FolderSource",
    "FolderValidationError",
    "FolderVolumeDataset",
    "GEOMETRY_TOLERANCE",
    "load_dataset_json",
    "validate_folder",
]


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------


def _select_cases(report: FolderReport, cases: Sequence[str] | None, with_test: bool = False) -> list[str]:
    """``cases`` (default: every labelled training case), checked against the report's labelled cases; ``with_test``
    also accepts the labelled test cases."""
    available = list(report.cases) + (list(report.labelled_test_cases) if with_test else [])
    if cases is None:
        return list(report.cases)
    unknown = sorted(set(cases) - set(available))
    if unknown:
        shown = ", ".join(available[:10]) + (" ..." if len(available) > 10 else "")
        only = "" if with_test else " for training (labelled test cases never train)"
        raise ValueError(f"case(s) {unknown} are not labelled cases of {report.root}{only}; available: {shown}")
    return sorted(set(cases))


def _resolve_preprocessing(spec: DatasetSpec, preprocessing: Preprocessing | None) -> Preprocessing:
    prep = spec.preprocessing() if preprocessing is None else preprocessing
    if prep.in_channels != spec.in_channels:
        raise ValueError(
            f"preprocessing has in_channels={prep.in_channels} but {spec.root}/dataset.json declares "
            f"{spec.in_channels} channel(s) {spec.channel_names}; use a matching preprocessing"
        )
    return prep


def _to_unit(prep: Preprocessing, case: str, image: np.ndarray) -> np.ndarray:
    try:
        return prep.to_unit(image)
    except ValueError as err:
        raise ValueError(f"case {case}: {err}") from err


class FolderSliceDataset(EpochSeededDataset):
    """Training samples from a dataset folder: every slice of 3D cases, every image of 2D cases.

    Items ``{"image", "label", "name": "<case>:<slice>"}`` from ``transform(image_unit, label, rng)`` (default:
    ``preprocessing.normalize`` only); ``to_unit`` maps whole volumes, so slices of a case share it. ``preload``
    keeps every case in memory; a ``report`` of a complete validation skips validating the folder again. Labelled
    test cases never train.
    """

    def __init__(
        self,
        root: PathLike,
        cases: Sequence[str] | None = None,
        transform: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
        seed: int = 0,
        preload: bool = True,
        preprocessing: Preprocessing | None = None,
        report: FolderReport | None = None,
    ) -> None:
        super().__init__(seed)
        self.root = Path(root)
        self.spec = load_dataset_json(self.root)
        self.preprocessing = _resolve_preprocessing(self.spec, preprocessing)
        self.preload = preload
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def keep(case: str, data: _Case) -> None:
            self._cache[case] = (_to_unit(self.preprocessing, case, data.image), data.label)  # type: ignore[assignment]

        if report is None:
            report = _validate(self.root, read_cases=cases, on_case=keep if preload else None)
            self.cases = _select_cases(report, cases)
            for case in report.labelled_test_cases:  # read to validate the folder, but they never train
                self._cache.pop(case, None)
        else:
            self.cases = _select_cases(report, cases)
            for case in self.cases if preload else ():
                keep(case, _reread_case(self.root, self.spec, case))
        self.report = report
        self.dims = report.dims
        self.num_classes = self.spec.num_classes
        self.in_channels = self.spec.in_channels
        self.transform = transform or SegmentationTransform(augment=None, size=None, preprocessing=self.preprocessing)
        # (case, slice) per item; 2D cases are one item with slice 0.
        self.index: list[tuple[str, int]] = []
        for case in self.cases:
            depth = report.shapes[case][0] if self.dims == 3 else 1
            self.index.extend((case, z) for z in range(depth))

    def __len__(self) -> int:
        return len(self.index)

    def _load(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        if case in self._cache:
            return self._cache[case]
        data = _reread_case(self.root, self.spec, case)
        return _to_unit(self.preprocessing, case, data.image), data.label  # type: ignore[return-value]

    def __getitem__(self, index: int) -> dict[str, Any]:
        case, z = self.index[index]
        image_unit, label = self._load(case)
        if self.dims == 3:
            image_unit, label = image_unit[z], label[z]
        image, label_t = self.transform(image_unit, label, self.rng(index))
        return {"image": image, "label": label_t, "name": f"{case}:{z}"}


class FolderVolumeDataset:
    """Whole labelled cases (training or labelled test) as :class:`~msa2net.data.source.Case` records, read on access.

    2D images become one-slice volumes with nominal spacing ``(1, 1, 1)``; a ``report`` skips validating again.
    """

    def __init__(
        self,
        root: PathLike,
        cases: Sequence[str] | None = None,
        preprocessing: Preprocessing | None = None,
        report: FolderReport | None = None,
    ) -> None:
        self.root = Path(root)
        self.spec = load_dataset_json(self.root)
        self.preprocessing = _resolve_preprocessing(self.spec, preprocessing)
        self.report = _validate(self.root, read_cases=cases) if report is None else report
        self.cases = _select_cases(self.report, cases, with_test=True)
        self._test = set(self.report.labelled_test_cases)
        self.dims = self.report.dims
        self.num_classes = self.spec.num_classes

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index: int) -> Case:
        case = self.cases[index]
        data = _reread_case(self.root, self.spec, case, test=case in self._test)
        image = _to_unit(self.preprocessing, case, data.image)
        label = data.label.astype(np.int64)  # type: ignore[union-attr]
        spacing = tuple(float(v) for v in reversed(data.geometry.spacing))
        if self.dims == 2:
            image, label, spacing = image[None], label[None], (1.0, *spacing[-2:])
        return Case(case, image, label, spacing, data.geometry)  # type: ignore[arg-type]


@register_source
class FolderSource(Source):
    """A dataset folder as a :class:`Source`: classes, channels and mapping from ``dataset.json``; labelled test
    cases are :meth:`test_ids`. The folder is validated completely once, on first use, and the report reused."""

    kind = "folder"

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        self.spec = load_dataset_json(self.root)
        self.class_names = self.spec.class_names
        self.in_channels = self.spec.in_channels
        self.preprocessing = self.spec.preprocessing()
        self._report: FolderReport | None = None

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "dataset.json").is_file()

    def _validated(self) -> FolderReport:
        if self._report is None:
            self._report = validate_folder(self.root)
        return self._report

    def train_ids(self) -> list[str]:
        return list(self._validated().cases)

    def dataset_record(self) -> DatasetRecord:
        """``dataset.json``'s ``name`` (else the folder's name), ``description`` and ``reference``, with the class
        and channel names."""
        record: DatasetRecord = {
            "kind": self.kind,
            "name": self.spec.name or self.root.resolve().name,
            "class_names": list(self.class_names),
            "channel_names": list(self.spec.channel_names),
        }
        if self.spec.description:
            record["description"] = self.spec.description
        if self.spec.reference:
            record["reference"] = self.spec.reference
        return record

    def slice_orientation(self) -> str | None:
        """The axis code of the training volumes' headers when they all share one (None for 2D data or a mix)."""
        report = self._validated()
        if report.dims != 3:
            return None
        codes = set()
        for case in report.cases:
            path = self.root / "imagesTr" / f"{case}_0000{self.spec.file_ending}"
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            try:
                reader.ReadImageInformation()
                geometry = Geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
                codes.add(axis_code(geometry))
            except (RuntimeError, ValueError):
                return None  # unreadable now, 2D, or degenerate: no layout to promise
        return codes.pop() if len(codes) == 1 else None

    def test_ids(self) -> list[str]:
        """The labelled test cases (``imagesTs/`` cases labelled in ``labelsTs/``); empty without ``labelsTs/``."""
        return list(self._validated().labelled_test_cases)

    def training_dataset(
        self, ids: Sequence[str], transform: Callable[..., tuple[torch.Tensor, torch.Tensor]], seed: int
    ) -> FolderSliceDataset:
        return FolderSliceDataset(
            self.root,
            cases=ids,
            transform=transform,
            seed=seed,
            preprocessing=self.preprocessing,
            report=self._validated(),
        )

    def cases(self, ids: Sequence[str], preprocessing: Preprocessing | None = None) -> Iterator[Case]:
        yield from FolderVolumeDataset(
            self.root, cases=ids, preprocessing=preprocessing or self.preprocessing, report=self._validated()
        )
