"""Axis codes and exact re-indexing: voxels keep their values and world positions; prediction slices the trained
plane whatever the input's layout."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import msa2net
from msa2net.data.io import Geometry, read_image, write_image
from msa2net.data.orientation import axis_code, check_axis_code, reorientation
from msa2net.data.preprocessing import Preprocessing
from msa2net.engine.checkpoint import make_checkpoint, save_checkpoint
from msa2net.engine.predict import predict_files

RAS = Geometry((0.9, 1.1, 1.3), (12.0, -4.0, 7.5), (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))


def _world(geometry: Geometry, index_xyz: tuple[int, int, int]) -> np.ndarray:
    direction = np.asarray(geometry.direction).reshape(3, 3)
    return np.asarray(geometry.origin) + direction @ (np.asarray(index_xyz) * np.asarray(geometry.spacing))


def test_axis_codes_of_known_layouts():
    assert axis_code(Geometry.identity(3)) == "LPS"
    assert axis_code(RAS) == "RAS"  # the MNI templates' direction diag(-1, -1, 1)
    c, s = np.cos(np.pi / 9), np.sin(np.pi / 9)  # 20 degrees oblique about z: still the nearest letters
    assert axis_code(Geometry((1, 1, 1), (0, 0, 0), (c, -s, 0, s, c, 0, 0, 0, 1))) == "LPS"
    assert check_axis_code("air") == "AIR"
    for bad in ("LR", "LRS", "XYZ", "LPSI"):
        with pytest.raises(ValueError, match="one of each pair L/R, P/A, S/I"):
            check_axis_code(bad)
    with pytest.raises(ValueError, match="3D grids"):
        axis_code(Geometry.identity(2))


def test_index_axes_sharing_a_world_axis_have_no_code():
    """SimpleITK names a code even here; axis_code refuses instead of guessing."""
    clash = Geometry((1, 1, 1), (0, 0, 0), (1, 0.9, 0, 0, 0.44, 0, 0, 0, 1))  # a sheared grid: x and y near world x
    with pytest.raises(ValueError, match="three distinct world axes"):
        axis_code(clash)


@pytest.mark.parametrize("target", ["AIR", "LPS", "SLA", "IRP"])
def test_reindexing_keeps_every_voxel_at_its_world_position(target):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1000, size=(5, 6, 7)).astype(np.int16)  # (Z, Y, X), all axes of different length
    move = reorientation("RAS", target)
    moved = move.apply(array)
    geometry = move.geometry(RAS, array.shape[::-1])
    assert axis_code(geometry) == target
    for k, j, i in itertools.product(range(moved.shape[0]), range(moved.shape[1]), range(moved.shape[2])):
        world = _world(geometry, (i, j, k))
        old = np.linalg.solve(
            np.asarray(RAS.direction).reshape(3, 3) * np.asarray(RAS.spacing), world - np.asarray(RAS.origin)
        )
        oi, oj, ok = (int(v) for v in np.round(old))
        np.testing.assert_allclose(old, (oi, oj, ok), atol=1e-9)
        assert moved[k, j, i] == array[ok, oj, oi]
    np.testing.assert_array_equal(move.inverse().apply(moved), array)
    assert reorientation(target, target).is_identity


def test_reindexed_files_agree_with_simpleitk(tmp_path):
    """Written and read back, the re-indexed grid maps each index to the physical point SimpleITK computes."""
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    move = reorientation("RAS", "AIR")
    geometry = move.geometry(RAS, array.shape[::-1])
    path = write_image(np.ascontiguousarray(move.apply(array)), geometry, tmp_path / "moved.nii.gz")
    moved = sitk.ReadImage(str(path))
    original = RAS.to_sitk(sitk.GetImageFromArray(array))
    for index in [(0, 0, 0), (5, 3, 2), (1, 2, 5)]:
        if all(i < n for i, n in zip(index, moved.GetSize())):
            point = moved.TransformIndexToPhysicalPoint(index)
            back = original.TransformPhysicalPointToIndex(point)
            assert moved[index] == original[back]


def test_predict_segments_the_trained_plane_whatever_the_layout(tmp_path):
    """One head stored axial-first (RAS) and sagittal-first (AIR): with a checkpoint trained on AIR volumes both give
    the same mask voxel for voxel (the RAS one is re-indexed before slicing and back after); without the record the
    RAS file is sliced axially and the masks differ."""
    torch.manual_seed(0)
    model = msa2net.create_model("msa2net_test", num_classes=3, in_channels=1, img_size=32)
    prep = Preprocessing(kind="zscore", in_channels=1)
    plain = make_checkpoint(model, "msa2net_test", prep.to_dict(), ["background", "a", "b"])
    save_checkpoint({**plain, "slice_orientation": "AIR"}, tmp_path / "air.pt")
    save_checkpoint(plain, tmp_path / "plain.pt")
    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[:12, :14, :10]
    head = ((zz - 6) ** 2 / 30 + (yy - 7) ** 2 / 40 + (xx - 5) ** 2 / 20 < 1) * 100 + rng.normal(0, 5, (12, 14, 10))
    ras = write_image(head.astype(np.float32), RAS, tmp_path / "in" / "head_ras.nii.gz")
    move = reorientation("RAS", "AIR")
    air = write_image(
        np.ascontiguousarray(move.apply(head.astype(np.float32))),
        move.geometry(RAS, head.shape[::-1]),
        tmp_path / "in" / "head_air.nii.gz",
    )
    report = predict_files(tmp_path / "air.pt", [ras, air], tmp_path / "out", device="cpu", progress=False)
    assert report.ok
    mask_ras, geometry_ras = read_image(tmp_path / "out" / "head_ras.nii.gz")
    mask_air, _ = read_image(tmp_path / "out" / "head_air.nii.gz")
    assert mask_ras.shape == head.shape and geometry_ras == read_image(ras)[1]
    np.testing.assert_array_equal(move.apply(mask_ras), mask_air)
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [c["axis_code"] for c in record["cases"]] == ["RAS", "AIR"]
    assert [c["segmented_as"] for c in record["cases"]] == ["AIR", "AIR"]
    as_stored = predict_files(
        tmp_path / "air.pt", [ras], tmp_path / "stored", device="cpu", progress=False, reorient=False
    )
    plain_report = predict_files(tmp_path / "plain.pt", [ras], tmp_path / "plain", device="cpu", progress=False)
    assert as_stored.ok and plain_report.ok
    stored, _ = read_image(Path(tmp_path / "stored" / "head_ras.nii.gz"))
    np.testing.assert_array_equal(stored, read_image(tmp_path / "plain" / "head_ras.nii.gz")[0])
    assert not np.array_equal(stored, mask_ras)  # the axial reading of the same head is another segmentation
