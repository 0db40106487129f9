"""DICOM series folders: read by GDCM through SimpleITK, after every file is checked with pydicom.

Used by :func:`msa2net.data.io.read_image` for folders; see there for the array and geometry conventions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataelem import RawDataElement

from .image_file import DICOM_SUFFIXES, REDO, Geometry, ImageReadError, first_line, truncated_error

__all__ = ["read_dicom_series"]

_UNDEFINED_LENGTH = 0xFFFFFFFF  # the declared length of a sequence, item or encapsulated pixel data
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom_series(folder: Path) -> tuple[np.ndarray, Geometry]:
    """Read the one DICOM series in ``folder`` as a ``(Z, Y, X)`` volume with its geometry (``ImageReadError`` else)."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageReadError(
            f"cannot read {folder}: no DICOM series found in this folder; pass a folder of DICOM files"
        )
    if len(series) > 1:
        counts = [len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series]
        listing = ", ".join(f"{sid} ({n} files)" for sid, n in zip(series, counts))
        raise ImageReadError(
            f"cannot read {folder}: it holds {len(series)} DICOM series ({listing}); "
            f"move each series into its own folder and pass that folder"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    _check_folder(folder, [Path(name) for name in files])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ImageReadError(f"cannot read DICOM series in {folder}: {first_line(err)}") from err
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def _check_folder(folder: Path, series: list[Path]) -> None:
    """Refuse a series folder holding a cut DICOM file.

    GDCM silently leaves a file it cannot parse out of the series (ITK only warns), so a cut slice would make the
    volume one slice shorter (with a wrong slice spacing). pydicom reads a cut Part 10 file without an error either,
    but the element it is cut in comes back shorter than its declared length, and a file cut between two elements
    ends before its pixel data: every file in the folder with the ``DICM`` marker is read by pydicom and refused then
    (a DICOM object without pixel data, such as a report, cannot be told from a cut slice, so it is refused too). A
    file with a DICOM suffix and no marker that GDCM left out is refused as well.
    """
    members = {p.resolve() for p in series}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.upper() == "DICOMDIR" or not path.is_file():
            continue
        size = path.stat().st_size
        try:
            with open(path, "rb") as handle:
                handle.seek(128)
                marked = handle.read(4) == b"DICM"
                handle.seek(0)
                dataset = pydicom.dcmread(handle) if marked else None
        except PermissionError as err:
            raise ImageReadError(f"cannot read {path}: permission denied ({err}); make the file readable") from err
        except Exception as err:  # pydicom reports a damaged file meta group with many exception types
            raise ImageReadError(
                f"cannot read {path}: the file is truncated or corrupt: pydicom cannot parse it "
                f"({type(err).__name__}: {err}); {REDO}"
            ) from err
        if dataset is None:
            if path.resolve() not in members and path.name.lower().endswith(DICOM_SUFFIXES):
                raise truncated_error(
                    path,
                    f"it holds {size} bytes and no DICOM header, so the series in {folder} would be read without it",
                )
            continue
        for element in map(dataset.get_item, dataset.keys()):
            if isinstance(element, RawDataElement) and element.length != _UNDEFINED_LENGTH:
                if len(element.value or b"") < element.length:
                    raise truncated_error(
                        path, f"the DICOM file stops after {size} bytes, inside element {element.tag}"
                    )
        if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
            raise truncated_error(path, f"the DICOM file stops after {size} bytes, before its pixel data")
