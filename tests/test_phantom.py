from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msa2net.data.io import read_image
from msa2net.data.phantom import (
    BTCV_LABEL_NAMES,
    DEFAULT_SYNAPSE_PHANTOM_CASES,
    make_isic_phantom,
    make_synapse_phantom,
)


def _case(root: Path, case: str) -> tuple[np.ndarray, np.ndarray, object, object]:
    image, image_geometry = read_image(root / "RawData" / "Training" / "img" / f"img{case}.nii.gz")
    label, label_geometry = read_image(root / "RawData" / "Training" / "label" / f"label{case}.nii.gz")
    return image, label, image_geometry, label_geometry


def test_synapse_phantom_is_deterministic_per_seed_and_case(tmp_path: Path) -> None:
    kwargs = {"slices": (5, 7), "size": 48}
    assert make_synapse_phantom(tmp_path / "a", cases=["0005", "0001"], seed=1, **kwargs) == ["0005", "0001"]
    make_synapse_phantom(tmp_path / "b", cases=["0005", "0001"], seed=1, **kwargs)
    make_synapse_phantom(tmp_path / "c", cases=["0005"], seed=2, **kwargs)
    make_synapse_phantom(tmp_path / "d", cases=[1], seed=1, **kwargs)  # a case alone equals the case in a batch
    for case in ("0005", "0001"):
        a, b = _case(tmp_path / "a", case), _case(tmp_path / "b", case)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[2] == b[2]
    np.testing.assert_array_equal(_case(tmp_path / "d", "0001")[0], _case(tmp_path / "a", "0001")[0])
    other = _case(tmp_path / "c", "0005")
    same = _case(tmp_path / "a", "0005")
    assert other[0].shape != same[0].shape or not np.array_equal(other[0], same[0])


def test_synapse_phantom_default_cases_hold_all_13_organs_with_realistic_headers(tmp_path: Path) -> None:
    written = make_synapse_phantom(tmp_path, size=96)
    assert tuple(written) == DEFAULT_SYNAPSE_PHANTOM_CASES
    assert set(BTCV_LABEL_NAMES) == set(range(1, 14))
    for case in written:
        image, label, image_geometry, label_geometry = _case(tmp_path, case)
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert image.shape == label.shape and image.shape[1:] == (96, 96)
        assert 24 <= image.shape[0] <= 40
        assert set(np.unique(label).tolist()) == set(range(14)), case
        assert image_geometry == label_geometry
        sx, sy, sz = image_geometry.spacing
        assert 0.6 <= sx <= 0.98 and sx == sy and 2.5 <= sz <= 5.0
        # Air outside the body, bone present, noise ~10 HU inside organs.
        assert image[:, 0, 0].max() == -1000 and image.max() >= 650
        liver = image[label == 6].astype(float)
        assert 50 < liver.mean() < 75 and 6 < liver.std() < 16
        assert image[label == 8].mean() > image[label == 6].mean() > image[label == 1].mean()
        # Radiological convention: patient right (liver) on image left, patient left (spleen) on image right.
        assert np.nonzero(label == 6)[2].mean() < 48 < np.nonzero(label == 1)[2].mean()
        # Kidneys are inferior to the liver dome; the esophagus is superior (z grows towards the head).
        assert np.nonzero(label == 5)[0].mean() > np.nonzero(label == 2)[0].mean()


def test_synapse_phantom_organ_slices_form_plausible_ranges(tmp_path: Path) -> None:
    make_synapse_phantom(tmp_path, cases=["0002"], slices=(30, 30), size=64)
    _, label, _, _ = _case(tmp_path, "0002")
    depth = label.shape[0]
    present = {k: np.flatnonzero((label == k).any(axis=(1, 2))) for k in range(1, 14)}
    for k, zs in present.items():
        assert np.all(np.diff(zs) == 1), f"label {k} should occupy contiguous slices"
    assert present[8].size == depth  # the aorta runs through the whole scan
    assert present[12].size < depth / 2 and present[4].size < depth / 2  # small organs in a few slices


def test_synapse_phantom_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slices"):
        make_synapse_phantom(tmp_path, slices=(5, 2))
    with pytest.raises(ValueError, match="case ids"):
        make_synapse_phantom(tmp_path, cases=["liver"])


@pytest.mark.slow
def test_synapse_phantom_default_call_is_fast_and_small(tmp_path: Path) -> None:
    make_synapse_phantom(tmp_path)
    image, label, _, _ = _case(tmp_path, "0009")
    assert image.shape[1:] == (512, 512)
    total = sum(p.stat().st_size for p in (tmp_path / "RawData").rglob("*.nii.gz"))
    assert total < 60e6


def test_isic_phantom_layout_determinism_and_lesion_contrast(tmp_path: Path) -> None:
    names = make_isic_phantom(tmp_path / "a", n=6, seed=0, size=(40, 56))
    make_isic_phantom(tmp_path / "b", n=3, seed=0, size=(40, 56))
    make_isic_phantom(tmp_path / "c", n=3, seed=1, size=(40, 56))
    assert names == [f"ISIC_{i:07d}" for i in range(6)]
    for root in ("a", "b", "c"):
        images = sorted((tmp_path / root / "ISIC2018_Task1-2_Training_Input").iterdir())
        assert all(p.suffix == ".jpg" for p in images)
    for name in names[:3]:
        image_a, _ = read_image(tmp_path / "a" / "ISIC2018_Task1-2_Training_Input" / f"{name}.jpg")
        image_b, _ = read_image(tmp_path / "b" / "ISIC2018_Task1-2_Training_Input" / f"{name}.jpg")
        image_c, _ = read_image(tmp_path / "c" / "ISIC2018_Task1-2_Training_Input" / f"{name}.jpg")
        mask, _ = read_image(tmp_path / "a" / "ISIC2018_Task1_Training_GroundTruth" / f"{name}_segmentation.png")
        assert image_a.shape == (40, 56, 3) and image_a.dtype == np.uint8
        np.testing.assert_array_equal(image_a, image_b)
        assert not np.array_equal(image_a, image_c)
        assert mask.shape == (40, 56) and set(np.unique(mask).tolist()) == {0, 255}
        lesion = mask == 255
        assert 0.02 < lesion.mean() < 0.6
        assert image_a[lesion].mean() < image_a[~lesion].mean() - 30  # darker lesion on skin
