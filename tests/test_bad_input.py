"""Bad input gets a clear refusal that names the file and the fix, and nothing is silently corrupted.

Sections: truncated files of every format the readers accept; decompression bombs; inputs whose intensities do not
fit the checkpoint's preprocessing; invalid phantom arguments; failed writes in ``predict``. (Broken and looping
symbolic links in dataset folders are tested in tests/test_folder.py.)
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image, ImageFile

from msa2net.data.io import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageReadError,
    read_image,
    resolve_max_pixels,
    write_image,
)
from msa2net.data.phantom import make_isic_phantom, make_synapse_phantom
from msa2net.data.preprocessing import Preprocessing
from msa2net.data.synapse_prepare import prepare_synapse
from msa2net.engine import predict as predict_module
from msa2net.engine.checkpoint import load_checkpoint, model_from_checkpoint
from msa2net.engine.inference import predict_image, predict_volume
from msa2net.engine.predict import predict_files

CLASSES = ["background", "a", "b"]
CT = Preprocessing(kind="ct_window", in_channels=1)
RGB = Preprocessing(kind="rgb", in_channels=3)
#: int16 HU noise: 3072 bytes of voxels that barely compress, so every format's file is a few kB
VOLUME = np.random.default_rng(0).integers(-1000, 1000, size=(6, 16, 16)).astype(np.int16)


def _listing(folder: Path) -> set[str]:
    """Every entry of ``folder``, hidden temporaries included."""
    return {p.name for p in folder.iterdir()}


def _hu_slice(seed: int, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    """int16 HU: a bright disc (200 HU) on soft tissue (40 HU) in air (-1000 HU), plus noise."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    body = (yy - h / 2) ** 2 / (0.4 * h) ** 2 + (xx - w / 2) ** 2 / (0.45 * w) ** 2 < 1
    disc = (yy - h / 2.5) ** 2 + (xx - w / 1.8) ** 2 < (0.15 * min(h, w)) ** 2
    noise = np.random.default_rng(seed).normal(0, 20, size=shape)
    return (np.where(body, 40, -1000) + np.where(disc, 160, 0) + noise).astype(np.int16)


# ---------------------------------------------------------------------------------------------------------------------
# 1. Truncated files: refused by every reader, never zero-filled
# ---------------------------------------------------------------------------------------------------------------------


