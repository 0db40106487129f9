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
an interrupted process never leaves a half-written file under the final name. Every reader refuses a file that holds
less data than its header declares (a cut download or copy) instead of reading missing voxels as zeros, and refuses
rasters above a pixel limit (decompression bombs); see :func:`read_image`.
"""

from __future__ import annotations

import bz2
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import SimpleITK as sitk

from .._atomic import atomic_path, write_text_atomic

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS_ENV",
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
    "resolve_max_pixels",
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

#: Largest raster (PNG, JPEG, BMP, TIFF) :func:`read_image` decodes by default, in pixels (width x height): Pillow's
#: own default limit, about 89.5 megapixels (a 9459 x 9459 image). Larger files are refused before decoding, because a
#: small file can declare a huge image (a "decompression bomb") that would exhaust memory.
DEFAULT_MAX_PIXELS: int = 89_478_485
#: Environment variable that sets the raster pixel limit when no ``max_pixels`` argument is given.
MAX_PIXELS_ENV: str = "MSA2NET_MAX_PIXELS"


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


def _check_dicom_folder(folder: Path, series: list[Path]) -> None:
    """Refuse a series with a truncated file, including one GDCM left out of the series.

    GDCM silently drops a DICOM file it cannot parse from the series, so a cut slice would make the volume one slice
    shorter (with a wrong slice spacing) instead of an error. Every file of the series and every other file in the
    folder with a DICOM suffix or the ``DICM`` marker is checked; complete non-image DICOM objects left out by GDCM
    (reports, presentation states) are fine.
    """
    members = {p.resolve() for p in series}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.upper() == "DICOMDIR" or not path.is_file():
            continue
        try:
            with open(path, "rb") as handle:
                handle.seek(128)
                marked = handle.read(4) == b"DICM"
            if path.resolve() not in members and not marked:
                if path.name.lower().endswith(DICOM_SUFFIXES):
                    raise _truncated(
                        path,
                        f"it holds {path.stat().st_size} bytes and no DICOM header, so the series in {folder} would "
                        "be read without it",
                    )
                continue
            _check_dicom_file(path)
        except PermissionError as err:
            raise ImageReadError(f"cannot read {path}: permission denied ({err}); make the file readable") from err


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
    _check_dicom_folder(folder, [Path(name) for name in files])
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


# ---------------------------------------------------------------------------------------------------------------------
# Completeness checks: a file must hold all the data its header declares
# ---------------------------------------------------------------------------------------------------------------------
#
# ITK zero-fills the missing voxels of a truncated NIfTI (gzip or not) without an error, and Pillow accepts a PNG whose
# end chunk is missing. So every format is checked here before it is decoded: the header is parsed, the data it
# declares is counted (compressed streams are decompressed chunk by chunk, never held in memory at once), and a file
# that holds less, or whose compressed stream stops before its end marker, is refused.

_CHUNK = 1 << 22  # bytes per read, and most bytes one decompression step may produce
_REDO = "re-export or re-download it"
_GZIP_MAGIC = b"\x1f\x8b"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _truncated(path: Path, detail: str) -> ImageReadError:
    """The refusal of a file that ends before the data its header declares."""
    return ImageReadError(f"cannot read {path}: the file is truncated (incomplete): {detail}; {_REDO}")


def _corrupt(path: Path, detail: str) -> ImageReadError:
    """The refusal of a file whose content cannot be decoded."""
    return ImageReadError(f"cannot read {path}: the file is corrupt: {detail}; {_REDO}")


@dataclass(frozen=True)
class _Decoded:
    """Outcome of decompressing a stream: bytes produced, whether the end marker was reached, decoder error."""

    length: int
    complete: bool
    error: str | None = None


class _Inflater:
    """One gzip/zlib (``"deflate"``) or bzip2 stream, decompressed in steps of at most :data:`_CHUNK` bytes."""

    def __init__(self, codec: str) -> None:
        self.bzip2 = codec == "bzip2"
        # 32 + 15: accept a gzip or a zlib header (MetaImage writes zlib, NRRD and NIfTI gzip)
        self.obj: Any = bz2.BZ2Decompressor() if self.bzip2 else zlib.decompressobj(32 + 15)

    @property
    def eof(self) -> bool:
        return bool(self.obj.eof)

    @property
    def unused_data(self) -> bytes:
        return bytes(self.obj.unused_data)

    def feed(self, data: bytes) -> Iterable[bytes]:
        if self.bzip2:
            yield self.obj.decompress(data, _CHUNK)
            while not self.obj.eof and not self.obj.needs_input:
                yield self.obj.decompress(b"", _CHUNK)
            return
        pending = data
        while True:
            out = self.obj.decompress(pending, _CHUNK)
            yield out
            pending = self.obj.unconsumed_tail
            if self.obj.eof or (not pending and len(out) < _CHUNK):
                return


def _decode_stream(handle: IO[bytes], codec: str, on_chunk: Callable[[int, bytes], None] | None = None) -> _Decoded:
    """Decompress ``handle`` from its position to the end; ``on_chunk(position, data)`` sees every decoded chunk.

    Several concatenated gzip (or bzip2) members are one stream, as for gzip itself; bytes after the last member that
    do not start another one are ignored, as zlib does.
    """
    magic = b"BZh" if codec == "bzip2" else _GZIP_MAGIC
    inflater = _Inflater(codec)
    total = 0
    data = b""
    try:
        while True:
            if not data:
                data = handle.read(_CHUNK)
                if not data:
                    break
            if inflater.eof:
                if len(data) < len(magic):
                    data += handle.read(_CHUNK)
                if not data.startswith(magic):
                    break
                inflater = _Inflater(codec)
            for out in inflater.feed(data):
                if out:
                    if on_chunk is not None:
                        on_chunk(total, out)
                    total += len(out)
            data = inflater.unused_data if inflater.eof else b""
    except (zlib.error, OSError, EOFError, ValueError) as err:
        return _Decoded(total, False, str(err) or type(err).__name__)
    return _Decoded(total, inflater.eof)


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(magic)) == magic


def _check_data(path: Path, source: Path, start: int, codec: str, needed: int, skip: int = 0) -> None:
    """Refuse ``path`` when ``source`` holds fewer than ``needed`` bytes of image data.

    Args:
        path: The image file (named in the message).
        source: The file holding the data: ``path`` itself or a data file named in its header.
        start: Byte position in ``source`` where the (possibly compressed) data begins.
        codec: ``"raw"``, ``"deflate"`` (gzip or zlib) or ``"bzip2"``.
        needed: Bytes of decoded image data the header declares.
        skip: Decoded bytes before the image data; -1 (raw only) means the data are the last ``needed`` bytes.
    """
    where = "the file" if source == path else f"its data file {source}"
    with open(source, "rb") as handle:
        if codec == "raw":
            available = os.fstat(handle.fileno()).st_size - start - max(skip, 0)
        else:
            handle.seek(start)
            decoded = _decode_stream(handle, codec)
            if decoded.error is not None:
                raise _corrupt(path, f"the compressed data in {where} cannot be decoded ({decoded.error})")
            if not decoded.complete:
                raise _truncated(
                    path, f"the compressed data in {where} stop before their end marker (the file was cut off)"
                )
            available = decoded.length - max(skip, 0)
    if available < needed:
        raise _truncated(
            path, f"the header declares {needed} bytes of image data but {where} holds {max(available, 0)}"
        )


# --- NIfTI-1 / NIfTI-2 (.nii, .nii.gz) -------------------------------------------------------------------------------

_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64


@dataclass(frozen=True)
class _NiftiHeader:
    """Layout of a single-file NIfTI-1 (348-byte header) or NIfTI-2 (540-byte header) image."""

    header_bytes: int
    endian: str
    datatype: int
    vox_offset: int
    data_bytes: int

    @property
    def end(self) -> int:
        """Smallest complete file size (decompressed): voxel data start plus voxel data."""
        return self.vox_offset + self.data_bytes


def _nifti_header_size(head: bytes) -> tuple[int, str] | None:
    """``(sizeof_hdr, endian)`` when the first 4 bytes are a NIfTI-1 (348) or NIfTI-2 (540) header size."""
    if len(head) < 4:
        return None
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size in (348, 540):
            return size, endian
    return None


def _parse_nifti_header(head: bytes) -> _NiftiHeader | None:
    """The layout from the first 540 (or all, if fewer) bytes of a NIfTI file, or None if it is not a complete header
    of a single-file NIfTI-1/-2 image."""
    found = _nifti_header_size(head)
    if found is None or len(head) < found[0]:
        return None
    size, endian = found
    if size == 348:
        if head[344:347] != b"n+1":
            return None
        dims = struct.unpack(endian + "8h", head[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
        offset = struct.unpack(endian + "f", head[108:112])[0]
    else:
        if head[4:7] != b"n+2":
            return None
        datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
        dims = struct.unpack(endian + "8q", head[16:80])
        offset = struct.unpack(endian + "q", head[168:176])[0]
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or not np.isfinite(offset):
        return None
    count = 1
    for d in dims[1 : ndim + 1]:
        count *= max(int(d), 1)
    return _NiftiHeader(size, endian, int(datatype), max(int(offset), size), count * int(bitpix) // 8)


class _NiftiScan:
    """Receives a NIfTI byte stream chunk by chunk: keeps the header and counts NaN/inf voxels of float data."""

    def __init__(self) -> None:
        self.head = b""
        self.header: _NiftiHeader | None = None
        self.parsed = False
        self.non_finite = 0
        self._dtype: np.dtype | None = None
        self._carry = b""

    def feed(self, position: int, data: bytes) -> None:
        if not self.parsed:
            self.head += data
            if len(self.head) < 540:
                return
            self._parse()
            position, data = 0, self.head
            self.head = self.head[:540]
        self._count(position, data)

    def close(self) -> None:
        """End of stream: parse a header shorter than 540 bytes (NIfTI-1 files can be that small)."""
        if not self.parsed:
            self._parse()
            self._count(0, self.head)

    def _parse(self) -> None:
        self.parsed = True
        self.header = _parse_nifti_header(self.head[:540])
        if self.header is not None and self.header.datatype in _NIFTI_FLOATS:
            self._dtype = np.dtype(self.header.endian + _NIFTI_FLOATS[self.header.datatype])

    def _count(self, position: int, data: bytes) -> None:
        if self._dtype is None or self.header is None:
            return
        lo = max(self.header.vox_offset, position)
        hi = min(self.header.end, position + len(data))
        if lo >= hi:
            return
        block = self._carry + data[lo - position : hi - position]
        usable = len(block) - len(block) % self._dtype.itemsize
        values = np.frombuffer(block[:usable], dtype=self._dtype)
        self.non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
        self._carry = block[usable:]


def _check_nifti(path: Path) -> _NiftiHeader | None:
    """Refuse a NIfTI-1/-2 file, gzip-compressed or not, that holds less than its header declares or NaN/inf floats.

    ITK's NIfTI reader zero-fills missing voxels and turns NaN/inf into 0 without a word, so a cut download or a
    damaged export would otherwise be segmented as if it were valid. Compressed files are recognised by content (a
    ``.nii.gz`` that is not gzipped is read as it is, as ITK does) and decompressed in a streaming way; a stream that
    stops before its end marker is refused too. Files that are not single-file NIfTI at all are left to SimpleITK.

    Returns:
        The parsed header, or None when the file is not a single-file NIfTI-1/-2 image.
    """
    scan = _NiftiScan()
    compressed = _starts_with(path, _GZIP_MAGIC)
    with open(path, "rb") as handle:
        if compressed:
            decoded = _decode_stream(handle, "deflate", scan.feed)
            scan.close()
            if decoded.error is not None:
                raise _corrupt(path, f"its gzip data cannot be decoded ({decoded.error})")
            if not decoded.complete:
                raise _truncated(
                    path,
                    f"the gzip stream stops after {decoded.length} decompressed bytes, before its end marker (the "
                    "file was cut off)",
                )
            available = decoded.length
        else:
            available = os.fstat(handle.fileno()).st_size
            scan.feed(0, handle.read(540))
            scan.close()
            if scan.header is not None and scan.header.datatype in _NIFTI_FLOATS:
                position = handle.tell()
                while position < scan.header.end and (chunk := handle.read(_CHUNK)):
                    scan.feed(position, chunk)
                    position += len(chunk)
    what = "decompressed data hold" if compressed else "file holds"
    header = scan.header
    if header is None:
        found = _nifti_header_size(scan.head)
        if len(scan.head) < 4 or (found is not None and len(scan.head) < found[0]):
            expected = f"a {found[0]}-byte NIfTI header" if found else "a NIfTI header"
            raise _truncated(path, f"the {what} only {len(scan.head)} bytes, less than {expected}")
        return None  # not a single-file NIfTI: SimpleITK names the problem
    if available < header.end:
        raise _truncated(
            path,
            f"the NIfTI header declares {header.end} bytes ({header.data_bytes} bytes of voxel data from byte "
            f"{header.vox_offset}) but the {what} only {available}",
        )
    if scan.non_finite:
        raise ImageReadError(
            f"cannot use {path}: {scan.non_finite} voxel(s) are NaN or infinite (a NIfTI reader would silently turn "
            "them into 0); fix or re-export the image"
        )
    return header


# --- NRRD (.nrrd) ----------------------------------------------------------------------------------------------------

# NRRD type names (every spelling the format allows) and their sizes in bytes
_NRRD_TYPE_SIZES: dict[str, int] = {
    name: size
    for size, names in (
        (1, "signed char|int8|int8_t|uchar|unsigned char|uint8|uint8_t"),
        (
            2,
            "short|short int|signed short|signed short int|int16|int16_t|ushort|unsigned short|unsigned short int|"
            "uint16|uint16_t",
        ),
        (4, "int|signed int|int32|int32_t|uint|unsigned int|uint32|uint32_t|float"),
        (
            8,
            "longlong|long long|long long int|signed long long|signed long long int|int64|int64_t|ulonglong|"
            "unsigned long long|unsigned long long int|uint64|uint64_t|double",
        ),
    )
    for name in names.split("|")
}
_NRRD_CODECS = {"raw": "raw", "gzip": "deflate", "gz": "deflate", "bzip2": "bzip2", "bz2": "bzip2"}


def _header_lines(handle: IO[bytes]) -> Iterable[str]:
    """Text lines of a header (Latin-1, without line ends), read one at a time so the data after it are not."""
    while line := handle.readline(1 << 20):
        yield line.decode("latin-1").rstrip("\r\n")


def _data_file(path: Path, name: str) -> Path | None:
    """The single data file a detached header names, or None for file lists and patterns (not checked)."""
    if name.upper().startswith("LIST") or len(name.split()) > 1:
        return None
    source = Path(name) if Path(name).is_absolute() else path.parent / name
    if not source.is_file():
        raise ImageReadError(
            f"cannot read {path}: its data file {source}, named in the header, is missing; put it next to the header "
            f"or {_REDO}"
        )
    return source


def _check_nrrd(path: Path) -> None:
    """Refuse a NRRD file whose header or (raw, gzip or bzip2) data are shorter than the header declares."""
    fields: dict[str, str] = {}
    ended = False
    with open(path, "rb") as handle:
        if not handle.readline(64).startswith(b"NRRD"):
            return  # not NRRD: SimpleITK names the problem
        for text in _header_lines(handle):
            if not text:
                ended = True
                break
            if text.startswith("#") or ":=" in text:
                continue
            key, sep, value = text.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        data_start = handle.tell()
    name = fields.get("data file", fields.get("datafile"))
    if not ended and name is None:
        raise _truncated(
            path, "the NRRD header stops before the blank line that ends it, so the image data are missing"
        )
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
        kind = " ".join(fields["type"].lower().split())
        item = int(fields["block size"]) if kind == "block" else _NRRD_TYPE_SIZES[kind]
        byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
        line_skip = int(fields.get("line skip", fields.get("lineskip", "0")))
        codec = _NRRD_CODECS[fields["encoding"].lower()]
    except (KeyError, ValueError):
        return  # a malformed header or a text encoding: SimpleITK reads or names the problem
    if line_skip or any(s < 1 for s in sizes):
        return
    source = path if name is None else _data_file(path, name)
    if source is None:
        return
    start = data_start if name is None else 0
    _check_data(path, source, start, codec, int(np.prod(sizes, dtype=np.int64)) * item, byte_skip)


# --- MetaImage (.mha, .mhd) ------------------------------------------------------------------------------------------

# MetaIO element sizes; MET_LONG/MET_ULONG are counted as 4 bytes (the smaller reading, never a false refusal)
_MET_TYPE_SIZES: dict[str, int] = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def _check_metaimage(path: Path) -> None:
    """Refuse a MetaImage (``.mha`` with local data, ``.mhd`` with a data file) holding less than it declares."""
    fields: dict[str, str] = {}
    with open(path, "rb") as handle:
        for text in _header_lines(handle):
            key, sep, value = text.partition("=")
            if sep:
                fields[key.strip().lower()] = value.strip()
                if key.strip().lower() == "elementdatafile":
                    break  # the last header line; the data follow
        data_start = handle.tell()
    if "elementdatafile" not in fields:
        if {"ndims", "dimsize", "objecttype", "elementtype"} & set(fields):
            raise _truncated(path, "the MetaImage header stops before its ElementDataFile line")
        return  # not MetaImage: SimpleITK names the problem
    try:
        dims = [int(v) for v in fields["dimsize"].split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        item = _MET_TYPE_SIZES[fields["elementtype"].upper()]
        header_size = int(fields.get("headersize", "0"))
        compressed_size = int(fields.get("compresseddatasize", "0"))
    except (KeyError, ValueError):
        return  # malformed header: SimpleITK names the problem
    if fields.get("binarydata", "true").lower() not in ("true", "1") or channels < 1 or any(d < 1 for d in dims):
        return  # ASCII data are parsed by SimpleITK
    compressed = fields.get("compresseddata", "false").lower() in ("true", "1")
    name = fields["elementdatafile"]
    if name.upper() == "LOCAL":
        source, start, skip = path, data_start, 0
    else:
        found = _data_file(path, name)
        if found is None:
            return
        source, start, skip = found, 0, header_size
    if compressed:
        start, skip = start + max(skip, 0), 0
        if compressed_size > 0 and source.stat().st_size - start < compressed_size:
            where = "the file" if source == path else f"its data file {source}"
            raise _truncated(
                path,
                f"the header declares {compressed_size} bytes of compressed data but {where} holds "
                f"{max(source.stat().st_size - start, 0)}",
            )
    needed = int(np.prod(dims, dtype=np.int64)) * channels * item
    _check_data(path, source, start, "deflate" if compressed else "raw", needed, skip)


# --- DICOM (one file per slice) -------------------------------------------------------------------------------------

_DICOM_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_DICOM_PIXEL_TAGS = frozenset(((0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)))  # (float, double) pixel data
_UNDEFINED = 0xFFFFFFFF


class _DicomWalk:
    """Walks the data elements of a little-endian DICOM file by their declared lengths, without reading values."""

    def __init__(self, handle: IO[bytes], size: int, explicit: bool) -> None:
        self.handle, self.size, self.explicit = handle, size, explicit
        self.pixel_data = False

    def read(self, position: int, count: int) -> bytes:
        self.handle.seek(position)
        data = self.handle.read(count)
        if len(data) < count:
            raise EOFError(f"the element header at byte {position}")
        return data

    def dataset(self, position: int, delimited: bool, top: bool = False) -> int:
        """Walk elements from ``position`` to the end of the file or, when ``delimited``, to the delimiter that ends
        the enclosing undefined-length item or sequence; returns the position after it."""
        while position < self.size:
            group, element = struct.unpack("<HH", self.read(position, 4))
            if group == 0xFFFE:  # item (E000), item delimiter (E00D), sequence delimiter (E0DD): no VR
                length = struct.unpack("<I", self.read(position + 4, 4))[0]
                position += 8
                if element in (0xE00D, 0xE0DD):
                    if not delimited:
                        raise ValueError(f"a stray delimiter at byte {position - 8}")
                    return position
                position = self.value(position, length, (group, element))
                continue
            if self.explicit:
                vr = self.read(position + 4, 2)
                if vr in _DICOM_LONG_VRS:
                    length = struct.unpack("<I", self.read(position + 8, 4))[0]
                    position += 12
                else:
                    length = struct.unpack("<H", self.read(position + 6, 2))[0]
                    position += 8
            else:
                length = struct.unpack("<I", self.read(position + 4, 4))[0]
                position += 8
            if top and (group, element) in _DICOM_PIXEL_TAGS:
                self.pixel_data = True
            position = self.value(position, length, (group, element))
        if delimited:
            raise EOFError("an undefined-length sequence or item")
        return position

    def value(self, position: int, length: int, tag: tuple[int, int]) -> int:
        if length == _UNDEFINED:  # a sequence, an item or encapsulated (compressed) pixel data: ends at a delimiter
            return self.dataset(position, delimited=True)
        if position + length > self.size:
            raise EOFError(f"element ({tag[0]:04X},{tag[1]:04X}) of {length} bytes at byte {position}")
        return position + length


def _check_dicom_file(path: Path) -> None:
    """Refuse a DICOM file (Part 10, little endian) whose elements run past its end or that stops before its pixel
    data; GDCM reads such a slice with missing pixels without an error. Other encodings are left to GDCM."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(128)
        if handle.read(4) != b"DICM":
            return  # no Part 10 preamble: GDCM decides
        meta = _DicomWalk(handle, size, explicit=True)
        position, syntax = 132, ""
        try:
            while position + 8 <= size:  # the file meta group 0002, always explicit VR little endian
                header = meta.read(position, 8)
                group, element = struct.unpack("<HH", header[:4])
                if group != 0x0002:
                    break
                if header[4:6] in _DICOM_LONG_VRS:
                    start, length = position + 12, struct.unpack("<I", meta.read(position + 8, 4))[0]
                else:
                    start, length = position + 8, struct.unpack("<H", header[6:8])[0]
                if element == 0x0010:  # transfer syntax UID
                    syntax = meta.read(start, length).rstrip(b"\0 ").decode("ascii", "replace")
                position = meta.value(start, length, (group, element))
            if syntax in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
                return  # big endian or deflated: GDCM decides
            walk = _DicomWalk(handle, size, explicit=syntax != "1.2.840.10008.1.2")
            walk.dataset(position, delimited=False, top=True)
        except EOFError as err:
            raise _truncated(path, f"the DICOM file stops after {size} bytes, inside {err}") from None
        except (ValueError, struct.error):
            return  # not the structure this walk expects: GDCM decides
    if not walk.pixel_data:
        raise _truncated(path, f"the DICOM file stops after {size} bytes, before its pixel data")


