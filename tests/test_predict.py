"""predict_files: masks keep the input's shape and geometry, equal direct inference, and bad inputs are skipped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

import msa2net
from msa2net.data.io import read_image
from msa2net.data.preprocessing import Preprocessing
from msa2net.engine import predict as predict_module
from msa2net.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
)
from msa2net.engine.inference import predict_image, predict_volume
from msa2net.engine.predict import predict_files, summarise_labels

CLASSES = ["background", "a", "b"]
CT = Preprocessing(kind="ct_window", in_channels=1)
RGB = Preprocessing(kind="rgb", in_channels=3)
# 30 degrees about z: a proper rotation, so NIfTI's quaternion header can store it
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)


def _phantom(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """int16 HU: a bright disc (200 HU) on soft tissue (40 HU) in air (-1000 HU), plus noise."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    body = (yy - h / 2) ** 2 / (0.4 * h) ** 2 + (xx - w / 2) ** 2 / (0.45 * w) ** 2 < 1
    disc = (yy - h / 2.5) ** 2 + (xx - w / 1.8) ** 2 < (0.15 * min(h, w)) ** 2
    slice_hu = np.where(body, 40, -1000) + np.where(disc, 160, 0)
    return (slice_hu[None] + rng.normal(0, 20, size=(d, h, w))).astype(np.int16)


def _write_sitk(array: np.ndarray, path: Path, spacing: tuple, origin: tuple, direction: tuple) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def _write_dicom_series(volume: np.ndarray, folder: Path, spacing: tuple, origin: tuple) -> Path:
    """One file per axial slice with the tags GDCM needs to stack them (position, orientation, series UID)."""
    folder.mkdir()
    uid = "1.2.826.0.1.3680043.8.498.7"
    for z in range(volume.shape[0]):
        image = sitk.GetImageFromArray(volume[z])
        image.SetSpacing(spacing[:2])
        position = (origin[0], origin[1], origin[2] + z * spacing[2])
        tags = {
            "0008|0060": "CT",
            "0020|0052": uid + ".3",
            "0010|0020": "P1",
            "0020|000d": uid + ".1",
            "0020|000e": uid + ".2",
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:g}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]:g}\\{spacing[0]:g}",
            "0018|0050": f"{spacing[2]:g}",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(image)
    return folder


@pytest.fixture(scope="module")
def grey_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> Path:
    return tiny_checkpoint(CLASSES, CT, tmp_path_factory.mktemp("ckpt") / "grey.pt", seed=1)


@pytest.fixture(scope="module")
def grey_model(grey_ckpt: Path) -> msa2net.MSA2Net:
    return model_from_checkpoint(load_checkpoint(grey_ckpt))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    # A 2D raster a CT model may take: a float TIFF in HU (an 8-bit PNG is refused, see test_bad_input.py)
    Image.fromarray(_phantom((1, 50, 60), 3)[0].astype(np.float32)).save(root / "photo.tif")
    return {
        "nifti": _write_sitk(
            _phantom((6, 40, 48), 0), root / "case.nii.gz", (0.8, 0.7, 3.0), (-10, 20, 30.5), DIRECTION
        ),
        "nrrd": _write_sitk(_phantom((5, 36, 44), 1), root / "scan.nrrd", (0.9, 0.9, 2.0), (5, -5, 0), DIRECTION),
        "dicom": _write_dicom_series(_phantom((4, 32, 40), 2), root / "series1", (0.75, 0.8, 2.5), (-12.5, 30, 100)),
        "raster": root / "photo.tif",
    }


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_masks_match_direct_inference_and_keep_geometry(
    grey_ckpt: Path, grey_model: msa2net.MSA2Net, inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = predict_files(grey_ckpt, list(inputs.values()), out, batch_size=4, progress=False)

    assert report.ok and report.failed == []
    expected = {"nifti": "case.nii.gz", "nrrd": "scan.nrrd", "dicom": "series1.nii.gz", "raster": "photo.png"}
    assert [p.name for p in report.written] == list(expected.values())
    assert _listing(out) == {*expected.values(), "predictions.json", "report.html"}  # no temporaries, nothing else
    record = json.loads((out / "predictions.json").read_text())
    assert record["class_names"] == CLASSES and record["failed"] == []
    varied = 0
    for (kind, source), case in zip(inputs.items(), record["cases"]):
        image, geometry = read_image(source)
        mask, mask_geometry = read_image(out / expected[kind])
        assert mask.shape == image.shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2}
        if kind == "raster":
            direct = predict_image(grey_model, image, preprocessing=CT)
        else:
            direct = predict_volume(grey_model, image, preprocessing=CT)
            np.testing.assert_allclose(mask_geometry.spacing, geometry.spacing, atol=1e-5)
            np.testing.assert_allclose(mask_geometry.origin, geometry.origin, atol=1e-4)
            np.testing.assert_allclose(mask_geometry.direction, geometry.direction, atol=1e-5)
        np.testing.assert_array_equal(mask, direct)
        varied += len(np.unique(mask)) > 1
        assert case["input"] == str(source) and case["mask"] == str(out / expected[kind])
        assert case["counts"] == summarise_labels(mask, CLASSES)
        assert sum(case["counts"].values()) == mask.size
    assert varied > 0, "the tiny model predicts one class everywhere: the comparison above proves little"
    # the DICOM geometry written by the helper came through the series reader into the mask
    dicom_geometry = read_image(out / "series1.nii.gz")[1]
    np.testing.assert_allclose(dicom_geometry.spacing, (0.75, 0.8, 2.5), atol=1e-5)
    np.testing.assert_allclose(dicom_geometry.origin, (-12.5, 30, 100), atol=1e-4)