def _nifti2(array: np.ndarray) -> bytes:
    """A single-file NIfTI-2 image built by hand: 540-byte header, 4-byte extension flag, int16 voxels."""
    header = bytearray(540)
    struct.pack_into("<i", header, 0, 540)
    header[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<hh", header, 12, 4, 16)  # datatype int16, bitpix 16
    z, y, x = array.shape
    struct.pack_into("<8q", header, 16, 3, x, y, z, 1, 1, 1, 1)
    struct.pack_into("<8d", header, 104, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0)
    struct.pack_into("<q", header, 168, 544)  # vox_offset
    struct.pack_into("<i", header, 500, 2)  # xyzt_units: mm
    return bytes(header) + b"\0\0\0\0" + array.astype("<i2").tobytes()


#: Every file kind the readers accept, with the encodings their writers use.
KINDS = [
    "nifti1.nii",
    "nifti1.nii.gz",
    "nifti2.nii",
    "nifti2.nii.gz",
    "nrrd-raw",
    "nrrd-gzip",
    "mha-raw",
    "mha-zlib",
    "mhd-raw",
    "mhd-zlib",
    "png",
    "jpg",
    "bmp",
    "tif",
]


def _complete_file(folder: Path, kind: str) -> tuple[Path, Path, np.ndarray | None]:
    """A complete image of ``kind``: (the path to read, the file to cut, the array it holds or None if lossy).

    The file to cut is the data file for ``.mhd`` and the image file itself otherwise.
    """
    itk = sitk.GetImageFromArray(VOLUME)
    if kind.startswith("nifti1"):
        path = write_image(VOLUME, None, folder / f"image.{kind.split('.', 1)[1]}")
        return path, path, VOLUME
    if kind.startswith("nifti2"):
        data = _nifti2(VOLUME)
        path = folder / f"image.{kind.split('.', 1)[1]}"
        path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
        return path, path, VOLUME
    if kind.split("-")[0] in ("nrrd", "mha", "mhd"):
        fmt, encoding = kind.split("-")
        path = folder / f"image.{fmt}"
        sitk.WriteImage(itk, str(path), useCompression=encoding != "raw")
        data_file = path.with_suffix(".raw" if encoding == "raw" else ".zraw") if fmt == "mhd" else path
        return path, data_file, VOLUME
    rng = np.random.default_rng(2)
    path = folder / f"image.{kind}"
    if kind == "jpg":
        Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(path, quality=90)
        return path, path, None
    array = rng.integers(0, 256, size=(64, 64) if kind != "bmp" else (64, 64, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path, path, array


CUTS = [100, 250, 348, 540, "half", "end-10", "end-1"]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's note on a cut TIFF directory
@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_truncated_file_is_refused_naming_the_file_and_the_fix(tmp_path: Path, kind: str, cut: int | str) -> None:
    path, data_file, _ = _complete_file(tmp_path, kind)
    data = data_file.read_bytes()
    keep = {"half": len(data) // 2, "end-10": len(data) - 10, "end-1": len(data) - 1}.get(cut, cut)
    assert isinstance(keep, int) and 0 < keep < len(data)
    data_file.write_bytes(data[:keep])

    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message or "incomplete" in message
    assert "re-export or re-download" in message


@pytest.mark.parametrize("kind", KINDS)
def test_complete_files_of_every_kind_still_read(tmp_path: Path, kind: str) -> None:
    path, _, expected = _complete_file(tmp_path, kind)
    if kind.startswith("nifti2"):
        # SimpleITK 2.5 reads NIfTI-1 only: a complete NIfTI-2 file must be named as such, not called truncated
        try:
            array, _ = read_image(path)
        except ImageReadError as err:
            assert "NIfTI-2" in str(err) and "NIfTI-1" in str(err) and "truncated" not in str(err)
            return
    else:
        array, _ = read_image(path)
    if expected is None:
        assert array.shape == (64, 64, 3) and array.dtype == np.uint8
    else:
        np.testing.assert_array_equal(array, expected)


def test_gzip_members_padding_and_plain_data_under_gz_suffix_still_read(tmp_path: Path) -> None:
    raw = write_image(VOLUME, None, tmp_path / "plain.nii").read_bytes()
    variants = {
        "members.nii.gz": gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]),  # concatenated gzip members
        "padded.nii.gz": gzip.compress(raw) + b"\0" * 64,  # zero padding after the stream
        "not_gzipped.nii.gz": raw,  # ITK reads an uncompressed file under a .gz name
    }
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(read_image(tmp_path / name)[0], VOLUME)


def test_damaged_gzip_stream_is_refused_as_corrupt(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(write_image(VOLUME, None, tmp_path / "v.nii").read_bytes()))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "flipped.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="corrupt") as info:
        read_image(path)
    assert str(path) in str(info.value) and "re-export or re-download" in str(info.value)


def test_mhd_with_missing_data_file_names_it(tmp_path: Path) -> None:
    path = write_image(VOLUME, None, tmp_path / "v.mhd")
    (tmp_path / "v.zraw").unlink()
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and "v.zraw" in str(info.value) and "missing" in str(info.value)


@pytest.mark.parametrize("kind", ["png", "jpg", "bmp", "tif"])
def test_truncated_rasters_are_refused_even_if_pillow_is_told_to_accept_them(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing in msa2net turns it on
    path, _, _ = _complete_file(tmp_path, kind)
    path.write_bytes(path.read_bytes()[:-10])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # another library in the process may set it
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(path)


@pytest.mark.parametrize("cut", [100, 250, "half", "end-10", "end-1"])
def test_dicom_series_with_a_truncated_slice_is_refused_not_read_a_slice_short(tmp_path: Path, cut: int | str) -> None:
    from test_io import _dicom_volume, _write_dicom_series

    array, _, volume = _dicom_volume()
    folder = tmp_path / "series"
    _write_dicom_series(folder, volume, "1.2.826.0.1.3680043.2.1125.77")
    assert read_image(folder)[0].shape == array.shape
    middle = sorted(folder.iterdir())[1]
    data = middle.read_bytes()
    keep = {"half": len(data) // 2, "end-10": len(data) - 10, "end-1": len(data) - 1}.get(cut, cut)
    assert isinstance(keep, int) and 0 < keep < len(data)
    middle.write_bytes(data[:keep])  # GDCM used to leave the file out: a volume one slice short, no error

    with pytest.raises(ImageReadError) as info:
        read_image(folder)
    message = str(info.value)
    assert str(middle) in message and "truncated" in message and "re-export or re-download" in message


def _gzip_prefix(data: bytes, decompressed: int) -> bytes:
    """The shortest prefix of gzip ``data`` that decompresses to at least ``decompressed`` bytes."""
    inflater = zlib.decompressobj(16 + 15)
    produced = 0
    for end in range(1, len(data) + 1):
        produced += len(inflater.decompress(data[end - 1 : end]))
        if produced >= decompressed:
            return data[:end]
    raise AssertionError(f"the stream holds fewer than {decompressed} bytes")


def test_prepare_synapse_refuses_a_truncated_scan_instead_of_writing_constant_slices(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_synapse_phantom(raw, cases=["0005", "0006"], seed=0, slices=(2, 3), size=16)
    scan = raw / "RawData" / "Training" / "img" / "img0006.nii.gz"
    # the user's file: a header-sized prefix (the 352-byte header and a few voxels, under the 540 bytes the old
    # check needed before it gave up); ITK read the missing voxels as zeros
    scan.write_bytes(_gzip_prefix(scan.read_bytes(), 400))
    out = tmp_path / "prepared"
    with pytest.raises(ValueError) as info:
        prepare_synapse(raw, out, progress=False)
    message = str(info.value)
    assert str(scan) in message and "truncated" in message and "re-export or re-download" in message
    written = [p.name for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not any("0006" in name for name in written)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Decompression bombs: one reported, skipped input with a limit the user can raise
# ---------------------------------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bilevel_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG written row block by row block: a huge declared size in a small file."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 256) for _ in range(height // 256)]
    parts += [compressor.compress(row * (height % 256)), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grey, no interlace
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )
    return path


def test_bomb_is_refused_with_pixel_count_limit_and_how_to_raise_it(tmp_path: Path) -> None:
    limit_before = Image.MAX_IMAGE_PIXELS
    bomb = _bilevel_png(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageReadError) as info:
        read_image(bomb)
    message = str(info.value)
    assert str(bomb) in message and "900,000,000 pixels" in message and f"{DEFAULT_MAX_PIXELS:,}" in message
    assert "max_pixels=" in message and f"{MAX_PIXELS_ENV}=" in message and "--max-pixels" in message
    assert Image.MAX_IMAGE_PIXELS == limit_before  # Pillow's global limit is never touched


def test_pixel_limit_comes_from_argument_then_environment_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _bilevel_png(tmp_path / "big.png", 2000, 1500)  # 3 megapixels
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert resolve_max_pixels() == DEFAULT_MAX_PIXELS
    assert read_image(image)[0].shape == (1500, 2000)
    with pytest.raises(ImageReadError, match="3,000,000 pixels, more than the limit of 1,000,000"):
        read_image(image, max_pixels=1_000_000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000000")
    with pytest.raises(ImageReadError, match="limit of 1,000,000"):
        read_image(image)
    assert read_image(image, max_pixels=3_000_000)[0].shape == (1500, 2000)  # the argument wins
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own global does not decide
    monkeypatch.setenv(MAX_PIXELS_ENV, "5_000_000")
    assert read_image(image)[0].shape == (1500, 2000)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "many"])
def test_invalid_pixel_limits_are_refused(bad: object, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        resolve_max_pixels(bad)  # type: ignore[arg-type]
    monkeypatch.setenv(MAX_PIXELS_ENV, str(bad))
    with pytest.raises(ValueError, match=MAX_PIXELS_ENV):
        resolve_max_pixels()


@pytest.fixture(scope="module")
def ct_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> Path:
    return tiny_checkpoint(CLASSES, CT, tmp_path_factory.mktemp("ckpt") / "ct.pt", seed=CT.in_channels)


@pytest.fixture(scope="module")
def rgb_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> Path:
    return tiny_checkpoint(CLASSES, RGB, tmp_path_factory.mktemp("ckpt") / "rgb.pt", seed=RGB.in_channels)


def test_predict_skips_a_bomb_and_segments_the_files_after_it(rgb_ckpt: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)).save(inputs / "a_good.png")
    _bilevel_png(inputs / "b_bomb.png", 30000, 30000)
    Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(inputs / "c_good.png")
    out = tmp_path / "out"

    report = predict_files(rgb_ckpt, inputs, out, progress=False)

    assert not report.ok
    assert [p.name for p in report.written] == ["a_good.png", "c_good.png"]
    assert [path.name for path, _ in report.failed] == ["b_bomb.png"]
    reason = report.failed[0][1]
    assert "b_bomb.png" in reason and "900,000,000 pixels" in reason and "--max-pixels" in reason
    assert _listing(out) == {"a_good.png", "c_good.png", "predictions.json", "report.html"}
    assert np.asarray(Image.open(out / "c_good.png")).shape == (20, 24)
    record = json.loads((out / "predictions.json").read_text())
    assert [Path(f["input"]).name for f in record["failed"]] == ["b_bomb.png"]
    assert record["max_pixels"] == DEFAULT_MAX_PIXELS


def test_predict_max_pixels_is_passed_to_the_reader(rgb_ckpt: Path, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "small.png")
    report = predict_files(rgb_ckpt, tmp_path / "small.png", tmp_path / "out", progress=False, max_pixels=1000)
    assert "1,200 pixels, more than the limit of 1,000" in report.failed[0][1]
    with pytest.raises(ValueError, match="max_pixels"):
        predict_files(rgb_ckpt, tmp_path / "small.png", tmp_path / "out2", progress=False, max_pixels=0)
    assert not (tmp_path / "out2").exists()


# ---------------------------------------------------------------------------------------------------------------------
# 4. Inputs whose type or value range does not fit the checkpoint's preprocessing
# ---------------------------------------------------------------------------------------------------------------------


def test_ct_model_refuses_an_8bit_png_unless_allowed(ct_ckpt: Path, tmp_path: Path) -> None:
    hu = _hu_slice(4)
    picture = ((hu.astype(np.float32) + 1000) / 1300 * 255).clip(0, 255).astype(np.uint8)  # a "screenshot" of it
    Image.fromarray(picture).save(tmp_path / "slice.png")
    write_image(np.stack([hu, _hu_slice(5)]), None, tmp_path / "scan.nii.gz")
    sources = [tmp_path / "slice.png", tmp_path / "scan.nii.gz"]

    report = predict_files(ct_ckpt, sources, tmp_path / "out", progress=False)

    assert [path.name for path, _ in report.failed] == ["slice.png"] and not report.ok
    reason = report.failed[0][1]
    assert "Hounsfield" in reason and "ct_window" in reason  # what was expected
    assert "uint8 with values 0.." in reason and "8-bit (0..255)" in reason  # what was found
    assert "allow_mismatched_input=True" in reason and "--allow-mismatched-input" in reason  # how to override
    assert _listing(tmp_path / "out") == {"scan.nii.gz", "predictions.json", "report.html"}

    allowed = predict_files(ct_ckpt, sources, tmp_path / "allowed", progress=False, allow_mismatched_input=True)

    assert allowed.ok
    model = model_from_checkpoint(load_checkpoint(ct_ckpt))
    mask = np.asarray(Image.open(tmp_path / "allowed" / "slice.png"))
    np.testing.assert_array_equal(mask, predict_image(model, picture, preprocessing=CT))
    assert json.loads((tmp_path / "allowed" / "predictions.json").read_text())["allow_mismatched_input"] is True


def test_ct_model_refuses_8bit_16bit_and_prescaled_inputs(ct_ckpt: Path, tmp_path: Path) -> None:
    hu = np.stack([_hu_slice(6), _hu_slice(7)])
    write_image(hu, None, tmp_path / "good.nrrd")
    write_image(((hu + 1000) // 8).clip(0, 255).astype(np.uint8), None, tmp_path / "eight_bit.nrrd")
    write_image((hu.astype(np.int32) + 1024).clip(0, None).astype(np.uint16), None, tmp_path / "offset.nrrd")
    write_image(((hu + 1000) / 2000).clip(0, 1).astype(np.float32), None, tmp_path / "scaled.nrrd")
    Image.fromarray((hu[0].astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16)).save(tmp_path / "sixteen_bit.png")
    names = ("good.nrrd", "eight_bit.nrrd", "offset.nrrd", "scaled.nrrd", "sixteen_bit.png")
    sources = [tmp_path / name for name in names]

    report = predict_files(ct_ckpt, sources, tmp_path / "out", progress=False)

    reasons = {path.name: reason for path, reason in report.failed}
    assert set(reasons) == {"eight_bit.nrrd", "offset.nrrd", "scaled.nrrd", "sixteen_bit.png"}
    assert "uint8" in reasons["eight_bit.nrrd"]
    assert "uint16" in reasons["offset.nrrd"] and "HU with an offset" in reasons["offset.nrrd"]
    assert "already scaled to [0, 1]" in reasons["scaled.nrrd"]
    assert "uint16" in reasons["sixteen_bit.png"] and "raster" in reasons["sixteen_bit.png"]
    assert all("--allow-mismatched-input" in r for r in reasons.values())
    model = model_from_checkpoint(load_checkpoint(ct_ckpt))
    np.testing.assert_array_equal(
        read_image(tmp_path / "out" / "good.nrrd")[0], predict_volume(model, hu, preprocessing=CT)
    )


def test_rgb_model_refuses_prescaled_floats_unless_allowed(rgb_ckpt: Path, tmp_path: Path) -> None:
    scaled = np.random.default_rng(8).random((24, 32)).astype(np.float32)  # a grey image already in [0, 1]
    write_image(scaled, None, tmp_path / "scaled.mha")
    Image.fromarray((scaled * 255).astype(np.uint8)).save(tmp_path / "eight_bit.png")
    sources = [tmp_path / "scaled.mha", tmp_path / "eight_bit.png"]

    report = predict_files(rgb_ckpt, sources, tmp_path / "out", progress=False)

    assert [path.name for path, _ in report.failed] == ["scaled.mha"]
    assert "'rgb'" in report.failed[0][1] and "0..255" in report.failed[0][1] and "float32" in report.failed[0][1]
    assert predict_files(rgb_ckpt, sources, tmp_path / "o2", progress=False, allow_mismatched_input=True).ok


# ---------------------------------------------------------------------------------------------------------------------
# 5. Phantom generators validate their numeric arguments
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"size": 0}, "size"),
        ({"size": 15}, "size"),
        ({"size": 16.5}, "size"),
        ({"size": True}, "size"),
        ({"size": "64"}, "size"),
        ({"size": 100_000}, "size"),
        ({"slices": (0, 5)}, "slices"),
        ({"slices": (5, 2)}, "slices"),
        ({"slices": (2.5, 4)}, "slices"),
        ({"slices": (3,)}, "slices"),
        ({"slices": "34"}, "slices"),
        ({"slices": (2, 10**6)}, "slices"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"cases": []}, "cases"),
        ({"cases": ["1", "0001"]}, "more than once"),
        ({"cases": [0]}, "case ids"),
        ({"cases": [1.5]}, "case ids"),
        ({"cases": "0001"}, "cases"),
    ],
)
def test_synapse_phantom_rejects_bad_numbers_before_writing(tmp_path: Path, kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        make_synapse_phantom(tmp_path, **{"cases": ["0001"], "slices": (2, 2), "size": 16, **kwargs})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"n": 0}, "number of images"),
        ({"n": -3}, "number of images"),
        ({"n": 2.5}, "number of images"),
        ({"n": True}, "number of images"),
        ({"n": 10**7}, "number of images"),
        ({"size": 64}, "size"),
        ({"size": (16,)}, "size"),
        ({"size": (0, 64)}, "size"),
        ({"size": (32, 32, 3)}, "size"),
        ({"size": (32.0, 32)}, "size"),
        ({"size": (32, 10**6)}, "size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_isic_phantom_rejects_bad_numbers_before_writing(tmp_path: Path, kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        make_isic_phantom(tmp_path, **{"n": 1, "size": (16, 16), **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_phantoms_accept_numpy_integers(tmp_path: Path) -> None:
    assert make_isic_phantom(tmp_path / "isic", n=np.int64(1), size=(np.int32(16), 16), seed=np.uint8(3)) == [
        "ISIC_0000000"
    ]
    assert make_synapse_phantom(tmp_path / "ct", cases=[np.int64(5)], slices=(2, 2), size=np.int64(16)) == ["0005"]


# ---------------------------------------------------------------------------------------------------------------------
# 6. predict: a failed input leaves no partial output file
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def two_scans(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "scans"
    folder.mkdir()
    return [
        write_image(np.stack([_hu_slice(9), _hu_slice(10)]), None, folder / "first.nii.gz"),
        write_image(np.stack([_hu_slice(11), _hu_slice(12)]), None, folder / "second.nii.gz"),
    ]


def test_writer_failing_midway_leaves_no_file_and_the_next_input_proceeds(
    ct_ckpt: Path, two_scans: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_execute = sitk.ImageFileWriter.Execute
    calls: list[str] = []

    def disk_full_once(self: sitk.ImageFileWriter, *args: object) -> None:
        calls.append(self.GetFileName())
        if len(calls) == 1:
            Path(self.GetFileName()).write_bytes(b"half a mask")  # a partial file under the temporary name
            raise RuntimeError("No space left on device")
        real_execute(self, *args)

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", disk_full_once)
    out = tmp_path / "out"
    report = predict_files(ct_ckpt, two_scans, out, progress=False)

    assert "first.nii.gz" in Path(calls[0]).name and Path(calls[0]).name != "first.nii.gz"  # went to a temporary
    assert [path.name for path, _ in report.failed] == ["first.nii.gz"]
    assert "No space left" in report.failed[0][1]
    assert _listing(out) == {"second.nii.gz", "predictions.json", "report.html"}  # no partial file, no temporary


def test_mask_path_taken_by_a_folder_fails_that_input_only(
    ct_ckpt: Path, two_scans: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / "first.nii.gz").mkdir(parents=True)  # the mask cannot replace a folder
    (out / "first.nii.gz" / "keep.txt").write_text("user data")

    report = predict_files(ct_ckpt, two_scans, out, progress=False)

    assert [path.name for path, _ in report.failed] == ["first.nii.gz"]
    assert _listing(out) == {"first.nii.gz", "second.nii.gz", "predictions.json", "report.html"}
    assert (out / "first.nii.gz" / "keep.txt").read_text() == "user data"


def test_overlay_path_taken_by_a_folder_removes_the_mask_already_written(ct_ckpt: Path, tmp_path: Path) -> None:
    source = tmp_path / "flat.mha"
    write_image(_hu_slice(13), None, source)
    out = tmp_path / "out"
    out.mkdir()
    (out / "flat_overlay.png").mkdir()  # writing the overlay (after the mask) fails

    report = predict_files(ct_ckpt, source, out, overlays=True, progress=False)

    assert [path.name for path, _ in report.failed] == ["flat.mha"] and report.written == []
    assert _listing(out) == {
        "flat_overlay.png",
        "predictions.json",
        "report.html",
    }  # the mask flat.mha was removed again


def test_interrupt_after_the_mask_removes_it_and_propagates(
    ct_ckpt: Path, two_scans: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_module, "write_overlay_png", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_files(ct_ckpt, two_scans, out, overlays=True, progress=False)
    assert _listing(out) == set()


def test_out_dir_that_is_a_file_is_refused_before_any_work(
    ct_ckpt: Path, two_scans: list[Path], tmp_path: Path
) -> None:
    target = tmp_path / "out"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="is not a folder"):
        predict_files(ct_ckpt, two_scans, target, progress=False)
    assert target.read_text() == "not a folder"
    assert os.path.isfile(target)
