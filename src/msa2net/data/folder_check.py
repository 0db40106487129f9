"""Users' own data in an nnU-Net-like folder: ``dataset.json`` and the complete check of a folder's files.

:func:`load_dataset_json` reads the description (:class:`DatasetSpec`); :func:`validate_folder` reads every case and
lists every problem at once (unpaired files, label values not in ``dataset.json``, image/label geometry mismatches,
NaN/inf voxels, ...). :mod:`msa2net.data.folder` builds the datasets and the :class:`~msa2net.data.source.Source` on
the :class:`FolderReport` it returns. The layout is described there.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msa2net.data.io import IMAGE_SUFFIXES, RASTER_SUFFIXES, Geometry, ImageReadError, read_image
from msa2net.data.preprocessing import Preprocessing

#: Relative tolerance when comparing image and label geometry (spacing, origin) and absolute for direction cosines.
GEOMETRY_TOLERANCE: float = 1e-3

_EXAMPLE_JSON = '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}'
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# Companion data files of .mhd headers live beside them and are not images of their own.
_MHD_DATA_SUFFIXES = (".raw", ".zraw")

__all__ = [
    "GEOMETRY_TOLERANCE",
    "DatasetSpec",
    "FolderReport",
    "FolderValidationError",
    "load_dataset_json",
    "validate_folder",
]

PathLike = str | os.PathLike[str]


class FolderValidationError(ValueError):
    """A dataset folder has problems; :attr:`problems` lists every one, the message shows them all."""

    def __init__(self, root: PathLike, problems: Sequence[str]) -> None:
        self.root = Path(root)
        self.problems = list(problems)
        listing = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"dataset folder {self.root} has {len(self.problems)} problem(s):\n{listing}\n"
            "Fix them and run again (expected layout: dataset.json, imagesTr/<case>_0000<file_ending>, "
            "labelsTr/<case><file_ending>)."
        )


# ----------------------------------------------------------------------------------------------------------
# dataset.json
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DatasetSpec:
    """The contents of ``dataset.json``: labels are name -> id (``0..K-1``); the free-text fields go to model cards."""

    root: Path
    channel_names: list[str]
    labels: dict[str, int]
    file_ending: str
    num_training: int | None = None
    name: str | None = None
    description: str | None = None
    reference: str | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes including background (max label id + 1)."""
        return max(self.labels.values()) + 1

    @property
    def class_names(self) -> list[str]:
        """Class names ordered by id."""
        return [name for name, _ in sorted(self.labels.items(), key=lambda item: item[1])]

    @property
    def in_channels(self) -> int:
        """Number of image channels."""
        return len(self.channel_names)

    @property
    def dims(self) -> int:
        """2 for raster datasets (PNG/JPG/...), 3 for volume formats."""
        return 2 if self.file_ending.lower() in RASTER_SUFFIXES else 3

    def preprocessing(self) -> Preprocessing:
        """The default intensity mapping: ``ct_window`` (all channels CT), ``rgb`` (3-channel 2D), else ``zscore``."""

        n = self.in_channels
        if all(name.strip().lower() == "ct" for name in self.channel_names):
            return Preprocessing(kind="ct_window", in_channels=n)
        if self.dims == 2 and n == 3:
            return Preprocessing(kind="rgb", in_channels=3)
        return Preprocessing(kind="zscore", in_channels=n)


def _parse_channel_names(raw: Any, problems: list[str]) -> list[str]:
    if isinstance(raw, list):
        items = dict(enumerate(raw))
    elif isinstance(raw, dict):
        items = {}
        for key, value in raw.items():
            try:
                items[int(key)] = value
            except (TypeError, ValueError):
                problems.append(f'dataset.json: channel_names key {key!r} is not a channel index ("0", "1", ...)')
    else:
        problems.append(f'dataset.json: channel_names must be an object like {{"0": "CT"}}, got {type(raw).__name__}')
        return []
    if not items:
        problems.append('dataset.json: channel_names is empty; give at least one channel, e.g. {"0": "CT"}')
        return []
    if sorted(items) != list(range(len(items))):
        problems.append(
            f"dataset.json: channel_names indices must be 0..{len(items) - 1} without gaps, got {sorted(items)}"
        )
        return []
    names = [items[i] for i in range(len(items))]
    if not all(isinstance(name, str) for name in names):
        problems.append(f"dataset.json: channel_names values must be strings, got {names}")
        return []
    return names


