"""Image reading and writing that carries the physical geometry (spacing, origin, direction) along.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``), MetaImage (``.mha``, ``.mhd``), DICOM series (a folder),
and 2D rasters (PNG, JPEG, BMP, TIFF).

Axis conventions (the same as SimpleITK's ``GetArrayFromImage``):

- Arrays are indexed in numpy order, slowest axis first: 3D volumes are ``(Z, Y, X)``, 2D images ``(Y, X)`` and
  colour images ``(Y, X, C)``.
- :class:`Geometry` is stored in SimpleITK order, fastest axis first: ``spacing = (sx, sy[, sz])`` in millimetres,
  ``origin`` in millimetres (LPS world coordinates, as ITK uses), ``direction`` the row-major flattened
  ``ndim x ndim`` matrix whose columns are the world directions of the x, y(, z) index axes.

No reorientation is ever applied: voxels stay in file order. A NIfTI file whose voxel ``(i, j, k)`` is stored at
file position ``i + I*j + I*J*k`` is returned as ``array[k, j, i]`` (nibabel would return it as ``[i, j, k]``, so
this array equals nibabel's transposed by ``(2, 1, 0)``).

Every writer here is atomic: it writes to a hidden temporary file in the target folder and renames it into place, so
an interrupted process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .._atomic import atomic_path, write_text_atomic

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "RASTER_SUFFIXES",
    "VOLUME_SUFFIXES",
    "Geometry",
    "ImageReadError",
    "atomic_path",
    "image_suffix",
    "is_dicom_folder",
    "is_image_file",
    "list_inputs",
    "read_image",
    "write_image",
    "write_text_atomic",
]

#: Suffixes read and written through SimpleITK with full geometry.
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: 2D raster suffixes (read through PIL; written: PNG only). Geometry is the identity.
RASTER_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Every single-file suffix :func:`read_image` accepts (lower case; matching is case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = VOLUME_SUFFIXES + RASTER_SUFFIXES
#: Files with these suffixes mark a folder as a DICOM series folder.
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".ima")


class ImageReadError(ValueError):
    """A file or folder could not be read as an image; the message names the path, the reason and a fix."""


@dataclass(frozen=True)
class Geometry:
    """Physical placement of an image grid, in SimpleITK (x-first) axis order.

    Attributes:
        spacing: Voxel size per index axis ``(sx, sy[, sz])``, millimetres.
        origin: World position (mm, LPS) of the centre of the first voxel, ``(ox, oy[, oz])``.
        direction: Row-major flattened ``ndim x ndim`` direction-cosine matrix; column ``d`` is the world direction
            of index axis ``d`` (x, y, z).
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        spacing = tuple(float(v) for v in self.spacing)
        origin = tuple(float(v) for v in self.origin)
        direction = tuple(float(v) for v in self.direction)
        ndim = len(spacing)
        if ndim < 1 or len(origin) != ndim or len(direction) != ndim * ndim:
            raise ValueError(
                f"inconsistent geometry: spacing has {ndim} values, origin {len(origin)}, direction {len(direction)}; "
                f"expected ndim, ndim and ndim*ndim values"
            )
        if any(not np.isfinite(v) or v <= 0 for v in spacing):
            raise ValueError(f"spacing must be positive and finite, got {spacing}")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

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
        """Set this geometry on ``image`` in place and return it.

        Raises:
            ValueError: if the image dimension differs from :attr:`ndim`.
        """
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


def image_suffix(path: str | os.PathLike[str]) -> str | None:
    """The supported suffix of ``path`` in lower case (``".nii.gz"`` counts as one), or None."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is an existing regular file with a suffix from :data:`IMAGE_SUFFIXES`.

    Hidden files (name starting with ``.``) are not image files: they are temporaries or OS metadata.
    """
    p = Path(path)
    return not p.name.startswith(".") and image_suffix(p) is not None and p.is_file()