def _check_volume(path: Path, suffix: str) -> _NiftiHeader | None:
    """Refuse a volume file that is truncated or damaged (see the format checks above); returns a NIfTI header."""
    if suffix in (".nii", ".nii.gz"):
        return _check_nifti(path)
    if suffix == ".nrrd":
        _check_nrrd(path)
    elif suffix in (".mha", ".mhd"):
        _check_metaimage(path)
    return None


# --- Rasters ---------------------------------------------------------------------------------------------------------


def _check_png(path: Path) -> None:
    """Refuse a PNG whose chunks run past the end of the file or that stops before its IEND chunk."""
    size = path.stat().st_size
    position = len(_PNG_MAGIC)
    with open(path, "rb") as handle:
        handle.seek(position)
        while True:
            head = handle.read(8)
            if len(head) < 8:
                raise _truncated(path, f"the PNG stops after {size} bytes, before its IEND end chunk")
            length, kind = struct.unpack(">I4s", head)
            end = position + 12 + length  # length, type, data, CRC
            if end > size:
                raise _truncated(
                    path,
                    f"its {kind.decode('latin-1')!r} chunk at byte {position} ({length} bytes of data) runs to byte "
                    f"{end} but the file stops after {size} bytes",
                )
            if kind == b"IEND":
                return
            position = end
            handle.seek(position)


