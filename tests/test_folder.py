"""Tests for msa2net.data.folder: nnU-Net-like folders of 3D NIfTI and 2D PNG data, and their validation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from msa2net.data.folder import (
    FolderSliceDataset,
    FolderValidationError,
    FolderVolumeDataset,
    load_dataset_json,
    validate_folder,
)
from msa2net.data.preprocessing import CT_PREPROCESSING, Preprocessing
from msa2net.data.source import split_cases
from msa2net.data.transforms import build_transform

SPACING = (0.8, 0.7, 2.5)  # SimpleITK order (x, y, z)
ORIGIN = (-10.0, 5.0, 30.0)


def _write_json(root: Path, **overrides) -> None:
    data = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1, "spleen": 2},
        "file_ending": ".nii.gz",
    }
    data.update(overrides)
    data = {k: v for k, v in data.items() if v is not None}
    (root / "dataset.json").write_text(json.dumps(data))


def _write_nifti(path: Path, array: np.ndarray, spacing=SPACING, origin=ORIGIN) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def _ct_case(seed: int, depth: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-300, 400, size=(depth, 8, 10)).astype(np.int16)  # (Z, Y, X)
    label = np.zeros((depth, 8, 10), np.uint8)
    label[:, 2:5, 3:7] = 1
    label[1, 5:7, 1:3] = 2
    return hu, label


def _make_3d(root: Path, cases=("case_a", "case_b"), depths=(3, 2)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    _write_json(root, numTraining=len(cases))
    data = {}
    for i, (case, depth) in enumerate(zip(cases, depths)):
        hu, label = _ct_case(i, depth)
        _write_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", hu)
        _write_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
        data[case] = (hu, label)
    return data


def _make_2d(root: Path, rgb: str | None = None, n_cases: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Grey PNG dataset, or RGB stored as one file (rgb="file") or three grey files (rgb="channels")."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    channels = {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "gray"}
    _write_json(root, channel_names=channels, labels={"background": 0, "lesion": 1}, file_ending=".png")
    data = {}
    for i in range(n_cases):
        rng = np.random.default_rng(100 + i)
        image = rng.integers(0, 256, size=(12, 16, 3) if rgb else (12, 16), dtype=np.uint8)
        label = np.zeros((12, 16), np.uint8)
        label[3 + i : 8, 4:12] = 1
        case = f"img{i:02d}"
        if rgb == "channels":
            for c in range(3):
                Image.fromarray(image[..., c]).save(root / "imagesTr" / f"{case}_{c:04d}.png")
        else:
            Image.fromarray(image).save(root / "imagesTr" / f"{case}_0000.png")
        Image.fromarray(label).save(root / "labelsTr" / f"{case}.png")
        data[case] = (image, label)
    return data


def _problems(root: Path) -> list[str]:
    with pytest.raises(FolderValidationError) as info:
        validate_folder(root)
    assert isinstance(info.value, ValueError)
    for problem in info.value.problems:
        assert problem in str(info.value)
    return info.value.problems


# ---------------------------------------------------------------------------------------------- dataset.json


def test_load_dataset_json_and_default_preprocessing(tmp_path):
    _write_json(tmp_path, labels={"background": 0, "spleen": 2, "liver": 1})
    spec = load_dataset_json(tmp_path)
    assert spec.channel_names == ["CT"] and spec.file_ending == ".nii.gz" and spec.dims == 3
    assert spec.num_classes == 3 and spec.class_names == ["background", "liver", "spleen"]
    assert spec.preprocessing() == CT_PREPROCESSING
    _write_json(tmp_path, channel_names={"0": "R", "1": "G", "2": "B"}, file_ending=".png")
    assert load_dataset_json(tmp_path).preprocessing().kind == "rgb"
    _write_json(tmp_path, channel_names={"0": "T1", "1": "T2"})
    prep = load_dataset_json(tmp_path).preprocessing()
    assert prep.kind == "zscore" and prep.in_channels == 2


@pytest.mark.parametrize(
    ("overrides", "messages"),
    [
        ({"labels": None, "file_ending": None}, ["lacks required keys ['labels', 'file_ending']"]),
        (
            {"labels": {"background": 0, "liver": 2}},
            ["with 0 the background; got [0, 2]"],
        ),
        ({"labels": {"background": 0, "kidney": [1, 2]}}, ["label 'kidney' has id [1, 2]"]),
        ({"channel_names": {"1": "CT"}, "file_ending": ".gif"}, ["indices must be 0..0", "file_ending '.gif'"]),
    ],
)
def test_bad_dataset_json_lists_every_problem(tmp_path, overrides, messages):
    _write_json(tmp_path, **overrides)
    with pytest.raises(FolderValidationError) as info:
        load_dataset_json(tmp_path)
    for message in messages:
        assert message in str(info.value)
    assert len(info.value.problems) == len(messages)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"channel_names": {"0": "CT", "a": "PET"}}, "channel_names key 'a' is not a channel index"),
        ({"channel_names": "CT"}, 'channel_names must be an object like {"0": "CT"}, got str'),
        ({"channel_names": {}}, "channel_names is empty; give at least one channel"),
        ({"channel_names": {"0": 7}}, "channel_names values must be strings, got [7]"),
        ({"labels": ["background", "liver"]}, "labels must be a non-empty object name -> id"),
        ({"labels": {}}, "labels must be a non-empty object name -> id"),
        ({"labels": {"background": 0, "liver": True}}, "label 'liver' has id True; ids must be integers"),
        ({"file_ending": 5}, "file_ending 5 is not supported; use one of .nii.gz"),
        ({"numTraining": "2"}, "numTraining must be an integer, got '2'"),
    ],
)
def test_each_malformed_dataset_json_field_gets_its_own_message(tmp_path, overrides, message):
    _write_json(tmp_path, **overrides)
    with pytest.raises(FolderValidationError) as info:
        load_dataset_json(tmp_path)
    (problem,) = info.value.problems
    assert problem.startswith("dataset.json: ") and message in problem
    assert str(tmp_path) in str(info.value)


def test_dataset_json_channel_names_may_be_a_list_and_must_be_an_object_at_the_top(tmp_path):
    _write_json(tmp_path, channel_names=["T1", "T2"])
    assert load_dataset_json(tmp_path).channel_names == ["T1", "T2"]
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(FolderValidationError, match="dataset.json must hold an object like"):
        load_dataset_json(tmp_path)


def test_missing_or_invalid_dataset_json(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    problems = _problems(tmp_path)
    assert any("dataset.json is missing" in p for p in problems)
    assert any("labelsTr/ is missing" in p for p in problems)
    (tmp_path / "dataset.json").write_text('{"labels": {"background": 0,}')
    with pytest.raises(FolderValidationError, match="not valid JSON"):
        load_dataset_json(tmp_path)


# ---------------------------------------------------------------------------------------------- 3D round trips


def test_validate_3d_folder(tmp_path):
    _make_3d(tmp_path)
    report = validate_folder(tmp_path)
    assert report.dims == 3 and report.cases == ["case_a", "case_b"]
    assert report.shapes == {"case_a": (3, 8, 10), "case_b": (2, 8, 10)}
    assert report.num_slices == 5 and report.test_cases == []


def test_slice_dataset_3d_round_trip(tmp_path):
    data = _make_3d(tmp_path)
    dataset = FolderSliceDataset(tmp_path)
    assert len(dataset) == 5 and dataset.num_classes == 3 and dataset.in_channels == 1
    item = dataset[1]  # case_a, slice 1
    assert item["name"] == "case_a:1"
    assert item["image"].shape == (1, 8, 10) and item["image"].dtype == torch.float32
    assert item["label"].shape == (8, 10) and item["label"].dtype == torch.int64
    hu, label = data["case_a"]
    np.testing.assert_allclose(item["image"][0].numpy(), CT_PREPROCESSING(hu[1]), atol=1e-6)
    np.testing.assert_array_equal(item["label"].numpy(), label[1])
    assert dataset[4]["name"] == "case_b:1"
    lazy = FolderSliceDataset(tmp_path, preload=False)
    for i in (0, 3):
        np.testing.assert_array_equal(lazy[i]["image"].numpy(), dataset[i]["image"].numpy())


def test_slice_dataset_rng_follows_seed_epoch_index(tmp_path):
    _make_3d(tmp_path)

    def draw(image, label, rng):
        return torch.from_numpy(np.asarray(image)), torch.tensor(int(rng.integers(1 << 30)))

    dataset = FolderSliceDataset(tmp_path, transform=draw, seed=7)
    first = dataset[2]["label"].item()
    assert first == int(np.random.default_rng([7, 0, 2]).integers(1 << 30))
    assert dataset[2]["label"].item() == first
    dataset.set_epoch(1)
    assert dataset[2]["label"].item() != first


def test_slice_dataset_with_augmentation_keeps_label_set(tmp_path):
    _make_3d(tmp_path)
    prep = CT_PREPROCESSING
    transform = build_transform("msa2net", size=(16, 16), preprocessing=prep)
    dataset = FolderSliceDataset(tmp_path, cases=["case_a"], transform=transform)
    assert len(dataset) == 3
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            item = dataset[i]
            assert item["image"].shape == (1, 16, 16) and torch.isfinite(item["image"]).all()
            assert set(item["label"].unique().tolist()) <= {0, 1, 2}


def test_volume_dataset_keeps_geometry(tmp_path):
    data = _make_3d(tmp_path)
    dataset = FolderVolumeDataset(tmp_path, cases=["case_b"])
    assert len(dataset) == 1
    item = dataset[0]
    hu, label = data["case_b"]
    assert item.name == "case_b"
    assert item.image.shape == (2, 8, 10) and item.image.dtype == np.float32
    np.testing.assert_allclose(item.image, CT_PREPROCESSING.to_unit(hu))
    np.testing.assert_array_equal(item.label, label)
    assert item.label.dtype == np.int64
    np.testing.assert_allclose(item.geometry.spacing, SPACING)
    np.testing.assert_allclose(item.geometry.origin, ORIGIN)
    np.testing.assert_allclose(item.spacing, SPACING[::-1])


def test_unknown_cases_and_channel_mismatch_are_rejected(tmp_path):
    _make_3d(tmp_path)
    with pytest.raises(ValueError, match=r"\['case_z'\] are not labelled cases.*case_a, case_b"):
        FolderSliceDataset(tmp_path, cases=["case_z"])
    with pytest.raises(ValueError, match="in_channels=3 but .*declares 1 channel"):
        FolderVolumeDataset(tmp_path, preprocessing=Preprocessing(kind="rgb", in_channels=3))


# ---------------------------------------------------------------------------------------------- 2D round trips


def test_grey_png_dataset(tmp_path):
    data = _make_2d(tmp_path)
    report = validate_folder(tmp_path)
    assert report.dims == 2 and report.num_slices == 3 and report.shapes["img01"] == (12, 16)
    dataset = FolderSliceDataset(tmp_path)
    assert len(dataset) == 3
    item = dataset[1]
    assert item["name"] == "img01:0" and item["image"].shape == (1, 12, 16)
    np.testing.assert_array_equal(item["label"].numpy(), data["img01"][1])
    volume = FolderVolumeDataset(tmp_path)[0]  # a one-slice volume
    assert volume.image.shape == (1, 12, 16) and volume.label.shape == (1, 12, 16) and volume.spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("layout", ["file", "channels"])
def test_rgb_png_dataset(tmp_path, layout):
    data = _make_2d(tmp_path, rgb=layout)
    dataset = FolderSliceDataset(tmp_path)
    assert dataset.preprocessing.kind == "rgb" and dataset.in_channels == 3
    item = dataset[0]
    assert item["image"].shape == (3, 12, 16)
    image = data["img00"][0]
    np.testing.assert_allclose(item["image"].numpy(), (image.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5, atol=1e-6)
    unit = FolderVolumeDataset(tmp_path)[0].image
    assert unit.shape == (1, 12, 16, 3) and 0.0 <= unit.min() and unit.max() <= 1.0


def test_test_images_are_listed(tmp_path):
    _make_2d(tmp_path)
    (tmp_path / "imagesTs").mkdir()
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "imagesTs" / "new_0000.png")
    assert validate_folder(tmp_path).test_cases == ["new"]


# ---------------------------------------------------------------------------------------------- validation errors


def test_unpaired_files_are_all_listed(tmp_path):
    _make_3d(tmp_path, cases=("case_a", "case_b", "case_c"), depths=(2, 2, 2))
    (tmp_path / "labelsTr" / "case_a.nii.gz").unlink()
    (tmp_path / "imagesTr" / "case_b_0000.nii.gz").unlink()
    (tmp_path / "imagesTr" / "notes.txt").write_text("x")
    problems = _problems(tmp_path)
    text = "\n".join(problems)
    assert "images without labels" in text and "case_a" in text
    assert "labels without images" in text and "case_b" in text
    assert "imagesTr/notes.txt: does not end with file_ending '.nii.gz'" in text
    assert "numTraining is 3 but 1 labelled case(s)" in text


def test_label_values_not_in_dataset_json(tmp_path):
    _make_3d(tmp_path)
    label = np.zeros((3, 8, 10), np.uint8)
    label[0, 0, 0] = 5
    label[1, 0, 0] = 9
    _write_nifti(tmp_path / "labelsTr" / "case_a.nii.gz", label)
    (problem,) = _problems(tmp_path)
    assert "case case_a" in problem and "labelsTr/case_a.nii.gz holds values [5, 9]" in problem


def test_geometry_and_shape_mismatch_name_the_case(tmp_path):
    _make_3d(tmp_path)
    _, label_a = _ct_case(0, 3)
    label_a[0, 0, 0] = 9
    _write_nifti(tmp_path / "labelsTr" / "case_a.nii.gz", label_a, spacing=(0.8, 0.7, 5.0))
    _write_nifti(tmp_path / "labelsTr" / "case_b.nii.gz", np.zeros((2, 8, 9), np.uint8))
    problems = _problems(tmp_path)
    assert len(problems) == 3  # both problems of case_a are reported, not just the first
    assert "case case_a" in problems[0] and "geometry differ" in problems[0] and "spacing" in problems[0]
    assert "case case_a" in problems[1] and "values [9]" in problems[1]
    assert "case case_b" in problems[2] and "shape (2, 8, 9) but the image has (2, 8, 10)" in problems[2]


def test_small_geometry_differences_are_tolerated(tmp_path):
    _make_3d(tmp_path)
    _, label_a = _ct_case(0, 3)
    _write_nifti(tmp_path / "labelsTr" / "case_a.nii.gz", label_a, spacing=(0.8, 0.7, 2.5001))
    assert validate_folder(tmp_path).cases == ["case_a", "case_b"]


def test_missing_channel_file(tmp_path):
    _make_2d(tmp_path, rgb="channels")
    (tmp_path / "imagesTr" / "img01_0002.png").unlink()
    (problem,) = _problems(tmp_path)
    assert "case img01: missing channel file(s) imagesTr/img01_0002.png" in problem


def test_grey_file_for_rgb_dataset_and_colour_label(tmp_path):
    _make_2d(tmp_path, rgb="file")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "imagesTr" / "img00_0000.png")
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "labelsTr" / "img01.png")
    problems = _problems(tmp_path)
    assert "imagesTr/img00_0000.png has shape (12, 16) but an RGB image (H, W, 3) was expected" in problems[0]
    assert "case img01: label labelsTr/img01.png has shape (12, 16, 3)" in problems[1]
    assert "single-channel PNG" in problems[1]


def test_bad_names_corrupt_file_and_extra_channel(tmp_path):
    _make_3d(tmp_path)
    (tmp_path / "imagesTr" / "case_c.nii.gz").write_bytes(b"not an image")
    (tmp_path / "imagesTr" / "case_a_0001.nii.gz").write_bytes(b"x")
    (tmp_path / "imagesTr" / "case_b_0000.nii.gz").write_bytes(b"corrupt")
    problems = _problems(tmp_path)
    text = "\n".join(problems)
    assert "imagesTr/case_c.nii.gz: image names must be <case>_XXXX.nii.gz" in text
    assert "imagesTr/case_a_0001.nii.gz: channel 1 but dataset.json declares 1 channel(s)" in text
    assert "case case_b: cannot read" in text and "case_b_0000.nii.gz" in text


def test_broken_symlink_is_a_problem_not_a_silently_skipped_case(tmp_path):
    # the user's case: a link whose target moved; training used to run on the other cases without a word
    _make_3d(tmp_path)
    _write_json(tmp_path)  # no numTraining, which would otherwise hint at the missing case
    link = tmp_path / "imagesTr" / "case_c_0000.nii.gz"
    link.symlink_to(tmp_path / "moved" / "case_c_0000.nii.gz")
    problems = _problems(tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("imagesTr/case_c_0000.nii.gz: is a broken symbolic link")
    assert str(tmp_path / "moved" / "case_c_0000.nii.gz") in problems[0] and "fix the link" in problems[0]
    with pytest.raises(FolderValidationError, match="broken symbolic link"):
        FolderSliceDataset(tmp_path)


def test_looping_links_folders_and_pipes_are_problems_in_every_scanned_folder(tmp_path):
    _make_3d(tmp_path)
    (tmp_path / "labelsTr" / "loop.nii.gz").symlink_to("loop.nii.gz")  # points at itself
    (tmp_path / "imagesTs").mkdir()
    (tmp_path / "imagesTs" / "gone_0000.nii.gz").symlink_to("nowhere.nii.gz")
    (tmp_path / "imagesTr" / "old").mkdir()
    os.mkfifo(tmp_path / "imagesTr" / "pipe_0000.nii.gz")  # reading it would block forever
    (tmp_path / "imagesTr" / ".hidden_0000.nii.gz").symlink_to("nowhere.nii.gz")  # hidden entries stay ignored
    problems = _problems(tmp_path)
    text = "\n".join(problems)
    assert "labelsTr/loop.nii.gz: is a symbolic link that loops" in text
    assert "imagesTs/gone_0000.nii.gz: is a broken symbolic link" in text
    assert "imagesTr/old: is a folder" in text
    assert "imagesTr/pipe_0000.nii.gz: is not a regular file" in text
    assert ".hidden" not in text
    assert len(problems) == 4


def test_symlinks_to_real_files_are_fine(tmp_path):
    data = _make_3d(tmp_path / "store")
    root = tmp_path / "linked"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for path in (tmp_path / "store" / sub).iterdir():
            (root / sub / path.name).symlink_to(path)
    (root / "dataset.json").symlink_to(tmp_path / "store" / "dataset.json")
    report = validate_folder(root)
    assert report.cases == sorted(data)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read files without read permission")
def test_unreadable_file_is_a_problem(tmp_path):
    _make_3d(tmp_path)
    path = tmp_path / "labelsTr" / "case_b.nii.gz"
    path.chmod(0)
    try:
        assert any(p.startswith("labelsTr/case_b.nii.gz: cannot be read") for p in _problems(tmp_path))
    finally:
        path.chmod(0o644)


def test_empty_folder(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    _write_json(tmp_path)
    (problem,) = _problems(tmp_path)
    assert "no cases found" in problem and "imagesTr/<case>_0000.nii.gz" in problem


def test_not_a_folder(tmp_path):
    with pytest.raises(FolderValidationError, match="is not a folder"):
        validate_folder(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- splitting


def test_split_cases_is_reproducible_and_disjoint():
    cases = [f"c{i:02d}" for i in range(10)]
    train, val = split_cases(cases[::-1], val_fraction=0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert sorted(train + val) == cases and train == sorted(train)
    assert split_cases(cases, 0.2, seed=3) == (train, val)
    assert any(split_cases(cases, 0.2, seed=s)[1] != val for s in range(4, 10))
    assert split_cases(["a", "b"], 0.01)[1] != []  # at least one validation case
    assert split_cases(cases, 0.0) == (cases, [])


def test_split_cases_errors():
    with pytest.raises(ValueError, match="val_fraction must be in"):
        split_cases(["a", "b"], 1.0)
    with pytest.raises(ValueError, match="cannot hold out a validation case from 1 training case"):
        split_cases(["a"], 0.2)
    with pytest.raises(ValueError, match=r"duplicate case ids \['a'\]"):
        split_cases(["a", "a", "b"], 0.2)


# ---------------------------------------------------------------------------------------------- labelled test cases


def _add_test_cases(root: Path, cases=("case_t",), labelled=("case_t",)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """imagesTs/ (and labelsTs/ for ``labelled``) in the layout of :func:`_make_3d`."""
    (root / "imagesTs").mkdir()
    (root / "labelsTs").mkdir(exist_ok=True)
    data = {}
    for i, case in enumerate(cases):
        hu, label = _ct_case(50 + i, 4)
        _write_nifti(root / "imagesTs" / f"{case}_0000.nii.gz", hu)
        if case in labelled:
            _write_nifti(root / "labelsTs" / f"{case}.nii.gz", label)
        data[case] = (hu, label)
    return data


def test_labelled_test_cases_are_checked_listed_and_evaluated_first(tmp_path):
    from msa2net.data.registry import open_source

    _make_3d(tmp_path)
    test = _add_test_cases(tmp_path)
    report = validate_folder(tmp_path)
    assert report.cases == ["case_a", "case_b"] and report.labelled_test_cases == ["case_t"]
    assert report.test_cases == ["case_t"] and report.shapes["case_t"] == (4, 8, 10)
    assert report.num_slices == 5  # training slices only
    source = open_source(tmp_path)
    assert source.train_ids() == ["case_a", "case_b"] and source.test_ids() == ["case_t"]
    assert source.evaluation_ids() == ["case_t"]  # preferred over the training cases
    split = source.split("test")
    assert split.train == ["case_a", "case_b"] and split.val == ["case_t"]
    assert any("not a clean test" in note for note in split.notes)
    (case,) = source.cases(["case_t"])
    hu, label = test["case_t"]
    np.testing.assert_array_equal(case.label, label)
    np.testing.assert_allclose(case.image, CT_PREPROCESSING.to_unit(hu))
    np.testing.assert_allclose(case.geometry.origin, ORIGIN)
    with pytest.raises(ValueError, match=r"\['case_t'\] are not labelled cases .* for training"):
        source.training_dataset(["case_a", "case_t"], build_transform("none", None, CT_PREPROCESSING), seed=0)


def test_without_labels_ts_test_images_stay_unlabelled(tmp_path):
    from msa2net.data.registry import open_source

    _make_3d(tmp_path)
    _add_test_cases(tmp_path)
    (tmp_path / "labelsTs" / "case_t.nii.gz").unlink()
    (tmp_path / "labelsTs").rmdir()
    source = open_source(tmp_path)
    assert validate_folder(tmp_path).test_cases == ["case_t"] and source.test_ids() == []
    assert source.evaluation_ids() == []  # evaluate refuses to present training cases as a test set
    with pytest.raises(ValueError, match="has no labelled test cases"):
        source.split("test")


def test_labelled_test_case_problems_are_all_listed(tmp_path):
    _make_3d(tmp_path)
    _add_test_cases(tmp_path, cases=("case_t", "case_u", "case_a"), labelled=("case_t", "case_a"))
    bad = np.zeros((4, 8, 10), np.uint8)
    bad[0, 0, 0] = 7
    _write_nifti(tmp_path / "labelsTs" / "case_t.nii.gz", bad)
    _write_nifti(tmp_path / "labelsTs" / "case_v.nii.gz", bad)
    text = "\n".join(_problems(tmp_path))
    assert "test images without labels (no labelsTs/<case>.nii.gz) for case(s): case_u" in text
    assert "test labels without images (no imagesTs/<case>_0000.nii.gz) for case(s): case_v" in text
    assert "case id(s) case_a are both training cases (imagesTr/) and labelled test cases (imagesTs/)" in text
    assert "case case_t: label labelsTs/case_t.nii.gz holds values [7]" in text


def test_folder_source_validates_once(tmp_path, monkeypatch):
    """Training and validation reuse the source's report: each case is read once to validate the folder, once to
    preload a training case, and once per validation round."""
    import msa2net.data.folder_check as folder_module  # where the folder check reads cases
    from msa2net.data.registry import open_source

    _make_3d(tmp_path, cases=("case_a", "case_b", "case_c"), depths=(2, 2, 2))
    _add_test_cases(tmp_path)
    reads: list[str] = []
    original = folder_module._read_case
    monkeypatch.setattr(
        folder_module, "_read_case", lambda case, *a, **k: reads.append(case) or original(case, *a, **k)
    )
    source = open_source(tmp_path)
    split = source.split("held_out", val_cases=["case_c"])
    assert sorted(reads) == ["case_a", "case_b", "case_c", "case_t"]
    reads.clear()
    source.training_dataset(split.train, build_transform("none", None, source.preprocessing), seed=0)
    assert sorted(reads) == ["case_a", "case_b"]
    reads.clear()
    for _ in range(2):
        assert [case.name for case in source.cases(split.val)] == ["case_c"]
    assert reads == ["case_c", "case_c"]
    assert source.slice_orientation() == "LPS"  # _write_nifti leaves the identity direction
