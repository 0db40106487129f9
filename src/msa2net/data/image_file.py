"""What every image reader shares: the geometry of an image grid, and the error of a file that cannot be read.

:mod:`msa2net.data.io` (single files) and :mod:`msa2net.data.dicom` (DICOM series) both build on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

__all__ = ["DICOM_SUFFIXES", "REDO", "Geometry", "ImageReadError", "first_line", "truncated_error"]

#: Files with these suffixes mark a folder as a DICOM series folder.
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".ima")
#: The fix every refusal of a broken file ends with.
REDO = "re-export or re-download it"


class ImageReadError(ValueError):
    """A file or folder could not be read as an image; the message names the path, the reason and a fix."""


@dataclass(frozen=True)
class Geometry:
    """Physical placement of an image grid in SimpleITK (x-first) order: spacing (mm), origin (mm, LPS, the first
    voxel's centre) and the row-major direction cosines (column ``d`` is index axis ``d``)."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("spacing", "origin", "direction"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        ndim = len(self.spacing)
        if ndim < 1 or len(self.origin) != ndim or len(self.direction) != ndim * ndim:
            raise ValueError(
                f"inconsistent geometry: spacing has {ndim} values, origin {len(self.origin)}, direction "
                f"{len(self.direction)}; expected ndim, ndim and ndim*ndim values"
            )
        if any(not np.isfinite(v) or v <= 0 for v in self.spacing):
            raise ValueError(f"spacing must be positive and finite, got {self.spacing}")

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3 in practice)."""
        return len(self.spacing)

    @classmethod
    def identity(cls, ndim: int) -> Geometry:
        """Unit spacing, zero origin and identity direction in ``ndim`` dimensions."""
        return cls((1.0,) * ndim, (0.0,) * ndim, tuple(np.eye(ndim).ravel().tolist()))

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        """The geometry of a SimpleITK image."""
        return cls(image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def to_sitk(self, image: sitk.Image) -> sitk.Image:
        """Set this geometry on ``image`` in place and return it (ValueError for another dimension)."""
        if image.GetDimension() != self.ndim:
            raise ValueError(f"a {self.ndim}D geometry cannot be set on a {image.GetDimension()}D image")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-serialisable form: ``{"spacing": [...], "origin": [...], "direction": [...]}``."""
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(data["spacing"]), tuple(data["origin"]), tuple(data["direction"]))


def truncated_error(path: Path, detail: str) -> ImageReadError:
    """The refusal of a file that ends before the data its header declares."""
    return ImageReadError(f"cannot read {path}: the file is truncated (incomplete): {detail}; {REDO}")


def first_line(err: BaseException) -> str:
    """The informative sentence of an exception: for SimpleITK, ITK's sentence after ``ERROR:`` without the object
    that reports it (plus the last line of the library trace that a sentence ending in ``:`` introduces); otherwise
    the first line. ITK's errno ``Reason:`` line is skipped: it can be stale ("No such file or directory" for a cut
    MetaImage)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("Reason:")]
    found = next((i for i, line in enumerate(lines) if "ERROR: " in line), None)
    if found is None:
        return lines[0] if lines else type(err).__name__
    sentence = re.sub(r"^\w+\(0x[0-9a-fA-F]+\): ", "", lines[found].split("ERROR: ", 1)[1]).rstrip(".")
    return f"{sentence} {lines[-1]}" if sentence.endswith(":") and found < len(lines) - 1 else sentence