_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RST0-7, SOI: markers without a length


def _check_jpeg(path: Path) -> None:
    """Refuse a JPEG whose segments run past the end of the file or that stops before its end-of-image marker."""
    data = path.read_bytes()
    size = len(data)
    position = 2  # after SOI
    while True:
        marker = data.find(b"\xff", position)
        # inside entropy-coded data, FF00 is an escaped FF byte, FFD0-FFD7 restart markers and FFFF fill bytes
        while marker != -1 and marker + 1 < size and (data[marker + 1] == 0 or 0xD0 <= data[marker + 1] <= 0xD7):
            marker = data.find(b"\xff", marker + 2)
        while marker != -1 and marker + 1 < size and data[marker + 1] == 0xFF:
            marker += 1
        if marker == -1 or marker + 1 >= size:
            raise _truncated(path, f"the JPEG stops after {size} bytes, before its end-of-image marker")
        code = data[marker + 1]
        if code == 0xD9:
            return
        if code in _JPEG_STANDALONE or code == 0:
            position = marker + 2
            continue
        if marker + 4 > size:
            raise _truncated(path, f"the JPEG stops after {size} bytes, inside the marker at byte {marker}")
        end = marker + 2 + int.from_bytes(data[marker + 2 : marker + 4], "big")
        if end > size:
            raise _truncated(
                path, f"its segment 0xFF{code:02X} at byte {marker} runs to byte {end} but the file stops after {size}"
            )
        position = end


