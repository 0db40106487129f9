"""Users' own data in an nnU-Net-like folder: the slice-wise training dataset, the per-case volume dataset and the
:class:`~msa2net.data.source.Source`; ``dataset.json`` and validation are in :mod:`msa2net.data.folder_check`.

Layout::

    root/
      dataset.json           {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
                              "file_ending": ".nii.gz", "numTraining": 2}   (numTraining optional)
      imagesTr/<case>_0000<file_ending>   one file per channel, suffix _0000, _0001, ...
      labelsTr/<case><file_ending>        integer label map, values from dataset.json "labels"
      imagesTs/<case>_0000<file_ending>   optional test images
      labelsTs/<case><file_ending>        optional: labels of every imagesTs case, which makes them labelled test
                                          cases (validated like training cases, scored by ``evaluate`` by default)

Files are 3D volumes (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``) trained slice by slice along the
first array axis (axial for the usual ``(Z, Y, X)`` reading), or 2D rasters (``.png``, ``.jpg``, ...) trained one
image per sample. A 3-channel 2D dataset may store each case either as one RGB file ``<case>_0000.png`` or as
three grey files ``_0000``, ``_0001``, ``_0002``. Labels of 2D datasets must be lossless (PNG), single channel.

Reading goes through :mod:`msa2net.data.io`, so geometry (spacing, origin, direction) is carried along and the
volume dataset hands it to prediction/evaluation.
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
    """Training samples from a dataset folder: every axial slice of 3D cases, every image of 2D cases.

    Item ``i`` is ``transform(image_unit, label, rng)`` with ``rng = np.random.default_rng([seed, epoch, i])``, so
    augmentation is reproducible and independent of the number of workers; call :meth:`set_epoch` every epoch (it
    reaches persistent DataLoader workers, see :class:`~msa2net.data.source.EpochSeededDataset`).
    ``image_unit`` is the :meth:`Preprocessing.to_unit` output for the slice (``float32`` in [0, 1], ``(H, W)`` for one
    channel, ``(H, W, C)`` for several); the mapping is computed once per whole volume, so slices of a case share it.

    Args:
        root: Dataset folder (validated on construction; problems raise :class:`FolderValidationError`).
        cases: Labelled case ids to use (default all), e.g. one side of :func:`split_cases`.
        transform: ``(image_unit, label, rng) -> (image (C, H, W) float32 tensor, label (H, W) int64 tensor)``,
            e.g. :func:`msa2net.data.transforms.build_transform` with this dataset's ``preprocessing``.
            Default: no augmentation, no resizing, ``preprocessing.normalize``.
        seed: Base seed of the per-item RNG.
        preload: Keep every case's ``to_unit`` volume and label in memory (read once). Without it each item
            re-reads its case from disk (slow for volumes, fine for 2D images).
        preprocessing: Intensity mapping (default ``spec.preprocessing()``, or the one stored in a checkpoint).
        report: The :class:`FolderReport` of a complete validation of this folder (what :class:`FolderSource`
            holds): the folder is then not validated again, only the cases are read (and re-checked).

    Items: ``{"image": float32 (C, H, W), "label": int64 (H, W), "name": "<case>:<slice>"}`` (slice 0 for 2D).
    Labelled test cases (``imagesTs/`` + ``labelsTs/``) never train: ``cases`` must be training cases.
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
    """Whole labelled cases of a dataset folder as :class:`~msa2net.data.source.Case` records, read on access.

    ``image`` is the :meth:`Preprocessing.to_unit` output of the whole case (``float32``, ``(D, H, W[, C])``; a 2D
    image becomes a one-slice volume ``(1, H, W[, C])``), ``label`` int64 of the same spatial shape, ``geometry``
    that of the image file and ``spacing`` in array axis order (mm for volumes; 2D rasters get ``(1, 1, 1)``, their
    pixel spacing being nominal).

    Args:
        root: Dataset folder (validated on construction unless ``report`` is given).
        cases: Labelled case ids, training or labelled test cases (default: every labelled training case).
        preprocessing: Intensity mapping (default ``spec.preprocessing()``).
        report: The :class:`FolderReport` of a complete validation of this folder: skips validating it again.
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
    """A dataset folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``) as a :class:`Source`.

    Classes, channels and the intensity mapping come from ``dataset.json`` (:meth:`DatasetSpec.preprocessing`).
    Every labelled training case can train or validate. Labelled test cases (``imagesTs/`` with ``labelsTs/``) are
    :meth:`test_ids`: ``evaluate`` scores them by default (a folder without them is refused unless the training
    cases are asked for, ``--split train``), and
    ``data.validation=test`` validates on them (with a note that their scores are then no clean test).

    The folder is validated completely once, on first use (every case read and checked); the datasets built from
    this source reuse that report instead of validating again.
    """

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