def _parse_labels(raw: Any, problems: list[str]) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        problems.append(
            f'dataset.json: labels must be a non-empty object name -> id like {{"background": 0, "liver": 1}}, '
            f"got {raw!r}"
        )
        return {}
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(
                f"dataset.json: label {name!r} has id {value!r}; ids must be integers "
                "(region-based labels with lists of ids are not supported)"
            )
            continue
        labels[name] = value
    if len(labels) != len(raw):
        return {}
    ids = sorted(labels.values())
    if ids != list(range(len(ids))):
        problems.append(
            f"dataset.json: label ids must be 0..K-1, each once, with 0 the background; got {ids}. "
            "Renumber the classes (and the label files) contiguously"
        )
        return {}
    return labels


def load_dataset_json(root: PathLike) -> DatasetSpec:
    """Read and check ``root/dataset.json``; every problem is listed in one :class:`FolderValidationError`."""
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise FolderValidationError(root, [f"dataset.json is missing; create {path} like {_EXAMPLE_JSON}"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FolderValidationError(root, [f"dataset.json is not valid JSON ({err}); fix the syntax"]) from err
    if not isinstance(data, dict):
        raise FolderValidationError(root, [f"dataset.json must hold an object like {_EXAMPLE_JSON}"])

    problems: list[str] = []
    missing = [key for key in ("channel_names", "labels", "file_ending") if key not in data]
    if missing:
        problems.append(f"dataset.json lacks required keys {missing}; expected e.g. {_EXAMPLE_JSON}")
    channel_names = _parse_channel_names(data["channel_names"], problems) if "channel_names" in data else []
    labels = _parse_labels(data["labels"], problems) if "labels" in data else {}
    file_ending = data.get("file_ending", "")
    if "file_ending" in data and (not isinstance(file_ending, str) or file_ending.lower() not in IMAGE_SUFFIXES):
        problems.append(
            f"dataset.json: file_ending {file_ending!r} is not supported; use one of {', '.join(IMAGE_SUFFIXES)}"
        )
    num_training = data.get("numTraining")
    if num_training is not None and (isinstance(num_training, bool) or not isinstance(num_training, int)):
        problems.append(f"dataset.json: numTraining must be an integer, got {num_training!r}")
        num_training = None
    if problems:
        raise FolderValidationError(root, problems)
    # free text for model cards only: anything but a non-empty string is ignored, never an error
    text = {k: data[k].strip() for k in ("name", "description", "reference") if isinstance(data.get(k), str)}
    return DatasetSpec(root, channel_names, labels, file_ending, num_training, **{k: v for k, v in text.items() if v})


# ----------------------------------------------------------------------------------------------------------
# Scanning and reading cases
# ----------------------------------------------------------------------------------------------------------


def _entry_problem(path: Path) -> str | None:
    """Why a folder entry is not a readable regular file (symbolic links to one are fine), or None when it is one."""
    try:
        info = path.stat()  # follows symbolic links
    except OSError as err:
        if path.is_symlink():
            target = os.readlink(path)
            if err.errno == errno.ELOOP:
                return f"is a symbolic link that loops (-> {target}); replace it with the file or a link to it"
            return f"is a broken symbolic link (-> {target}, which does not exist); fix the link or remove it"
        return f"cannot be accessed ({err.strerror or err}); check the file and its permissions"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder; files must lie directly in this folder, not in subfolders: move them up or remove it"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a pipe, socket or device); replace it with the file or remove it"
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        return f"cannot be read ({err.strerror or err}); fix its permissions"
    return None


def _visible_files(folder: Path, spec: DatasetSpec, root: Path, problems: list[str]) -> list[tuple[Path, str]]:
    """``(file, name without file_ending)`` of the readable regular files directly in ``folder``, sorted.

    Hidden entries are ignored; any other entry that is not such a file (broken link, subfolder, wrong ending) is a
    problem, so a dataset is never silently trained on fewer cases than the folder shows.
    """
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        problems.append(f"{folder.relative_to(root)}/ cannot be listed ({err.strerror or err}); fix its permissions")
        return []
    ending = spec.file_ending
    files: list[tuple[Path, str]] = []
    for path in entries:
        if path.name.startswith("."):
            continue
        problem = _entry_problem(path)
        if problem is None and ending == ".mhd" and path.name.lower().endswith(_MHD_DATA_SUFFIXES):
            continue  # the data file beside an .mhd header
        if problem is None and not path.name.endswith(ending):
            problem = f"does not end with file_ending {ending!r} from dataset.json; rename or remove it"
        if problem is None:
            files.append((path, path.name[: -len(ending)]))
        else:
            problems.append(f"{path.relative_to(root)}: {problem}")
    return files


def _scan_images(folder: Path, spec: DatasetSpec, root: Path, problems: list[str]) -> dict[str, dict[int, Path]]:
    """Case -> {channel index -> file} for one images folder; unexpected names and unreadable entries are problems."""
    cases: dict[str, dict[int, Path]] = {}
    for path, stem in _visible_files(folder, spec, root, problems):
        rel = path.relative_to(root)
        match = _CHANNEL_RE.match(stem)
        if match is None:
            problems.append(f"{rel}: image names must be <case>_XXXX{spec.file_ending} (channel suffix such as _0000)")
            continue
        channel = int(match["channel"])
        if channel >= spec.in_channels:
            problems.append(
                f"{rel}: channel {channel} but dataset.json declares {spec.in_channels} channel(s) "
                f"{spec.channel_names}; remove the file or add the channel to channel_names"
            )
            continue
        cases.setdefault(match["case"], {})[channel] = path
    return cases


def _channels_ok(case: str, channels: dict[int, Path], spec: DatasetSpec, folder: str, problems: list[str]) -> bool:
    """Whether every channel file is there (a single RGB file counts for 3-channel 2D data); else a problem."""
    n = spec.in_channels
    if spec.dims == 2 and n == 3 and set(channels) == {0}:
        return True  # one RGB file; its channel count is checked when read
    missing = [i for i in range(n) if i not in channels]
    if missing:
        names = ", ".join(f"{folder}/{case}_{i:04d}{spec.file_ending}" for i in missing)
        problems.append(
            f"case {case}: missing channel file(s) {names} (dataset.json declares {n} channel(s) {spec.channel_names})"
        )
    return not missing


def _geometry_differences(a: Geometry, b: Geometry) -> list[str]:
    if a.ndim != b.ndim:
        return [f"dimension {a.ndim}D vs {b.ndim}D"]
    tol = GEOMETRY_TOLERANCE
    diffs = []
    if any(abs(x - y) > tol * max(abs(x), abs(y)) for x, y in zip(a.spacing, b.spacing)):
        diffs.append(f"spacing {a.spacing} vs {b.spacing}")
    if any(abs(x - y) > tol * max(1.0, abs(x), abs(y)) for x, y in zip(a.origin, b.origin)):
        diffs.append(f"origin {a.origin} vs {b.origin}")
    if any(abs(x - y) > tol for x, y in zip(a.direction, b.direction)):
        diffs.append(f"direction {a.direction} vs {b.direction}")
    return diffs


@dataclass
class _Case:
    image: np.ndarray  # raw values, spatial [+ channels-last when several channels]
    label: np.ndarray | None  # (spatial) integer ids, or None for unlabelled cases
    geometry: Geometry


def _read_case(
    case: str, channels: dict[int, Path], label_path: Path | None, spec: DatasetSpec, root: Path
) -> tuple[_Case | None, list[str]]:
    """Read and check one case; returns (case data or None, problems)."""
    problems: list[str] = []
    arrays: list[np.ndarray] = []
    geometries: list[Geometry] = []
    for _, path in sorted(channels.items()):
        rel = path.relative_to(root)
        try:
            array, geometry = read_image(path)
        except ImageReadError as err:
            problems.append(f"case {case}: {err}")
            continue
        if spec.dims == 3 and array.ndim == 2:
            array = array[None]  # a single-slice volume stored as 2D: (Y, X) -> (1, Y, X)
        one_rgb_file = spec.dims == 2 and spec.in_channels == 3 and len(channels) == 1
        expected_ndim = spec.dims + (1 if one_rgb_file else 0)
        if array.ndim != expected_ndim or (one_rgb_file and array.shape[-1] != 3):
            what = "an RGB image (H, W, 3)" if one_rgb_file else f"a single-channel {spec.dims}D image"
            problems.append(
                f"case {case}: {rel} has shape {array.shape} but {what} was expected "
                f"(dataset.json declares {spec.in_channels} channel(s) {spec.channel_names}); "
                "store one channel per file or fix channel_names"
            )
            continue
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            problems.append(f"case {case}: {rel} holds {n_bad} NaN/infinite values; fix or re-export the file")
            continue
        arrays.append(array)
        geometries.append(geometry)
    if problems:
        return None, problems

    spatial = arrays[0].shape[: spec.dims]
    for index, (array, geometry) in enumerate(zip(arrays[1:], geometries[1:]), start=1):
        rel = channels[index].relative_to(root)
        if array.shape != arrays[0].shape:
            problems.append(f"case {case}: channel file {rel} has shape {array.shape}, channel 0 has {arrays[0].shape}")
        elif spec.dims == 3 and (diffs := _geometry_differences(geometries[0], geometry)):
            problems.append(f"case {case}: channel file {rel} geometry differs from channel 0: {'; '.join(diffs)}")
    if problems:
        return None, problems
    image = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)  # channels last

    label = None
    if label_path is not None:
        rel = label_path.relative_to(root)
        try:
            label_raw, label_geometry = read_image(label_path)
        except ImageReadError as err:
            return None, [f"case {case}: {err}"]
        if spec.dims == 3 and label_raw.ndim == 2:
            label_raw = label_raw[None]
        if label_raw.shape != spatial:
            hint = " (a colour label image: save labels as single-channel PNG)" if label_raw.ndim == 3 else ""
            problems.append(
                f"case {case}: label {rel} has shape {label_raw.shape} but the image has {spatial}{hint}; "
                "image and label must be on the same grid"
            )
        if spec.dims == 3 and (diffs := _geometry_differences(geometries[0], label_geometry)):
            problems.append(
                f"case {case}: image and label {rel} geometry differ: {'; '.join(diffs)}; resample the label onto "
                "the image grid (or fix the header)"
            )
        if not np.issubdtype(label_raw.dtype, np.integer) and not np.array_equal(label_raw, np.round(label_raw)):
            problems.append(f"case {case}: label {rel} holds non-integer values; labels must be whole class ids")
        else:
            unknown = sorted(set(np.unique(label_raw).astype(np.int64).tolist()) - set(spec.labels.values()))
            if unknown:
                problems.append(
                    f"case {case}: label {rel} holds values {unknown} not in dataset.json labels "
                    f"{sorted(spec.labels.values())} ({', '.join(spec.class_names)}); add them to labels or fix the "
                    "file"
                )
        if problems:
            return None, problems
        label = label_raw.astype(np.uint8 if spec.num_classes <= 256 else np.int32)
    return _Case(image, label, geometries[0]), []


@dataclass
class FolderReport:
    """Outcome of :func:`validate_folder`: the labelled training ``cases``, ``imagesTs`` ``test_cases`` (those with
    a ``labelsTs/`` label are ``labelled_test_cases``) and the spatial shape of every case read."""

    root: Path
    spec: DatasetSpec
    dims: int
    cases: list[str]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    test_cases: list[str] = field(default_factory=list)
    labelled_test_cases: list[str] = field(default_factory=list)

    @property
    def num_slices(self) -> int:
        """Number of 2D training samples (slices of volumes, or images) of the checked labelled training cases."""
        cases = set(self.cases)
        training = [shape for case, shape in self.shapes.items() if case in cases]
        return sum(shape[0] for shape in training) if self.dims == 3 else len(training)


def _validate(
    root: PathLike,
    read_cases: Sequence[str] | None = None,
    on_case: Callable[[str, _Case], None] | None = None,
) -> FolderReport:
    """Validate the folder; read (and hand to ``on_case``) the cases in ``read_cases`` (None: all)."""
    root = Path(root)
    if not root.is_dir():
        raise FolderValidationError(root, [f"{root} is not a folder; pass the dataset root holding dataset.json"])
    problems: list[str] = []
    try:
        spec = load_dataset_json(root)
    except FolderValidationError as err:
        problems.extend(err.problems)
        spec = None
    for sub in ("imagesTr", "labelsTr"):
        if not (root / sub).is_dir():
            problems.append(f"{sub}/ is missing; create {root / sub}")
    if spec is None or problems:
        raise FolderValidationError(root, problems)

    images = _scan_images(root / "imagesTr", spec, root, problems)
    labels = {stem: path for path, stem in _visible_files(root / "labelsTr", spec, root, problems)}
    if not images and not labels:
        problems.append(
            f"no cases found: imagesTr/ and labelsTr/ hold no {spec.file_ending} files; add "
            f"imagesTr/<case>_0000{spec.file_ending} and labelsTr/<case>{spec.file_ending}"
        )
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        problems.append(
            f"images without labels (no labelsTr/<case>{spec.file_ending}) for case(s): {', '.join(unlabelled)}; "
            "add the labels or move these images to imagesTs/"
        )
    orphans = sorted(set(labels) - set(images))
    if orphans:
        problems.append(
            f"labels without images (no imagesTr/<case>_0000{spec.file_ending}) for case(s): {', '.join(orphans)}"
        )
    paired = sorted(set(images) & set(labels))
    complete = [case for case in paired if _channels_ok(case, images[case], spec, "imagesTr", problems)]
    if spec.num_training is not None and images and spec.num_training != len(paired):
        problems.append(
            f"dataset.json numTraining is {spec.num_training} but {len(paired)} labelled case(s) were found; "
            "update numTraining (or remove it) or add the missing cases"
        )

    test_images = _scan_images(root / "imagesTs", spec, root, problems) if (root / "imagesTs").is_dir() else {}
    test_cases = [c for c in sorted(test_images) if _channels_ok(c, test_images[c], spec, "imagesTs", problems)]
    test_labels = _check_test_labels(root, spec, test_images, images, problems)
    labelled_test = [c for c in test_cases if c in test_labels]

    wanted = None if read_cases is None else set(read_cases)
    to_read = [(case, images[case], labels[case]) for case in complete if wanted is None or case in wanted] + [
        (case, test_images[case], test_labels[case]) for case in labelled_test if wanted is None or case in wanted
    ]
    shapes: dict[str, tuple[int, ...]] = {}
    for case, case_images, case_label in to_read:
        data, case_problems = _read_case(case, case_images, case_label, spec, root)
        problems.extend(case_problems)
        if data is not None:
            shapes[case] = tuple(data.label.shape)  # type: ignore[union-attr]
            if on_case is not None and not problems:
                on_case(case, data)
    if problems:
        raise FolderValidationError(root, problems)
    return FolderReport(root, spec, spec.dims, complete, shapes, test_cases, labelled_test)


def _check_test_labels(
    root: Path,
    spec: DatasetSpec,
    test_images: dict[str, dict[int, Path]],
    train_images: dict[str, dict[int, Path]],
    problems: list[str],
) -> dict[str, Path]:
    """Labels of the labelled test cases (``labelsTs/``), pairing problems appended; empty without ``labelsTs/``."""
    if not (root / "labelsTs").is_dir():
        return {}
    labels = {stem: path for path, stem in _visible_files(root / "labelsTs", spec, root, problems)}
    if not (root / "imagesTs").is_dir():
        problems.append(
            f"labelsTs/ exists but imagesTs/ does not; put the test images in {root / 'imagesTs'} "
            f"(<case>_0000{spec.file_ending}) or remove labelsTs/"
        )
        return {}
    unlabelled = sorted(set(test_images) - set(labels))
    if unlabelled:
        problems.append(
            f"test images without labels (no labelsTs/<case>{spec.file_ending}) for case(s): {', '.join(unlabelled)}; "
            "labelsTs/ makes imagesTs/ labelled test cases, so label every one of them (or move the unlabelled "
            "images to another folder)"
        )
    orphans = sorted(set(labels) - set(test_images))
    if orphans:
        problems.append(
            f"test labels without images (no imagesTs/<case>_0000{spec.file_ending}) for case(s): {', '.join(orphans)}"
        )
    clash = sorted(set(labels) & set(test_images) & set(train_images))
    if clash:
        problems.append(
            f"case id(s) {', '.join(clash)} are both training cases (imagesTr/) and labelled test cases (imagesTs/); "
            "rename one of each pair so that every case id names one case"
        )
    return {case: path for case, path in labels.items() if case in test_images and case not in clash}


def validate_folder(root: PathLike) -> FolderReport:
    """Check a dataset folder completely, reading every labelled case, and describe it.

    Raises :class:`FolderValidationError` listing every problem found (names, pairing, channels, label values,
    shapes, geometry within :data:`GEOMETRY_TOLERANCE`, NaN/inf), each naming the file or case.
    """
    return _validate(root)


def _reread_case(root: Path, spec: DatasetSpec, case: str, test: bool = False) -> _Case:
    """Read one labelled (``test``: labelled test) case again after validation; files may have changed since."""

    images, labels = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
    channels = {i: root / images / f"{case}_{i:04d}{spec.file_ending}" for i in range(spec.in_channels)}
    present = {i: p for i, p in channels.items() if p.is_file()}
    problems = [] if present else [f"case {case}: {images}/{case}_0000{spec.file_ending} is gone"]
    if not (present and _channels_ok(case, present, spec, images, problems)):
        raise FolderValidationError(root, problems)

    data, problems = _read_case(case, present, root / labels / f"{case}{spec.file_ending}", spec, root)
    if data is None:
        raise FolderValidationError(root, problems)
    return data