def _check_bmp(path: Path) -> None:
    """Refuse a BMP whose pixel array, as its header declares it, runs past the end of the file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(54)
    if len(head) < 18:
        raise _truncated(path, f"the file holds only {size} bytes, less than a BMP header")
    offset, dib = struct.unpack("<II", head[10:18])
    if dib == 12 and len(head) >= 26:  # OS/2 BITMAPCOREHEADER
        width, height, bits = struct.unpack("<HH2xH", head[18:26])
        compression, image_size = 0, 0
    elif dib >= 40 and len(head) >= 54:
        width, height, bits, compression, image_size = struct.unpack("<ii2xHII", head[18:38])
    elif dib >= 40 or dib == 12:
        raise _truncated(path, f"the file holds only {size} bytes, less than its {dib}-byte BMP header")
    else:
        return  # an unusual header: Pillow decides
    if compression in (0, 3, 6):  # uncompressed (BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS)
        needed = offset + (abs(width) * bits + 31) // 32 * 4 * abs(height)
    elif image_size:
        needed = offset + image_size
    else:
        return
    if size < needed:
        raise _truncated(path, f"the BMP header declares {needed} bytes but the file holds {size}")


def _check_tiff(path: Path, img: Any) -> None:
    """Refuse a TIFF whose strips or tiles, as its directory lists them, run past the end of the file."""
    size = path.stat().st_size
    tags = img.tag_v2
    for offsets_tag, counts_tag in ((273, 279), (324, 325)):  # StripOffsets/-ByteCounts, TileOffsets/-ByteCounts
        if offsets_tag in tags and counts_tag in tags:
            offsets, counts = tags[offsets_tag], tags[counts_tag]
            offsets = (offsets,) if isinstance(offsets, int) else tuple(offsets)
            counts = (counts,) if isinstance(counts, int) else tuple(counts)
            end = max((o + c for o, c in zip(offsets, counts)), default=0)
            if end > size:
                raise _truncated(path, f"its image data run to byte {end} but the file stops after {size}")


def resolve_max_pixels(max_pixels: int | None = None) -> int:
    """The largest raster, in pixels, that :func:`read_image` decodes.

    Args:
        max_pixels: An explicit limit; None uses the environment variable :data:`MAX_PIXELS_ENV`
            (``MSA2NET_MAX_PIXELS``) when it is set, else :data:`DEFAULT_MAX_PIXELS`.

    Returns:
        The limit, a positive integer.

    Raises:
        ValueError: ``max_pixels`` or the environment variable is not a positive whole number.
    """
    if max_pixels is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise ValueError(
                f"environment variable {MAX_PIXELS_ENV}={text!r} is not a whole number; set it to a pixel count such "
                f"as {DEFAULT_MAX_PIXELS} or unset it"
            ) from None
        source = f"environment variable {MAX_PIXELS_ENV}"
    else:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
            raise ValueError(f"max_pixels must be a positive whole number of pixels, got {max_pixels!r}")
        value, source = int(max_pixels), "max_pixels"
    if value < 1:
        raise ValueError(f"{source} must be a positive number of pixels, got {value}")
    return value


def _open_raster(path: Path) -> Any:
    """Check that a raster file is complete and open it lazily (header only), without Pillow's global pixel limit.

    PNG, JPEG, BMP and TIFF content is opened by its Pillow plugin directly, so that the caller's limit applies
    instead of ``PIL.Image.MAX_IMAGE_PIXELS`` (which is never changed here). Other content under a raster suffix goes
    through ``PIL.Image.open`` and its own limit.
    """
    from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(_PNG_MAGIC):
        _check_png(path)
        return PngImagePlugin.PngImageFile(path)
    if head.startswith(_JPEG_MAGIC):
        _check_jpeg(path)
        return JpegImagePlugin.jpeg_factory(path)  # a multi-picture (MPO) file opens with its frames
    if head.startswith(b"BM"):
        _check_bmp(path)
        return BmpImagePlugin.BmpImageFile(path)
    if head[:4] in _TIFF_MAGICS:
        return TiffImagePlugin.TiffImageFile(path)
    return Image.open(path)


def _read_raster(path: Path, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with _open_raster(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise ImageReadError(
                    f"cannot read {path}: it has {img.n_frames} frames; only single-frame 2D rasters are supported, "
                    f"save the stack as NIfTI (.nii.gz) or as one file per slice"
                )
            width, height = img.size
            if width * height > max_pixels:
                pixels = width * height
                raise ImageReadError(
                    f"cannot read {path}: it declares {width} x {height} = {pixels:,} pixels, more than the limit of "
                    f"{max_pixels:,} (a guard against decompression bombs, small files that expand to huge images); "
                    f"if the image is genuine, raise the limit to at least {pixels}: pass max_pixels={pixels} "
                    f"(msa2net predict --max-pixels {pixels}) or set the environment variable "
                    f"{MAX_PIXELS_ENV}={pixels}"
                )
            if img.format == "TIFF":
                _check_tiff(path, img)
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
    except PermissionError as err:
        raise ImageReadError(f"cannot read {path}: permission denied ({err}); make the file readable") from err
    # Pillow reports damaged files with many exception types (struct.error, EOFError, ... from its plugins)
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        IndexError,
        KeyError,
        struct.error,
        zlib.error,
    ) as err:
        raise ImageReadError(
            f"cannot read {path}: {err.__class__.__name__}: {err}; the file is corrupt, truncated or not a "
            f"{path.suffix} image; {_REDO}"
        ) from err


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> tuple[np.ndarray, Geometry]:
    """Read an image file or a DICOM series folder.

    Every file is checked against its header before it is decoded: a file that holds less data than its header
    declares (a cut download or copy), or whose compressed stream stops early or cannot be decoded, is refused rather
    than read with zero-filled or missing pixels. This covers NIfTI-1/-2 (``.nii``, ``.nii.gz``), NRRD (raw, gzip
    and bzip2 encodings, attached or detached data), MetaImage (``.mha``, ``.mhd`` with its data file), PNG, JPEG,
    BMP and TIFF, and every file of a DICOM series (little-endian encodings).

    Args:
        path: A file with a suffix from :data:`IMAGE_SUFFIXES`, or a folder holding exactly one DICOM series.
        max_pixels: Largest raster (width x height) decoded; larger rasters are refused before decoding, since a
            small file can declare a huge image. None: the environment variable ``MSA2NET_MAX_PIXELS``
            (:data:`MAX_PIXELS_ENV`) if set, else :data:`DEFAULT_MAX_PIXELS`. Volumes are not limited.

    Returns:
        ``(array, geometry)``. ``array`` keeps the stored dtype and is indexed ``(Z, Y, X)`` for volumes (a DICOM
        series included), ``(Y, X)`` for grey 2D images and ``(Y, X, 3)`` uint8 for colour rasters (alpha dropped,
        CMYK/YCbCr converted to RGB). Bilevel images become 0/255 uint8. Palette images with a grey palette are
        read as grey values, other palette images as their palette indices (the usual encoding of colour label
        maps). 16-bit rasters are uint16. Multi-component volumes get a trailing channel axis. ``geometry`` is the
        stored geometry; rasters get ``Geometry.identity(2)``.

    Raises:
        ImageReadError: the path does not exist, has an unsupported suffix, is truncated or corrupt, is a raster
            larger than the pixel limit, holds NaN/inf (float NIfTI), or the folder holds no or several DICOM
            series. The message names the path, the reason and a fix.
        ValueError: ``max_pixels`` or ``MSA2NET_MAX_PIXELS`` is not a positive whole number.
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
        return _read_raster(p, resolve_max_pixels(max_pixels)), Geometry.identity(2)
    try:
        nifti = _check_volume(p, suffix)
    except PermissionError as err:
        raise ImageReadError(f"cannot read {p}: permission denied ({err}); make the file readable") from err
    except OSError as err:
        raise ImageReadError(f"cannot read {p}: {err}; check the file and {_REDO}") from err
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as err:
        if nifti is not None and nifti.header_bytes == 540:
            raise ImageReadError(
                f"cannot read {p}: it is a NIfTI-2 file, which SimpleITK {sitk.Version.VersionString()} cannot read; "
                "save it as NIfTI-1 (most tools can, e.g. nibabel.Nifti1Image(...).to_filename)"
            ) from err
        raise ImageReadError(
            f"cannot read {p}: {_first_line(err)}; the file is corrupt, truncated or not a {suffix} image; {_REDO}"
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
