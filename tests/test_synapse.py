from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from msa2net.data import synapse_prepare as synapse  # the preparation module, patched below
from msa2net.data.io import read_image
from msa2net.data.phantom import make_synapse_phantom
from msa2net.data.synapse import (
    BTCV_TO_SYNAPSE,
    CLASS_NAMES,
    TEST_CASES,
    TRAIN_CASES,
    SynapseSliceDataset,
    SynapseSource,
    SynapseVolumeDataset,
    available_cases,
    case_name,
)
from msa2net.data.synapse_prepare import prepare_synapse

# The label map written out independently of the package, from PROTOCOLS.md.
SPEC_MAP = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}


def _raw_arrays(raw: Path, case_digits: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Raw HU and BTCV labels read with plain SimpleITK, (Z, Y, X), plus (x, y, z) spacing."""
    img = sitk.ReadImage(str(raw / "RawData" / "Training" / "img" / f"img{case_digits}.nii.gz"))
    lab = sitk.ReadImage(str(raw / "RawData" / "Training" / "label" / f"label{case_digits}.nii.gz"))
    return sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab), img.GetSpacing()


def _expected(hu: np.ndarray, btcv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = (np.clip(hu.astype(np.float64), -125.0, 275.0) + 125.0) / 400.0
    label = np.zeros(btcv.shape, dtype=np.float64)
    for src, dst in SPEC_MAP.items():
        label[btcv == src] = dst
    return image, label


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------------------------------
# Constants and axis order
# ---------------------------------------------------------------------------------------------------------------------


def test_constants_follow_the_protocol() -> None:
    assert len(TEST_CASES) == 12 and len(TRAIN_CASES) == 18 and not set(TEST_CASES) & set(TRAIN_CASES)
    assert {"0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038"} == set(
        TEST_CASES
    )
    assert {k: v for k, v in BTCV_TO_SYNAPSE.items() if v} == SPEC_MAP
    assert all(BTCV_TO_SYNAPSE[k] == 0 for k in (0, 5, 9, 10, 12, 13))
    assert CLASS_NAMES[5] == "liver" and CLASS_NAMES[8] == "pancreas" and len(CLASS_NAMES) == 9
    assert case_name("0005") == case_name(5) == case_name("case0005") == "case0005"
    with pytest.raises(ValueError, match="case ids"):
        case_name("liver")


def test_nifti_file_order_becomes_z_y_x_like_transposed_nibabel(tmp_path: Path) -> None:
    """SimpleITK's array is nibabel's (i, j, k) array transposed by (2, 1, 0), read here from the raw file bytes."""
    size_i, size_j, size_k = 5, 4, 3
    image = sitk.Image(size_i, size_j, size_k, sitk.sitkInt16)
    image.SetSpacing((0.7, 0.8, 3.0))
    for i in range(size_i):
        for j in range(size_j):
            for k in range(size_k):
                image.SetPixel((i, j, k), 100 * i + 10 * j + k)
    path = tmp_path / "order.nii"
    sitk.WriteImage(image, str(path), useCompression=False)

    raw = path.read_bytes()
    assert struct.unpack("<i", raw[:4])[0] == 348
    dims = struct.unpack("<8h", raw[40:56])
    vox_offset = int(struct.unpack("<f", raw[108:112])[0])
    assert dims[:4] == (3, size_i, size_j, size_k)
    data = np.frombuffer(raw[vox_offset:], dtype="<i2", count=size_i * size_j * size_k)
    nib_like = data.reshape((size_i, size_j, size_k), order="F")  # what nibabel returns: [i, j, k]
    assert nib_like[2, 1, 0] == 210

    array, _ = read_image(path)
    assert array.shape == (size_k, size_j, size_i)
    np.testing.assert_array_equal(array, nib_like.transpose(2, 1, 0))
    assert array[0, 1, 2] == 210  # voxel (i=2, j=1, k=0) lands at [k, j, i]


# ---------------------------------------------------------------------------------------------------------------------
# prepare_synapse
# ---------------------------------------------------------------------------------------------------------------------


def test_prepare_writes_the_transunet_layout_with_spec_values(data_synapse_raw: Path, data_synapse_prepared: Path):
    out = data_synapse_prepared
    assert _files(out) == ["lists_Synapse", "spacing.json", "test_vol_h5", "train_npz"]
    assert _files(out / "test_vol_h5") == ["case0001.npy.h5", "case0002.npy.h5"]
    assert (out / "lists_Synapse" / "test_vol.txt").read_text().split() == ["case0001", "case0002"]
    train_list = (out / "lists_Synapse" / "train.txt").read_text().split()
    assert train_list == sorted(train_list)
    assert sorted(p.stem for p in (out / "train_npz").iterdir()) == train_list
    spacing = json.loads((out / "spacing.json").read_text())

    for digits in ("0005", "0006"):
        hu, btcv, spacing_xyz = _raw_arrays(data_synapse_raw, digits)
        image, label = _expected(hu, btcv)
        names = [n for n in train_list if n.startswith(f"case{digits}_")]
        assert names == [f"case{digits}_slice{z:03d}" for z in range(hu.shape[0])]
        for z, name in enumerate(names):
            with np.load(out / "train_npz" / f"{name}.npz") as data:
                assert data["image"].dtype == np.float32 and data["label"].dtype == np.float32
                np.testing.assert_allclose(data["image"], image[z], atol=1e-6)
                np.testing.assert_array_equal(data["label"], label[z])
        np.testing.assert_allclose(spacing[f"case{digits}"], spacing_xyz[::-1], rtol=1e-6)

    for digits in ("0001", "0002"):
        hu, btcv, spacing_xyz = _raw_arrays(data_synapse_raw, digits)
        image, label = _expected(hu, btcv)
        with h5py.File(out / "test_vol_h5" / f"case{digits}.npy.h5", "r") as handle:
            assert handle["image"].dtype == np.float32 and handle["label"].dtype == np.float32
            np.testing.assert_allclose(handle["image"][()], image, atol=1e-6)
            np.testing.assert_array_equal(handle["label"][()], label)
        np.testing.assert_allclose(spacing[f"case{digits}"], spacing_xyz[::-1], rtol=1e-6)
    assert set(np.unique(label).tolist()) <= set(range(9)) and label.max() == 8


def test_datasets_round_trip_the_prepared_files(data_synapse_raw: Path, data_synapse_prepared: Path) -> None:
    root = data_synapse_prepared
    slices = SynapseSliceDataset(root)
    assert slices.cases == ["case0005", "case0006"]
    item = slices[0]
    hu, btcv, _ = _raw_arrays(data_synapse_raw, "0005")
    image, label = _expected(hu, btcv)
    assert item["name"] == "case0005_slice000"
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    assert item["label"].shape == (64, 64) and item["label"].dtype == torch.int64
    np.testing.assert_allclose(item["image"][0].numpy(), image[0], atol=1e-6)
    np.testing.assert_array_equal(item["label"].numpy(), label[0])

    only = SynapseSliceDataset(root, cases=["0006"])
    assert len(only) == len(slices) - hu.shape[0] and all(n.startswith("case0006_") for n in only.names)

    volumes = SynapseVolumeDataset(root)
    assert [volumes[i].name for i in range(len(volumes))] == ["case0001", "case0002"]
    vol = volumes[1]
    hu, btcv, spacing_xyz = _raw_arrays(data_synapse_raw, "0002")
    image, label = _expected(hu, btcv)
    assert vol.image.dtype == np.float32 and vol.label.dtype == np.int64
    np.testing.assert_allclose(vol.image, image, atol=1e-6)
    np.testing.assert_array_equal(vol.label, label)
    np.testing.assert_allclose(vol.spacing, spacing_xyz[::-1], rtol=1e-6)
    np.testing.assert_allclose(vol.geometry.spacing, spacing_xyz, rtol=1e-6)

    source = SynapseSource(root)
    assert source.train_ids() == ["case0005", "case0006"] and source.test_ids() == ["case0001", "case0002"]
    val = list(source.cases(["0006"]))  # a training case, assembled from its slices
    hu, btcv, spacing_xyz = _raw_arrays(data_synapse_raw, "0006")
    image, label = _expected(hu, btcv)
    assert len(val) == 1 and val[0].name == "case0006"
    np.testing.assert_allclose(val[0].image, image, atol=1e-6)
    np.testing.assert_array_equal(val[0].label, label)
    np.testing.assert_allclose(val[0].spacing, spacing_xyz[::-1], rtol=1e-6)
    assert available_cases(root) == ["case0005", "case0006"]
    assert available_cases(root, "test_vol.txt") == ["case0001", "case0002"]


def test_rerun_skips_finished_cases_and_overwrite_redoes(data_synapse_raw: Path, tmp_path: Path) -> None:
    out = _copy(data_synapse_raw, tmp_path / "raw")
    first = prepare_synapse(out / "RawData", tmp_path / "out", progress=False)  # raw_dir may point at RawData
    assert first["done"] == ["case0001", "case0002", "case0005", "case0006"] and first["skipped"] == []
    assert first["train_cases"] == ["case0005", "case0006"] and first["test_cases"] == ["case0001", "case0002"]
    h5 = tmp_path / "out" / "test_vol_h5" / "case0001.npy.h5"
    stamp = h5.stat().st_mtime_ns
    second = prepare_synapse(out, tmp_path / "out", progress=False)
    assert second["done"] == [] and second["skipped"] == first["done"]
    assert second["train_slices"] == first["train_slices"]
    assert h5.stat().st_mtime_ns == stamp
    # A missing slice makes its case unfinished: only that case is redone.
    victim = next((tmp_path / "out" / "train_npz").glob("case0006_slice001.npz"))
    victim.unlink()
    third = prepare_synapse(out, tmp_path / "out", progress=False)
    assert third["done"] == ["case0006"] and victim.exists()
    fourth = prepare_synapse(out, tmp_path / "out", overwrite=True, progress=False)
    assert fourth["done"] == first["done"] and h5.stat().st_mtime_ns != stamp


def test_interrupted_case_leaves_no_partial_output_and_rerun_completes(
    data_synapse_raw: Path, data_synapse_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    calls = {"n": 0}
    original = synapse._save_slice

    def flaky_save(path: Path, image: np.ndarray, label: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # third slice of the first training case
            raise KeyboardInterrupt
        original(path, image, label)

    monkeypatch.setattr(synapse, "_save_slice", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        prepare_synapse(data_synapse_raw, out, progress=False)
    assert _files(out / "train_npz") == []  # neither slices nor hidden staging files
    assert not (out / "lists_Synapse" / "train.txt").exists()
    # Test cases processed before the interruption are complete.
    assert _files(out / "test_vol_h5") == ["case0001.npy.h5", "case0002.npy.h5"]

    monkeypatch.setattr(synapse, "_save_slice", original)
    (out / "train_npz" / ".partial-case0006").mkdir()  # a stale staging folder from a killed run
    (out / "train_npz" / ".partial-case0006" / "junk.npz").write_bytes(b"junk")
    summary = prepare_synapse(data_synapse_raw, out, progress=False)
    assert summary["skipped"] == ["case0001", "case0002"] and summary["done"] == ["case0005", "case0006"]
    assert _files(out / "train_npz") == _files(data_synapse_prepared / "train_npz")
    for name in _files(out / "train_npz"):
        with np.load(out / "train_npz" / name) as a, np.load(data_synapse_prepared / "train_npz" / name) as b:
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
    assert (out / "spacing.json").read_text() == (data_synapse_prepared / "spacing.json").read_text()


def test_geometry_or_shape_mismatch_names_the_case(data_synapse_raw: Path, tmp_path: Path) -> None:
    raw = _copy(data_synapse_raw, tmp_path / "raw")
    label_path = raw / "RawData" / "Training" / "label" / "label0005.nii.gz"
    label = sitk.ReadImage(str(label_path))
    label.SetSpacing((label.GetSpacing()[0] * 1.5, label.GetSpacing()[1], label.GetSpacing()[2]))
    sitk.WriteImage(label, str(label_path))
    with pytest.raises(ValueError, match=r"case0005: .*differ in spacing.*resample"):
        prepare_synapse(raw, tmp_path / "out", progress=False)

    shifted = sitk.ReadImage(str(label_path))
    shifted.SetSpacing(sitk.ReadImage(str(raw / "RawData/Training/img/img0005.nii.gz")).GetSpacing())
    shifted.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(label_path))
    with pytest.raises(ValueError, match=r"case0005: .*differ in origin"):
        prepare_synapse(raw, tmp_path / "out", progress=False)

    small = sitk.GetImageFromArray(np.zeros((3, 8, 8), np.uint8))
    sitk.WriteImage(small, str(label_path))
    with pytest.raises(ValueError, match=r"case0005: .*shape"):
        prepare_synapse(raw, tmp_path / "out", progress=False)
    assert not any((tmp_path / "out" / "train_npz").glob("case0005_*"))


def test_missing_label_and_corrupt_image_name_the_case(data_synapse_raw: Path, tmp_path: Path) -> None:
    raw = _copy(data_synapse_raw, tmp_path / "raw")
    (raw / "RawData" / "Training" / "label" / "label0006.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"no label for 1 image\(s\): case0006 .*label0006\.nii\.gz"):
        prepare_synapse(raw, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # checked before anything is written

    raw = _copy(data_synapse_raw, tmp_path / "raw2")
    (raw / "RawData" / "Training" / "img" / "img0002.nii.gz").write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match=r"case0002: .*img0002\.nii\.gz"):
        prepare_synapse(raw, tmp_path / "out2", progress=False)
    with pytest.raises(FileNotFoundError, match="RawData"):
        prepare_synapse(tmp_path, tmp_path / "out3", progress=False)


def test_unofficial_case_goes_to_training_with_a_warning(tmp_path: Path) -> None:
    make_synapse_phantom(tmp_path / "raw", cases=["0041"], slices=(3, 3), size=32)
    with pytest.warns(UserWarning, match="case0041 not in the official Synapse split"):
        summary = prepare_synapse(tmp_path / "raw", tmp_path / "out", progress=False)
    assert summary["train_cases"] == ["case0041"] and summary["train_slices"] == 3


# ---------------------------------------------------------------------------------------------------------------------
# Dataset checks on foreign releases
# ---------------------------------------------------------------------------------------------------------------------


def _fake_release(root: Path, image: np.ndarray, label: np.ndarray, name: str = "case0005_slice000") -> Path:
    (root / "train_npz").mkdir(parents=True)
    (root / "lists_Synapse").mkdir()
    np.savez(root / "train_npz" / f"{name}.npz", image=image.astype(np.float32), label=label.astype(np.float32))
    (root / "lists_Synapse" / "train.txt").write_text(name + "\n")
    return root


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float32])
def test_btcv_ids_map_as_the_spec_says_in_any_stored_type(dtype: type) -> None:
    from msa2net.data.synapse import btcv_to_synapse

    btcv = np.arange(14, dtype=dtype).reshape(2, 7)
    mapped = btcv_to_synapse(btcv)
    assert mapped.dtype == np.uint8 and mapped.shape == btcv.shape
    assert mapped.ravel().tolist() == [SPEC_MAP.get(i, 0) for i in range(14)]


def test_prepare_names_the_label_file_that_is_not_a_btcv_map(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_synapse_phantom(raw, cases=["0005"], seed=0, slices=(2, 2), size=16)
    path = raw / "RawData" / "Training" / "label" / "label0005.nii.gz"
    label = sitk.ReadImage(str(path))
    values = sitk.GetArrayFromImage(label).astype(np.float32)
    values[0, 0, :2] = [14.0, 2.5]
    bad = sitk.GetImageFromArray(values)
    bad.CopyInformation(label)
    sitk.WriteImage(bad, str(path))
    with pytest.raises(ValueError) as info:
        prepare_synapse(raw, tmp_path / "out", progress=False)
    assert str(info.value) == (
        "case0005: label0005.nii.gz: BTCV labels are whole numbers 0..13; found 2.5, 14; this is not a BTCV "
        "13-organ label map (ids 0..13)"
    )


def test_fourteen_class_release_is_detected_and_btcv14_maps_it(tmp_path: Path) -> None:
    btcv = np.array([[0, 1, 5, 6], [11, 13, 12, 9], [2, 3, 4, 7], [8, 10, 0, 0]])
    root = _fake_release(tmp_path / "r", np.full((4, 4), 0.5), btcv)
    with pytest.raises(ValueError) as info:
        SynapseSliceDataset(root)[0]
    message = str(info.value)
    assert "{9, 10, 11, 12, 13}" in message and "case0005_slice000" in message
    assert "14-class BTCV release" in message and "labels='btcv14'" in message
    mapped = SynapseSliceDataset(root, labels="btcv14")[0]["label"].numpy()
    expected = np.vectorize(lambda v: SPEC_MAP.get(int(v), 0))(btcv)
    np.testing.assert_array_equal(mapped, expected)
    with pytest.raises(ValueError, match="labels must be one of"):
        SynapseSliceDataset(root, labels="btcv13")


def test_out_of_range_intensities_are_detected_and_clip_option(tmp_path: Path) -> None:
    image = np.linspace(-0.2, 1.3, 16).reshape(4, 4)
    root = _fake_release(tmp_path / "r", image, np.zeros((4, 4)))
    with pytest.raises(ValueError) as info:
        SynapseSliceDataset(root)[0]
    message = str(info.value)
    assert "case0005_slice000.npz" in message and "[-0.2, 1.3]" in message and "intensity='clip'" in message
    clipped = SynapseSliceDataset(root, intensity="clip")[0]["image"][0].numpy()
    np.testing.assert_allclose(clipped, np.clip(image, 0, 1), atol=1e-7)
    # Excursions within the tolerance pass and are clipped.
    slight = _fake_release(tmp_path / "s", np.array([[-5e-4, 1.0005]]), np.zeros((1, 2)))
    np.testing.assert_array_equal(SynapseSliceDataset(slight)[0]["image"][0].numpy(), [[0.0, 1.0]])
    nan = _fake_release(tmp_path / "n", np.array([[np.nan, 0.5]]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="NaN"):
        SynapseSliceDataset(nan)[0]


def test_public_download_without_spacing_and_label_checks_on_volumes(tmp_path: Path) -> None:
    root = tmp_path / "download"
    (root / "test_vol_h5").mkdir(parents=True)
    (root / "lists_Synapse").mkdir()
    (root / "lists_Synapse" / "test_vol.txt").write_text("case0001\n")
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as handle:
        handle["image"] = np.full((2, 4, 4), 0.25, np.float32)
        handle["label"] = np.full((2, 4, 4), 11.0, np.float32)
    with pytest.raises(ValueError, match=r"\{11\} found in case0001"):
        SynapseVolumeDataset(root)[0]
    item = SynapseVolumeDataset(root, labels="btcv14")[0]
    assert item.spacing is None and item.geometry is None and item.name == "case0001"
    assert item.label.dtype == np.int64 and np.all(item.label == 8)
    with pytest.raises(FileNotFoundError, match="msa2net prepare synapse"):
        SynapseSliceDataset(root)
    with pytest.raises(ValueError, match="not in"):
        SynapseVolumeDataset(root, cases=["0002"])


# ---------------------------------------------------------------------------------------------------------------------
# Random streams and splits
# ---------------------------------------------------------------------------------------------------------------------


def _rng_probe(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A 'transform' that exposes the random stream it was given."""
    return torch.tensor(rng.random(3)), torch.from_numpy(label)


def test_random_streams_reproducible_per_epoch_and_index(data_synapse_prepared: Path) -> None:
    a = SynapseSliceDataset(data_synapse_prepared, transform=_rng_probe, seed=7)
    b = SynapseSliceDataset(data_synapse_prepared, transform=_rng_probe, seed=7)
    np.testing.assert_array_equal(a[3]["image"], b[3]["image"])
    np.testing.assert_array_equal(a[3]["image"], np.random.default_rng([7, 0, 3]).random(3))
    assert not np.array_equal(a[3]["image"], a[4]["image"])
    a.set_epoch(1)
    assert a.epoch == 1
    assert not np.array_equal(a[3]["image"], b[3]["image"])
    np.testing.assert_array_equal(a[3]["image"], np.random.default_rng([7, 1, 3]).random(3))
    other_seed = SynapseSliceDataset(data_synapse_prepared, transform=_rng_probe, seed=8)
    assert not np.array_equal(other_seed[3]["image"], b[3]["image"])


def test_held_out_split_takes_whole_cases_deterministically(data_synapse_prepared: Path) -> None:
    source = SynapseSource(data_synapse_prepared)
    split = source.split("held_out", val_fraction=0.5, seed=0)
    assert len(split.val) == 1 and sorted(split.train + split.val) == ["case0005", "case0006"]
    assert source.split("held_out", val_fraction=0.5, seed=0) == split
    assert source.split("held_out", val_cases=["0006"]).val == ["case0006"]  # ids in any spelling
    assert source.split("held_out", val_cases=["0006"]).train == ["case0005"]
    assert source.split("none").val == [] and source.split("none").train == ["case0005", "case0006"]
    test = source.split("test")
    assert test.val == ["case0001", "case0002"] and "TEST" in test.notes[0]
    with pytest.raises(ValueError, match=r"data.val_cases \['case0001'\] are not cases"):
        source.split("held_out", val_cases=["0001"])  # a test case cannot validate as held out


def test_training_cases_assemble_only_when_complete(data_synapse_prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="case0001"):
        SynapseVolumeDataset.from_train_slices(data_synapse_prepared, ["case0001"])
    root = _copy(data_synapse_prepared, tmp_path / "copy")
    (root / "train_npz" / "case0005_slice002.npz").unlink()
    with pytest.raises(ValueError, match=r"case0005: slices \[2\] missing"):
        next(SynapseSource(root).cases(["0005"]))