def _dicom_series_ids(folder: Path) -> tuple[str, ...]:
    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def is_dicom_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a DICOM series.

    A folder counts when it directly contains a file ending in ``.dcm``/``.dicom``/``.ima`` or, when it holds no
    other supported image files, when GDCM finds a series in it (DICOM files often have no suffix).
    """
    folder = Path(path)
    if not folder.is_dir():
        return False
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if any(p.name.lower().endswith(DICOM_SUFFIXES) for p in files):
        return True
    if not files or any(image_suffix(p) is not None for p in files):
        return False
    return len(_dicom_series_ids(folder)) > 0


def list_inputs(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into the list of readable inputs.

    Each path may be an image file (kept), a DICOM series folder (kept as one input), or a folder, which is expanded
    non-recursively into its image files and its DICOM-series subfolders, sorted by name. The order of the given
    paths is kept and duplicates are dropped.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a file has an unsupported suffix, or a folder holds no image or DICOM series.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist; check the path")
        if path.is_file():
            if image_suffix(path) is None:
                raise ValueError(
                    f"input {path} has an unsupported suffix; expected one of {', '.join(IMAGE_SUFFIXES)} "
                    f"or a DICOM series folder (pass the folder, not a single DICOM file)"
                )
            found.append(path)
        elif is_dicom_folder(path):
            found.append(path)
        else:
            entries = sorted(path.iterdir(), key=lambda p: p.name)
            expanded = [p for p in entries if is_image_file(p) or (p.is_dir() and is_dicom_folder(p))]
            if not expanded:
                raise ValueError(
                    f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)}) and no DICOM series; "
                    f"point to the folder that contains the images"
                )
            found.extend(expanded)
    unique: list[Path] = []
    seen: set[Path] = set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _read_dicom_series(folder: Path) -> tuple[np.ndarray, Geometry]:
    series = _dicom_series_ids(folder)
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
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ImageReadError(f"cannot read DICOM series in {folder}: {_first_line(err)}") from err
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # SimpleITK puts the useful part ("Could not create IO object ...", "... is not a valid NIfTI") last.
    return lines[-1] if lines else type(err).__name__


def _read_raster(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise ImageReadError(
                    f"cannot read {path}: it has {img.n_frames} frames; only single-frame 2D rasters are supported, "
                    f"save the stack as NIfTI (.nii.gz) or as one file per slice"
                )
            img.load()
            mode = img.mode
            if mode == "P":
                palette = np.asarray(img.getpalette() or [], dtype=np.int32).reshape(-1, 3)
                grey = palette.size > 0 and bool(np.all(palette == palette[:, :1]))
                return np.asarray(img.convert("L") if grey else img, dtype=np.uint8).copy()
            if mode in ("1", "LA", "La"):
                return np.asarray(img.convert("L"), dtype=np.uint8).copy()
            if mode == "L":
                return np.asarray(img, dtype=np.uint8).copy()
            if mode.startswith("I;16"):
                return np.asarray(img).astype(np.uint16)
            if mode == "I":
                return np.asarray(img).astype(np.int32)
            if mode == "F":
                return np.asarray(img).astype(np.float32)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageReadError(
            f"cannot read {path}: {err.__class__.__name__}: {err}; the file is corrupt or not a {path.suffix} image"
        ) from err


def _nifti_layout(header: bytes) -> tuple[int, int] | None:
    """``(vox_offset, voxel data bytes)`` from a NIfTI-1/-2 single-file header, or None if it is not one."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348 and header[344:347] == b"n+1":
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540 and header[4:7] == b"n+2":
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    count = 1
    for d in dims[1 : ndim + 1]:
        count *= max(int(d), 1)
    return offset, count * bitpix // 8


