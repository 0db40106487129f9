from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from msa2net.data.io import (
    IMAGE_SUFFIXES,
    Geometry,
    ImageReadError,
    atomic_path,
    is_dicom_folder,
    is_image_file,
    list_inputs,
    read_image,
    write_image,
    write_text_atomic,
)


def _rotation_z(degrees: float) -> tuple[float, ...]:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


GEOMETRY_3D = Geometry((0.7, 0.8, 2.5), (10.0, -20.0, 30.5), _rotation_z(30.0))


def _assert_geometry_close(a: Geometry, b: Geometry, atol: float = 1e-4) -> None:
    assert a.ndim == b.ndim
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


def _visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------------


def test_geometry_dict_round_trip_and_identity() -> None:
    assert Geometry.from_dict(GEOMETRY_3D.to_dict()) == GEOMETRY_3D
    ident = Geometry.identity(3)
    assert ident.ndim == 3
    assert ident.spacing == (1.0, 1.0, 1.0) and ident.origin == (0.0, 0.0, 0.0)
    assert ident.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert Geometry.identity(2).direction == (1.0, 0.0, 0.0, 1.0)


def test_geometry_rejects_inconsistent_lengths_and_bad_spacing() -> None:
    with pytest.raises(ValueError, match="inconsistent geometry"):
        Geometry((1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        Geometry((1.0, 0.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))


def test_geometry_to_sitk_sets_values_and_checks_dimension() -> None:
    image = GEOMETRY_3D.to_sitk(sitk.Image(4, 3, 2, sitk.sitkInt16))
    _assert_geometry_close(Geometry.from_sitk(image), GEOMETRY_3D, atol=1e-12)
    with pytest.raises(ValueError, match="3D geometry cannot be set on a 2D image"):
        GEOMETRY_3D.to_sitk(sitk.Image(4, 3, sitk.sitkInt16))


# ---------------------------------------------------------------------------------------------------------------------
# Volumes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_volume_round_trip_keeps_values_dtype_and_geometry(tmp_path: Path, suffix: str, dtype: type) -> None:
    rng = np.random.default_rng(0)
    array = (rng.normal(0, 300, size=(3, 4, 5))).astype(dtype)  # (Z, Y, X), all sizes distinct
    path = write_image(array, GEOMETRY_3D, tmp_path / f"vol{suffix}")
    back, geometry = read_image(path)
    assert back.dtype == dtype
    assert back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back, array)
    _assert_geometry_close(geometry, GEOMETRY_3D)
    expected = {"vol" + suffix}
    if suffix == ".mhd":
        expected.add("vol.zraw")
    assert set(_visible_files(tmp_path)) == expected  # no temporaries left behind


def test_int64_labels_are_stored_as_uint8(tmp_path: Path) -> None:
    labels = np.arange(24, dtype=np.int64).reshape(2, 3, 4) % 9
    write_image(labels, GEOMETRY_3D, tmp_path / "lab.nii.gz")
    back, _ = read_image(tmp_path / "lab.nii.gz")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    big = np.array([[[0, 300]]], dtype=np.int64)
    write_image(big, None, tmp_path / "big.nrrd")
    back, _ = read_image(tmp_path / "big.nrrd")
    assert back.dtype == np.uint16 and back.max() == 300


def test_write_image_rejects_shape_not_fitting_geometry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not fit a 3D geometry"):
        write_image(np.zeros((2, 3, 4, 5, 6)), GEOMETRY_3D, tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match="unsupported suffix"):
        write_image(np.zeros((2, 3)), None, tmp_path / "x.jpg")
    assert _visible_files(tmp_path) == []


def test_2d_volume_formats_keep_2d_geometry(tmp_path: Path) -> None:
    geometry = Geometry((0.5, 0.25), (3.0, 4.0), (0.0, 1.0, 1.0, 0.0))
    array = np.arange(12, dtype=np.uint16).reshape(3, 4)
    write_image(array, geometry, tmp_path / "slice.mha")
    back, got = read_image(tmp_path / "slice.mha")
    np.testing.assert_array_equal(back, array)
    _assert_geometry_close(got, geometry)


# ---------------------------------------------------------------------------------------------------------------------
# 2D rasters
# ---------------------------------------------------------------------------------------------------------------------


def test_png_label_maps_round_trip_uint8_and_uint16(tmp_path: Path) -> None:
    small = np.array([[0, 1, 2], [3, 255, 7]], dtype=np.int64)
    write_image(small, None, tmp_path / "small.png")
    back, geometry = read_image(tmp_path / "small.png")
    assert back.dtype == np.uint8 and back.shape == (2, 3)
    np.testing.assert_array_equal(back, small)
    assert geometry == Geometry.identity(2)
    large = np.array([[0, 256], [1000, 65535]], dtype=np.int32)
    write_image(large, None, tmp_path / "large.png")
    back, _ = read_image(tmp_path / "large.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, large)


def test_png_rejects_floats_and_negative_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PNG holds integer data"):
        write_image(np.zeros((2, 2), np.float32), None, tmp_path / "f.png")
    with pytest.raises(ValueError, match="0..65535"):
        write_image(np.array([[-1, 0]]), None, tmp_path / "n.png")
    assert _visible_files(tmp_path) == []


def test_rgb_png_round_trip_and_grey_and_palette_reading(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    write_image(rgb, None, tmp_path / "rgb.png")
    back, _ = read_image(tmp_path / "rgb.png")
    assert back.shape == (5, 7, 3) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, rgb)
    # RGBA loses alpha
    Image.fromarray(np.dstack([rgb, np.full((5, 7), 9, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png")[0], rgb)
    # Colour palette: indices are the label ids
    palette_img = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8)).convert("P")
    palette_img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    palette_img.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png")[0], [[0, 1], [2, 1]])


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".bmp", ".tif"])
def test_reads_colour_and_grey_rasters(tmp_path: Path, suffix: str) -> None:
    colour = np.zeros((8, 10, 3), np.uint8)
    colour[..., 0] = 200
    colour[2:6, 3:7, 2] = 120
    lossless = {"quality": 100, "subsampling": 0} if "jp" in suffix else {}
    Image.fromarray(colour).save(tmp_path / f"c{suffix}", **lossless)
    back, geometry = read_image(tmp_path / f"c{suffix}")
    assert back.shape == (8, 10, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - colour).max() <= (8 if "jp" in suffix else 0)
    assert geometry.ndim == 2
    grey = np.tile(np.arange(10, dtype=np.uint8) * 20, (8, 1))
    Image.fromarray(grey).save(tmp_path / f"g{suffix}", **lossless)
    back, _ = read_image(tmp_path / f"g{suffix}")
    assert back.shape == (8, 10)
    assert np.abs(back.astype(int) - grey).max() <= (6 if "jp" in suffix else 0)


def test_16bit_tif_is_uint16(tmp_path: Path) -> None:
    array = np.array([[0, 4000], [65535, 7]], np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.tif")
    back, _ = read_image(tmp_path / "deep.tif")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, array)


# ---------------------------------------------------------------------------------------------------------------------
# DICOM series
# ---------------------------------------------------------------------------------------------------------------------


def _write_dicom_series(folder: Path, volume: sitk.Image, series_uid: str, prefix: str = "slice") -> None:
    """Write ``volume`` as one DICOM file per slice, with the tags a series reader needs."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = volume.GetDirection()
    orientation = "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    for k in range(volume.GetDepth()):
        image_slice = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0037": orientation,
            "0020|0032": "\\".join(str(v) for v in position),
            "0020|0013": str(k + 1),
            "0018|0050": str(volume.GetSpacing()[2]),
        }
        for key, value in tags.items():
            image_slice.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(image_slice)


def _dicom_volume() -> tuple[np.ndarray, Geometry, sitk.Image]:
    array = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) * 7 - 100
    geometry = Geometry((0.7, 0.8, 2.5), (10.0, -20.0, 30.0), (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    return array, geometry, geometry.to_sitk(sitk.GetImageFromArray(array))


def test_dicom_series_folder_reads_as_volume_with_geometry(tmp_path: Path) -> None:
    array, geometry, volume = _dicom_volume()
    _write_dicom_series(tmp_path / "series", volume, "1.2.826.0.1.3680043.2.1125.2")
    assert is_dicom_folder(tmp_path / "series")
    back, got = read_image(tmp_path / "series")
    assert back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back.astype(np.int64), array)
    _assert_geometry_close(got, geometry, atol=1e-3)
    # DICOM files often carry no suffix: GDCM recognises them by content.
    for path in (tmp_path / "series").iterdir():
        path.rename(path.with_suffix(""))
    assert is_dicom_folder(tmp_path / "series")
    assert list_inputs(tmp_path) == [tmp_path / "series"]
    np.testing.assert_array_equal(read_image(tmp_path / "series")[0].astype(np.int64), array)


def test_folder_with_two_dicom_series_is_an_error_listing_them(tmp_path: Path) -> None:
    _, _, volume = _dicom_volume()
    _write_dicom_series(tmp_path / "mixed", volume, "1.2.826.0.1.3680043.2.1125.3", prefix="a")
    _write_dicom_series(tmp_path / "mixed", volume, "1.2.826.0.1.3680043.2.1125.4", prefix="b")
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "mixed")
    message = str(info.value)
    assert str(tmp_path / "mixed") in message
    assert "1.2.826.0.1.3680043.2.1125.3" in message and "1.2.826.0.1.3680043.2.1125.4" in message
    assert "2 DICOM series" in message


def test_folder_without_dicom_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no DICOM series"):
        read_image(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["broken.nii.gz", "broken.nrrd", "broken.mha", "broken.png", "broken.jpg"])
def test_corrupt_file_error_names_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


# Truncated files of every format: tests/test_bad_input.py


def test_simpleitk_errors_give_itks_sentence_not_a_stale_errno(tmp_path: Path) -> None:
    path = write_image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), None, tmp_path / "cut.mha")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message and "File cannot be read" in message and "re-export or re-download" in message
    assert "No such file" not in message and "Exception thrown" not in message


def test_missing_and_unsupported_paths(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "absent.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageReadError, match="unsupported suffix"):
        read_image(tmp_path / "notes.txt")


# ---------------------------------------------------------------------------------------------------------------------
# Listing inputs
# ---------------------------------------------------------------------------------------------------------------------


def test_list_inputs_expands_folders_and_keeps_dicom_series_whole(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    write_image(np.zeros((2, 3, 4), np.int16), None, inputs / "b.nii.gz")
    write_image(np.zeros((3, 4), np.uint8), None, inputs / "a.png")
    write_image(np.zeros((2, 3, 4), np.int16), None, inputs / "c.mhd")  # plus c.zraw, not an input
    (inputs / "readme.txt").write_text("x")
    (inputs / ".hidden.png").write_bytes(b"")
    _, _, volume = _dicom_volume()
    _write_dicom_series(inputs / "d_series", volume, "1.2.826.0.1.3680043.2.1125.5")
    (inputs / "e_other").mkdir()
    (inputs / "e_other" / "x.txt").write_text("x")

    found = list_inputs(inputs)
    assert [p.name for p in found] == ["a.png", "b.nii.gz", "c.mhd", "d_series"]
    assert list_inputs([inputs / "d_series"]) == [inputs / "d_series"]
    assert list_inputs([inputs / "a.png", inputs, inputs / "a.png"])[0] == inputs / "a.png"
    assert len(list_inputs([inputs / "a.png", inputs])) == 4  # duplicates dropped
    assert is_image_file(inputs / "b.nii.gz") and not is_image_file(inputs / "c.zraw")
    assert not is_image_file(inputs / ".hidden.png")


def test_list_inputs_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        list_inputs(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported suffix"):
        list_inputs(tmp_path / "x.txt")


def test_image_suffixes_cover_the_documented_formats() -> None:
    for suffix in (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".bmp", ".tif"):
        assert suffix in IMAGE_SUFFIXES


# ---------------------------------------------------------------------------------------------------------------------
# Atomic writes and overlays
# ---------------------------------------------------------------------------------------------------------------------


def test_atomic_path_leaves_nothing_on_failure_and_keeps_old_file(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "out.json", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert _visible_files(tmp_path) == ["out.json"]
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith("out.json") and tmp.name.startswith(".")
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_interrupted_volume_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_image(np.ones((2, 3, 4), np.int16), GEOMETRY_3D, tmp_path / "v.nii.gz")

    def failing_execute(self: sitk.ImageFileWriter, image: sitk.Image) -> None:
        Path(self.GetFileName()).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", failing_execute)
    with pytest.raises(RuntimeError, match="disk full"):
        write_image(np.zeros((2, 3, 4), np.int16), GEOMETRY_3D, path)
    monkeypatch.undo()
    assert _visible_files(tmp_path) == ["v.nii.gz"]
    np.testing.assert_array_equal(read_image(path)[0], np.ones((2, 3, 4)))


@pytest.mark.parametrize("name", ["nan.nii.gz", "nan.nii"])
def test_nifti_with_nan_is_refused_not_zeroed(tmp_path, name):
    array = np.ones((3, 4, 5), np.float32)
    array[1, 2, 3] = np.nan
    array[0, 0, 0] = np.inf
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(ImageReadError, match=rf"{name}: 2 voxel\(s\) are NaN or infinite"):
        read_image(path)
    array[np.isnan(array) | np.isinf(array)] = 0.5
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    np.testing.assert_array_equal(read_image(path)[0], array)