def test_rgb_model_segments_colour_and_grey_png(tmp_path: Path, tiny_checkpoint) -> None:
    ckpt = tiny_checkpoint(CLASSES, RGB, tmp_path / "rgb.pt", seed=3)
    model = model_from_checkpoint(load_checkpoint(ckpt))
    rng = np.random.default_rng(5)
    colour = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(30, 40), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "lesion.png")
    Image.fromarray(grey).save(tmp_path / "grey.png")

    report = predict_files(ckpt, [tmp_path / "lesion.png", tmp_path / "grey.png"], tmp_path / "out", progress=False)

    assert report.ok
    lesion = np.asarray(Image.open(tmp_path / "out" / "lesion.png"))
    assert lesion.shape == (45, 70)
    np.testing.assert_array_equal(lesion, predict_image(model, colour, preprocessing=RGB))
    grey_mask = np.asarray(Image.open(tmp_path / "out" / "grey.png"))
    np.testing.assert_array_equal(grey_mask, predict_image(model, np.repeat(grey[..., None], 3, -1), preprocessing=RGB))


def test_bad_inputs_are_reported_and_skipped(
    grey_ckpt: Path, inputs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip, not NIfTI" * 10)
    nan_volume = _phantom((3, 32, 32), 4).astype(np.float32)
    nan_volume[1, 5, 5] = np.nan
    # NRRD: ITK's NIfTI reader turns NaN into 0, so a NaN NIfTI never reaches the check
    _write_sitk(nan_volume, bad / "nan.nrrd", (1.0, 1.0, 1.0), (0, 0, 0), tuple(np.eye(3).ravel()))
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(bad / "colour.png")
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(bad / "photo.jpg")  # its mask name is photo.png too
    sources = [bad / "broken.nii.gz", inputs["nifti"], bad / "nan.nrrd", inputs["raster"], bad / "colour.png"]
    out = tmp_path / "out"

    with caplog.at_level(logging.WARNING, logger="msa2net.engine.predict"):
        report = predict_files(grey_ckpt, [*sources, bad / "photo.jpg"], out, progress=False)

    assert not report.ok
    reasons = {path.name: reason for path, reason in report.failed}
    assert set(reasons) == {"broken.nii.gz", "nan.nrrd", "colour.png", "photo.jpg"}
    assert "broken.nii.gz" in reasons["broken.nii.gz"] and "corrupt" in reasons["broken.nii.gz"]
    assert "1 NaN" in reasons["nan.nrrd"]
    assert "colour image" in reasons["colour.png"] and "1-channel" in reasons["colour.png"]
    assert "photo.png" in reasons["photo.jpg"] and "already used" in reasons["photo.jpg"]
    assert [p.name for p in report.written] == ["case.nii.gz", "photo.png"]
    assert _listing(out) == {"case.nii.gz", "photo.png", "predictions.json", "report.html"}  # no partial files
    page = (out / "report.html").read_text()
    assert page.count('class="case-data"') == 2 and '"name":"case.nii.gz"' in page  # the segmented inputs only
    assert "corrupt" in page and "already used" in page  # the failures are listed
    failed = json.loads((out / "predictions.json").read_text())["failed"]
    assert [Path(f["input"]).name for f in failed] == ["broken.nii.gz", "nan.nrrd", "colour.png", "photo.jpg"]
    assert report.failure_lines()[0].startswith(str(bad / "broken.nii.gz") + ": ")
    assert any("nan.nrrd" in r.getMessage() and "NaN" in r.getMessage() for r in caplog.records)


def test_failure_after_the_mask_is_written_removes_it(
    grey_ckpt: Path, inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def full_disk(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(predict_module, "write_overlay_png", full_disk)
    out = tmp_path / "out"
    report = predict_files(grey_ckpt, [inputs["nifti"]], out, overlays=True, progress=False)

    assert calls, "the overlay writer was not reached, so the mask was never written"
    assert report.written == [] and "No space left" in report.failed[0][1]
    assert _listing(out) == {"predictions.json", "report.html"}
    assert 'class="case-data"' not in (out / "report.html").read_text()  # the failed input is not shown


def test_overlays_and_output_format(grey_ckpt: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    sources = [inputs["nifti"], inputs["dicom"], inputs["raster"]]
    report = predict_files(grey_ckpt, sources, out, overlays=True, output_format="nrrd", progress=True)

    assert report.ok
    names = _listing(out)
    assert {"case.nrrd", "series1.nrrd", "photo.png", "photo_overlay.png"} <= names
    mask = read_image(out / "case.nrrd")[0]
    slices = sorted(int(n[len("case_overlay_z") : -4]) for n in names if n.startswith("case_overlay_z"))
    with_fg = [z for z in range(mask.shape[0]) if mask[z].any()]
    assert 1 <= len(slices) <= predict_module.OVERLAY_SLICES
    assert set(slices) <= set(with_fg) if with_fg else slices == [mask.shape[0] // 2]
    overlay = np.asarray(Image.open(out / f"case_overlay_z{slices[0]:03d}.png"))
    assert overlay.ndim == 3 and overlay.shape[2] == 3 and overlay.dtype == np.uint8
    assert overlay.shape[1] >= 256 + 16 and overlay.shape[0] > 256 * 40 // 48  # 40x48 enlarged, with title and legend
    assert min(np.asarray(Image.open(out / "photo_overlay.png")).shape[:2]) > 250  # 50x60 enlarged
    case = json.loads((out / "predictions.json").read_text())["cases"][0]
    assert [Path(p).name for p in case["overlays"]] == [f"case_overlay_z{z:03d}.png" for z in slices]


def test_mask_never_overwrites_its_input(grey_ckpt: Path, tmp_path: Path) -> None:
    source = _write_sitk(_phantom((2, 32, 32), 6), tmp_path / "case.nii.gz", (1.0,) * 3, (0,) * 3, DIRECTION)
    before = source.read_bytes()
    report = predict_files(grey_ckpt, source, tmp_path, progress=False)  # one path, not a list
    assert "overwrite the input" in report.failed[0][1]
    assert source.read_bytes() == before


def test_checkpoint_missing_fields_is_named(tmp_path: Path, grey_ckpt: Path, inputs: dict[str, Path]) -> None:
    ckpt = torch.load(grey_ckpt, weights_only=True)
    del ckpt["preprocessing"], ckpt["class_names"]
    torch.save(ckpt, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"lacks the fields \['preprocessing', 'class_names'\]"):
        predict_files(tmp_path / "partial.pt", [inputs["raster"]], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_arguments_fail_before_any_work(grey_ckpt: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="output_format 'png'"):
        predict_files(grey_ckpt, [inputs["raster"]], tmp_path / "out", output_format="png")
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        predict_files(grey_ckpt, [tmp_path / "missing.nii.gz"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_summarise_labels() -> None:
    labels = np.array([[0, 0, 2], [2, 2, 0]], dtype=np.uint8)
    assert summarise_labels(labels, CLASSES) == {"background": 3, "a": 0, "b": 3}
    assert summarise_labels(np.zeros((0, 4), dtype=np.uint8), CLASSES) == {"background": 0, "a": 0, "b": 0}
    with pytest.raises(ValueError, match="label ids 0..3 found but only 3 classes"):
        summarise_labels(np.array([0, 3]), CLASSES)
    with pytest.raises(ValueError, match="integer label map"):
        summarise_labels(np.array([0.5]), CLASSES)


def test_a_missing_or_unusable_input_is_reported_and_the_others_segmented(
    grey_ckpt: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    missing, notes = tmp_path / "missing.nii.gz", tmp_path / "notes.txt"
    notes.write_text("not an image")
    report = predict_files(grey_ckpt, [missing, inputs["raster"], notes], tmp_path / "out", progress=False)
    assert [path for path, _ in report.failed] == [missing, notes]
    assert "does not exist" in report.failed[0][1] and "unsupported suffix" in report.failed[1][1]
    assert len(report.cases) == 1 and not report.ok
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [f["input"] for f in record["failed"]] == [str(missing), str(notes)]