def _check_nifti_complete(path: Path, compressed: bool) -> None:
    """Raise ImageReadError when a NIfTI file holds less voxel data than its header declares.

    ITK's NIfTI reader fills missing data with zeros without an error, so a truncated download would otherwise be
    read as a silently damaged volume.
    """
    try:
        if compressed:
            with gzip.open(path, "rb") as handle:
                header = handle.read(540)
        else:
            with open(path, "rb") as handle:
                header = handle.read(540)
    except (OSError, EOFError, zlib.error):
        return  # not readable as gzip/NIfTI at all: let SimpleITK report it
    layout = _nifti_layout(header)
    if layout is None:
        return
    offset, data_bytes = layout
    needed = offset + data_bytes
    if not compressed:
        available = path.stat().st_size
    else:
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            trailer = struct.unpack("<I", handle.read(4))[0]
        if trailer == needed % 2**32:
            return
        available = 0
        try:
            with gzip.open(path, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    available += len(chunk)
        except (OSError, EOFError, zlib.error) as err:
            raise ImageReadError(
                f"cannot read {path}: the gzip stream is damaged or truncated ({err}); download or export the file "
                f"again"
            ) from err
    if available < needed:
        raise ImageReadError(
            f"cannot read {path}: truncated NIfTI file, the header declares {needed} bytes but the file holds "
            f"{available}; download or export the file again"
        )


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64


def _check_nifti_finite(path: Path, compressed: bool) -> None:
    """Raise ImageReadError when a float NIfTI file stores NaN or inf voxels.

    ITK's NIfTI reader turns them into zeros without a word, so a damaged export would be segmented as if it were
    valid. Only float files are scanned (integer CT costs nothing).
    """
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(540)
            layout = _nifti_layout(header)
            if layout is None:
                return
            endian = "<" if struct.unpack("<i", header[:4])[0] in (348, 540) else ">"
            version2 = struct.unpack(endian + "i", header[:4])[0] == 540
            datatype = struct.unpack(endian + "h", header[12:14] if version2 else header[70:72])[0]
            if datatype not in _NIFTI_FLOATS:
                return
            offset, data_bytes = layout
            handle.seek(offset)
            data = np.frombuffer(handle.read(data_bytes), dtype=endian + _NIFTI_FLOATS[datatype])
    except (OSError, EOFError, zlib.error):
        return  # SimpleITK reports unreadable files
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise ImageReadError(
            f"cannot use {path}: {bad} voxel(s) are NaN or infinite (a NIfTI reader would silently turn them into 0); "
            "fix or re-export the image"
        )


def read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, Geometry]:
    """Read an image file or a DICOM series folder.

    Args:
        path: A file with a suffix from :data:`IMAGE_SUFFIXES`, or a folder holding exactly one DICOM series.

    Returns:
        ``(array, geometry)``. ``array`` keeps the stored dtype and is indexed ``(Z, Y, X)`` for volumes (a DICOM
        series included), ``(Y, X)`` for grey 2D images and ``(Y, X, 3)`` uint8 for colour rasters (alpha dropped,
        CMYK/YCbCr converted to RGB). Bilevel images become 0/255 uint8. Palette images with a grey palette are
        read as grey values, other palette images as their palette indices (the usual encoding of colour label
        maps). 16-bit rasters are uint16. Multi-component volumes get a trailing channel axis. ``geometry`` is the
        stored geometry; rasters get ``Geometry.identity(2)``.

    Raises:
        ImageReadError: the path does not exist, has an unsupported suffix, is corrupt, or the folder holds no or
            several DICOM series. The message names the path, the reason and a fix.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"cannot read {p}: no such file or folder; check the path")
    if p.is_dir():
        return _read_dicom_series(p)
    suffix = image_suffix(p)
    if suffix is None:
        raise ImageReadError(
            f"cannot read {p}: unsupported suffix; expected one of {', '.join(IMAGE_SUFFIXES)}, or pass a folder "
            f"holding a DICOM series"
        )
    if suffix in RASTER_SUFFIXES:
        return _read_raster(p), Geometry.identity(2)
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_complete(p, compressed=suffix == ".nii.gz")
        _check_nifti_finite(p, compressed=suffix == ".nii.gz")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as err:
        raise ImageReadError(
            f"cannot read {p}: {_first_line(err)}; the file is corrupt, truncated or not a {suffix} image"
        ) from err
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def _label_dtype(array: np.ndarray) -> np.dtype:
    """Smallest unsigned (or signed if negative) integer dtype holding the values of an integer/bool array."""
    if array.dtype == np.bool_:
        return np.dtype(np.uint8)
    if array.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(array.min()), int(array.max())
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return array.dtype


def write_image(
    array: np.ndarray,
    geometry: Geometry | None,
    path: str | os.PathLike[str],
    compression_level: int | None = None,
) -> Path:
    """Write an array with its geometry, atomically.

    Args:
        array: Volumes ``(Z, Y, X)``, 2D images ``(Y, X)``; a trailing channel axis (``ndim == geometry.ndim + 1``)
            writes a multi-component image. Integer arrays keep their dtype except 64-bit integers and bools, which
            are stored in the smallest integer type holding their values (uint8 for label maps with ids < 256),
            because 64-bit NIfTI is poorly supported by viewers.
        geometry: Spacing/origin/direction in SimpleITK order; None means ``Geometry.identity(array.ndim)``.
            Ignored for PNG, which cannot store it.
        path: Target file. ``.nii``/``.nii.gz``/``.nrrd``/``.mha``/``.mhd`` keep the geometry (compressed where the
            format allows). ``.png`` takes a 2D ``(Y, X)`` non-negative integer array (uint8 if all values < 256,
            else uint16; a label map keeps its ids) or a ``(Y, X, 3|4)`` uint8 colour image.
        compression_level: Optional zlib level (1 fast .. 9 small) for the SimpleITK formats.

    Returns:
        The written path.

    Raises:
        ValueError: unsupported suffix, geometry dimension not matching the array, or data PNG cannot hold.
    """
    target = Path(path)
    suffix = image_suffix(target)
    array = np.asarray(array)
    if suffix == ".png":
        _write_png(array, target)
        return target
    if suffix not in VOLUME_SUFFIXES:
        raise ValueError(
            f"cannot write {target}: unsupported suffix; use one of {', '.join(VOLUME_SUFFIXES)} or .png "
            f"(JPEG/BMP/TIFF are read-only here because JPEG is lossy for label maps)"
        )
    if array.dtype == np.bool_ or array.dtype in (np.int64, np.uint64):
        array = array.astype(_label_dtype(array))
    if geometry is None:
        geometry = Geometry.identity(array.ndim)
    if array.ndim == geometry.ndim:
        is_vector = False
    elif array.ndim == geometry.ndim + 1:
        is_vector = True
    else:
        raise ValueError(
            f"cannot write {target}: array shape {array.shape} does not fit a {geometry.ndim}D geometry; expected "
            f"{geometry.ndim} axes (or {geometry.ndim + 1} with a trailing channel axis)"
        )
    image = geometry.to_sitk(sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=is_vector))
    writer = sitk.ImageFileWriter()
    writer.SetUseCompression(True)
    if compression_level is not None:
        writer.SetCompressionLevel(int(compression_level))
    if suffix == ".mhd":
        _write_mhd(writer, image, target)
        return target
    with atomic_path(target) as tmp:
        writer.SetFileName(str(tmp))
        writer.Execute(image)
    return target


def _write_mhd(writer: sitk.ImageFileWriter, image: sitk.Image, target: Path) -> None:
    # The .mhd header names its data file, so both are written under their final names in a hidden folder and moved
    # out data first, header last: a visible .mhd always points at complete data.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".tmp-{uuid.uuid4().hex[:12]}-{target.name}.d"
    staging.mkdir()
    try:
        writer.SetFileName(str(staging / target.name))
        writer.Execute(image)
        for item in sorted(staging.iterdir(), key=lambda p: p.name == target.name):
            os.replace(item, target.parent / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_png(array: np.ndarray, target: Path) -> None:
    from PIL import Image

    if array.ndim == 3 and array.shape[2] in (3, 4):
        if array.dtype != np.uint8:
            raise ValueError(
                f"cannot write {target}: colour PNG needs uint8 data, got {array.dtype}; scale to 0..255 first"
            )
        img = Image.fromarray(np.ascontiguousarray(array))
    elif array.ndim == 2:
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"cannot write {target}: PNG holds integer data, got {array.dtype}; write a label map (integers) "
                f"or scale the image to uint8 first, or write .nii.gz/.nrrd/.mha for floating point data"
            )
        lo = int(array.min()) if array.size else 0
        hi = int(array.max()) if array.size else 0
        if lo < 0 or hi > 65535:
            raise ValueError(
                f"cannot write {target}: PNG holds values 0..65535, found {lo}..{hi}; write .nii.gz instead"
            )
        if hi < 256:
            img = Image.fromarray(array.astype(np.uint8))
        else:
            img = Image.fromarray(array.astype(np.uint16))
    else:
        raise ValueError(f"cannot write {target}: PNG takes (Y, X) or (Y, X, 3|4) arrays, got shape {array.shape}")
    with atomic_path(target) as tmp:
        img.save(tmp, format="PNG")
