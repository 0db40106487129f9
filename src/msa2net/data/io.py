"""Image reading and writing that carries the physical geometry (spacing, origin, direction) along.

NIfTI, NRRD, MetaImage, DICOM series folders (:mod:`msa2net.data.dicom`) and 2D rasters. Arrays are in SimpleITK's
``GetArrayFromImage`` order (``(Z, Y, X)``, ``(Y, X)``, ``(Y, X, C)``), :class:`Geometry` in SimpleITK order (LPS
millimetres), and voxels stay in file order (never reoriented). Writers are atomic; readers refuse cut files and
rasters above a pixel limit (see :func:`read_image`).
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import SimpleITK as sitk

from .._atomic import atomic_path, write_text_atomic
from .image_file import DICOM_SUFFIXES, REDO, Geometry, ImageReadError, first_line, truncated_error

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

#: Largest raster (PNG, JPEG, BMP, TIFF) :func:`read_image` decodes by default, in pixels (width x height): Pillow's
#: own default limit, about 89.5 megapixels (a 9459 x 9459 image). Larger files are refused before decoding, because a
#: small file can declare a huge image (a "decompression bomb") that would exhaust memory.
DEFAULT_MAX_PIXELS: int = 89_478_485
#: Environment variable that sets the raster pixel limit when no ``max_pixels`` argument is given.
MAX_PIXELS_ENV: str = "MSA2NET_MAX_PIXELS"


def image_suffix(path: str | os.PathLike[str]) -> str | None:
    """The supported suffix of ``path`` in lower case (``".nii.gz"`` counts as one), or None."""
    name = Path(path).name.lower()
    return next((suffix for suffix in IMAGE_SUFFIXES if name.endswith(suffix) and len(name) > len(suffix)), None)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for an existing regular, not hidden, file with a suffix from :data:`IMAGE_SUFFIXES`."""
    p = Path(path)
    return not p.name.startswith(".") and image_suffix(p) is not None and p.is_file()


def is_dicom_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder with a ``.dcm``/``.dicom``/``.ima`` file or, holding no other images, a series GDCM finds."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if any(p.name.lower().endswith(DICOM_SUFFIXES) for p in files):
        return True
    if not files or any(image_suffix(p) is not None for p in files):
        return False
    return len(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))) > 0


