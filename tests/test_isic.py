from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msa2net.data.isic import IMAGE_DIR, MASK_DIR, ISICDataset, isic_split_counts, prepare_isic2018


def test_split_counts_match_the_protocol() -> None:
    assert isic_split_counts(2594) == (1815, 259, 520)
    assert isic_split_counts(24) == (17, 2, 5)
    for n in range(3, 40):
        counts = isic_split_counts(n)
        assert sum(counts) == n and min(counts) >= 1
    with pytest.raises(ValueError, match="at least 3"):
        isic_split_counts(2)


def test_prepare_resizes_binarises_and_splits_in_sorted_order(data_isic_raw: Path, tmp_path: Path) -> None:
    summary = prepare_isic2018(data_isic_raw, tmp_path / "out", size=(32, 40), progress=False)
    assert summary["counts"] == {"train": 17, "val": 2, "test": 5} and summary["skipped"] is False
    names = sorted(p.stem for p in (data_isic_raw / IMAGE_DIR).iterdir())
    record = json.loads((tmp_path / "out" / "split.json").read_text())
    assert record["train"] == names[:17] and record["val"] == names[17:19] and record["test"] == names[19:]
    assert "sorting" in record["note"]
    offset = 0
    for split, count in (("train", 17), ("val", 2), ("test", 5)):
        with np.load(tmp_path / "out" / f"{split}.npz") as data:
            images, masks, stored = data["images"], data["masks"], data["names"].tolist()
        assert images.shape == (count, 32, 40, 3) and images.dtype == np.uint8
        assert masks.shape == (count, 32, 40) and masks.dtype == np.uint8
        assert set(np.unique(masks).tolist()) == {0, 1}
        assert stored == names[offset : offset + count]
        # Independent recomputation of one item: PIL bilinear resize; mask 0/255 -> float, bilinear, >= 0.5.
        name = stored[-1]
        raw_image = Image.open(data_isic_raw / IMAGE_DIR / f"{name}.jpg").convert("RGB")
        expected_image = np.asarray(raw_image.resize((40, 32), Image.Resampling.BILINEAR))
        raw_mask = np.asarray(Image.open(data_isic_raw / MASK_DIR / f"{name}_segmentation.png")) / 255.0
        soft = Image.fromarray(raw_mask.astype(np.float32)).resize((40, 32), Image.Resampling.BILINEAR)
        np.testing.assert_array_equal(images[-1], expected_image)
        np.testing.assert_array_equal(masks[-1], np.asarray(soft) >= 0.5)
        offset += count


def test_prepare_skips_when_done_and_refuses_a_different_size(data_isic_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_isic2018(data_isic_raw, out, size=(16, 16), progress=False)
    stamp = (out / "train.npz").stat().st_mtime_ns
    assert prepare_isic2018(data_isic_raw, out, size=(16, 16), progress=False)["skipped"] is True
    assert (out / "train.npz").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="overwrite=True"):
        prepare_isic2018(data_isic_raw, out, size=(24, 24), progress=False)
    redone = prepare_isic2018(data_isic_raw, out, size=(24, 24), overwrite=True, progress=False)
    assert redone["skipped"] is False
    assert ISICDataset(out, "test").images.shape[1:] == (24, 24, 3)
    assert sorted(p.name for p in out.iterdir()) == ["split.json", "test.npz", "train.npz", "val.npz"]


def test_unpaired_files_are_listed(data_isic_raw: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(data_isic_raw, raw)
    (raw / MASK_DIR / "ISIC_0000003_segmentation.png").unlink()
    (raw / IMAGE_DIR / "ISIC_0000007.jpg").unlink()
    with pytest.raises(ValueError) as info:
        prepare_isic2018(raw, tmp_path / "out", progress=False)
    message = str(info.value)
    assert "1 image(s) without a mask" in message and "ISIC_0000003" in message
    assert "1 mask(s) without an image" in message and "ISIC_0000007" in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match=IMAGE_DIR):
        prepare_isic2018(tmp_path / "out", tmp_path / "out2", progress=False)


def test_dataset_items_transform_and_random_streams(data_isic_raw: Path, tmp_path: Path) -> None:
    prepare_isic2018(data_isic_raw, tmp_path / "out", size=(16, 20), progress=False)
    plain = ISICDataset(tmp_path / "out", "val")
    item = plain[1]
    assert len(plain) == 2 and item["name"] == "ISIC_0000018"
    assert item["image"].shape == (3, 16, 20) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy() * 255.0, plain.images[1], atol=1e-4)
    assert item["label"].dtype == torch.int64 and set(item["label"].unique().tolist()) <= {0, 1}

    seen = []

    def probe(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append((image.dtype, image.shape, label.dtype))
        return torch.tensor(rng.random(2)), torch.from_numpy(label)

    augmented = ISICDataset(tmp_path / "out", "train", transform=probe, seed=4)
    first = augmented[5]["image"]
    assert seen[0] == (np.dtype(np.float32), (16, 20, 3), np.dtype(np.int64))  # the unit representation
    np.testing.assert_array_equal(first, np.random.default_rng([4, 0, 5]).random(2))
    np.testing.assert_array_equal(augmented[5]["image"], first)
    augmented.set_epoch(2)
    np.testing.assert_array_equal(augmented[5]["image"], np.random.default_rng([4, 2, 5]).random(2))
    with pytest.raises(ValueError, match="split must be one of"):
        ISICDataset(tmp_path / "out", "validation")


def test_dataset_rejects_0_255_masks(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "train.npz",
        images=np.zeros((1, 4, 4, 3), np.uint8),
        masks=np.full((1, 4, 4), 255, np.uint8),
        names=np.array(["x"]),
    )
    with pytest.raises(ValueError, match="expected 0/1"):
        ISICDataset(tmp_path, "train")