def list_inputs(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Image files and DICOM series folders as given, other folders expanded (not recursively); no duplicates."""
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
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


# ---------------------------------------------------------------------------------------------------------------------
# Completeness checks, only where the reading libraries let a damaged file through
# ---------------------------------------------------------------------------------------------------------------------
#
# SimpleITK refuses cut NRRD and MetaImage data, and Pillow cut PNG, JPEG, BMP and TIFF pixel data while
# ImageFile.LOAD_TRUNCATED_IMAGES is off. Each check below names the library behaviour it covers.

_CHUNK = 1 << 22  # bytes per read of a stream that is only checked
_GZIP_MAGIC = b"\x1f\x8b"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk that ends every PNG: no data, hence a fixed CRC
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: The array dtype of each Pillow mode read as is (the others become L or RGB, uint8).
_RASTER_DTYPES = {"P": np.uint8, "L": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32}


def _check_nifti(path: Path) -> bool:
    """Refuse a cut single-file NIfTI-1/-2 or one with NaN/inf voxels; True for NIfTI-2 (SimpleITK cannot read it)."""
    import nibabel

    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC  # by content, as ITK does: a plain file under .nii.gz is read as is
        raw.seek(0)
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if compressed else raw
        head = stream.read(540)
        stream.seek(0)
        kinds = (nibabel.Nifti1Image, nibabel.Nifti2Image)
        kind = next((k for k in kinds if k.header_class.may_contain_header(head)), None)
        try:
            image = kind.from_stream(stream) if kind else None
            if image is None or image.header["magic"] not in (b"n+1", b"n+2"):
                return False  # not a single-file NIfTI: SimpleITK names the problem
            voxels = image.dataobj.get_unscaled()  # ITK's NIfTI reader zero-fills missing voxels; nibabel raises
        except (nibabel.spatialimages.HeaderDataError, nibabel.filebasedimages.ImageFileError, ValueError):
            return False
        except OSError as err:  # nibabel: "Expected N bytes, got M bytes from ..." (an OSError without errno)
            if err.errno is not None or isinstance(err, gzip.BadGzipFile):
                raise
            raise truncated_error(path, first_line(err)) from None
        # ITK's NIfTI reader turns NaN and inf into 0; nibabel keeps them
        if np.issubdtype(voxels.dtype, np.floating) and (bad := int(voxels.size - np.isfinite(voxels).sum())):
            raise ImageReadError(
                f"cannot use {path}: {bad} voxel(s) are NaN or infinite (a NIfTI reader would silently turn them "
                "into 0); fix or re-export the image"
            )
        while compressed and stream.read(_CHUNK):  # nibabel stops after the voxels; gzip checks the trailer at its end
            pass
        return kind is nibabel.Nifti2Image


def _header_fields(path: Path, separator: str, last: str) -> tuple[dict[str, str], int]:
    """``key: value`` (NRRD) or ``key = value`` (MetaImage) header fields, keys in lower case, read up to a blank
    line or the ``last`` key; and the byte position after them, where attached data start."""
    fields: dict[str, str] = {}
    with open(path, "rb") as handle:
        while last not in fields and (text := handle.readline(1 << 16).decode("latin-1").strip()):
            key, _, value = text.partition(separator)
            fields[key.strip().lower()] = value.strip()
        return fields, handle.tell()


def _data_file(path: Path, name: str | None) -> Path | None:
    """The single data file a detached header names (None: none, or a list or pattern), refused when missing.

    ITK's MetaImage reader says "File cannot be read: <the header>" there, not naming the data file.
    """
    if name is None or name.upper() in ("LOCAL", "LIST") or len(name.split()) > 1:
        return None
    source = path.parent / name  # an absolute name stays absolute
    if not source.is_file():
        raise ImageReadError(
            f"cannot read {path}: its data file {source}, named in the header, is missing; put it next to the header "
            f"or {REDO}"
        )
    return source


def _check_nrrd(path: Path) -> None:
    """Refuse a NRRD file whose gzip-encoded data (attached or detached) are cut, or whose data file is missing.

    ITK's NRRD reader (teem's gzread) reads a gzip stream cut inside its last bytes (the CRC and length trailer, or
    the final deflate byte) as complete; Python's gzip module reads the stream to its end and raises.
    """
    fields, start = _header_fields(path, ":", "\0")  # attached data start after the blank line ending the header
    source = _data_file(path, fields.get("data file", fields.get("datafile")))
    skipped_lines = fields.get("line skip", fields.get("lineskip", "0")) != "0"  # lines before the gzip stream
    if fields.get("encoding", "").lower() not in ("gzip", "gz") or skipped_lines:
        return
    with open(source or path, "rb") as handle:
        handle.seek(0 if source else start)
        with gzip.GzipFile(fileobj=handle) as stream:
            while stream.read(_CHUNK):
                pass


def resolve_max_pixels(max_pixels: int | None = None) -> int:
    """The raster pixel limit: ``max_pixels``, else :data:`MAX_PIXELS_ENV` if set, else :data:`DEFAULT_MAX_PIXELS`."""
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
    """Open a raster lazily; PNG, JPEG, BMP and TIFF by their Pillow plugins, so that the caller's limit replaces
    ``PIL.Image.MAX_IMAGE_PIXELS`` (never changed here)."""

    from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(_PNG_MAGIC):
        # Pillow stops reading after the pixel data, so a PNG cut inside its closing IEND chunk decodes without error
        if _PNG_END not in path.read_bytes():
            raise truncated_error(
                path, f"the PNG stops after {path.stat().st_size} bytes, before the end of its IEND chunk"
            )
        return PngImagePlugin.PngImageFile(path)
    if head.startswith(_JPEG_MAGIC):
        return JpegImagePlugin.jpeg_factory(path)  # a multi-picture (MPO) file opens with its frames
    if head.startswith(b"BM"):
        return BmpImagePlugin.BmpImageFile(path)
    if head[:4] in _TIFF_MAGICS:
        return TiffImagePlugin.TiffImageFile(path)
    return Image.open(path)


def _read_raster(path: Path, max_pixels: int) -> np.ndarray:
    from PIL import Image, ImageFile, UnidentifiedImageError

    # Pillow decodes a cut PNG, JPEG, BMP or TIFF, filling in the missing pixels, while ImageFile.LOAD_TRUNCATED_IMAGES
    # is set (any library in the process may set it), and raises "image file is truncated" otherwise
    allow_truncated, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with _open_raster(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise ImageReadError(
                    f"cannot read {path}: it has {img.n_frames} frames; only single-frame 2D rasters are supported, "
                    f"save the stack as NIfTI (.nii.gz) or as one file per slice"
                )
            width, height = img.size
            if (pixels := width * height) > max_pixels:
                raise ImageReadError(
                    f"cannot read {path}: it declares {width} x {height} = {pixels:,} pixels, more than the limit of "
                    f"{max_pixels:,} (a guard against decompression bombs, small files that expand to huge images); "
                    f"if the image is genuine, raise the limit to at least {pixels}: pass max_pixels={pixels} "
                    f"(msa2net predict --max-pixels {pixels}) or set the environment variable "
                    f"{MAX_PIXELS_ENV}={pixels}"
                )
            img.load()
            mode = "I;16" if img.mode.startswith("I;16") else img.mode
            if mode == "P":
                palette = np.asarray(img.getpalette() or [], dtype=np.int32).reshape(-1, 3)
                if palette.size > 0 and np.all(palette == palette[:, :1]):
                    img = img.convert("L")
            elif mode in ("1", "LA", "La"):
                img = img.convert("L")
            elif mode not in _RASTER_DTYPES:
                img = img.convert("RGB")
            return np.array(img, dtype=_RASTER_DTYPES.get(mode, np.uint8))
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
            f"{path.suffix} image; {REDO}"
        ) from err
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> tuple[np.ndarray, Geometry]:
    """Read an image file or a DICOM series folder: ``(array in the stored dtype, geometry)``.

    A cut or undecodable file is refused (:class:`ImageReadError` naming the path, reason and fix), never read with
    zero-filled pixels, and so is a raster above :func:`resolve_max_pixels`. Colour rasters are ``(Y, X, 3)`` uint8,
    grey-palette images grey values, other palette images their indices; rasters get ``Geometry.identity(2)``.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"cannot read {p}: no such file or folder; check the path")
    if p.is_dir():
        from .dicom import read_dicom_series  # here, not on top: it loads pydicom

        return read_dicom_series(p)
    suffix = image_suffix(p)
    if suffix is None:
        raise ImageReadError(
            f"cannot read {p}: unsupported suffix; expected one of {', '.join(IMAGE_SUFFIXES)}, or pass a folder "
            f"holding a DICOM series"
        )
    if suffix in RASTER_SUFFIXES:
        return _read_raster(p, resolve_max_pixels(max_pixels)), Geometry.identity(2)
    try:
        nifti2 = suffix in (".nii", ".nii.gz") and _check_nifti(p)
        if suffix == ".nrrd":
            _check_nrrd(p)
        elif suffix in (".mha", ".mhd"):
            _data_file(p, _header_fields(p, "=", "elementdatafile")[0].get("elementdatafile"))
    except EOFError as err:  # the gzip module: the stream stops before its end marker or trailer
        raise truncated_error(p, f"its gzip stream stops early ({err})") from err
    except (gzip.BadGzipFile, zlib.error) as err:
        raise ImageReadError(
            f"cannot read {p}: the file is corrupt: its gzip data cannot be decoded ({err}); {REDO}"
        ) from err
    except PermissionError as err:
        raise ImageReadError(f"cannot read {p}: permission denied ({err}); make the file readable") from err
    except OSError as err:
        raise ImageReadError(f"cannot read {p}: {err}; check the file and {REDO}") from err
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as err:
        if nifti2:
            raise ImageReadError(
                f"cannot read {p}: it is a NIfTI-2 file, which SimpleITK {sitk.Version.VersionString()} cannot read; "
                "save it as NIfTI-1 (most tools can, e.g. nibabel.Nifti1Image(...).to_filename)"
            ) from err
        raise ImageReadError(
            f"cannot read {p}: {first_line(err)}; the file is corrupt, truncated or not a {suffix} image; {REDO}"
        ) from err
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def _label_dtype(array: np.ndarray) -> np.dtype:
    """Smallest unsigned (or signed if negative) integer dtype holding the values of an integer/bool array."""
    if array.dtype == np.bool_ or array.size == 0:
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
    """Write an array with its geometry (None: identity; PNG stores none), atomically; returns the path.

    A trailing channel axis writes a multi-component image. 64-bit integers and bools are stored in the smallest
    integer type holding their values (viewers handle 64-bit NIfTI poorly). PNG takes ``(Y, X)`` integers in
    0..65535 or ``(Y, X, 3|4)`` uint8.
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
    if array.ndim not in (geometry.ndim, geometry.ndim + 1):
        raise ValueError(
            f"cannot write {target}: array shape {array.shape} does not fit a {geometry.ndim}D geometry; expected "
            f"{geometry.ndim} axes (or {geometry.ndim + 1} with a trailing channel axis)"
        )
    is_vector = array.ndim == geometry.ndim + 1
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
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(
                f"cannot write {target}: PNG holds values 0..65535, found {lo}..{hi}; write .nii.gz instead"
            )
        img = Image.fromarray(array.astype(np.uint8 if hi < 256 else np.uint16))
    else:
        raise ValueError(f"cannot write {target}: PNG takes (Y, X) or (Y, X, 3|4) arrays, got shape {array.shape}")
    with atomic_path(target) as tmp:
        img.save(tmp, format="PNG")
