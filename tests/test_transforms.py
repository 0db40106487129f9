"""Tests for msa2net.data.transforms: resizing, each augmentation operation, recipes and the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from msa2net.data.preprocessing import ISIC_PREPROCESSING, SYNAPSE_PREPROCESSING, Preprocessing
from msa2net.data.transforms import (
    FlipAugment,
    MSA2NetAugment,
    SegmentationTransform,
    TransUNetAugment,
    build_transform,
    resize_image,
    resize_label,
    rotation_matrix,
    warp_affine,
)


def _square_pair(size: int = 32, lo: int = 10, hi: int = 18, value: int = 2) -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((size, size), np.float32)
    image[lo:hi, lo:hi] = 1.0
    label = np.zeros((size, size), np.uint8)
    label[lo:hi, lo:hi] = value
    return image, label


def _random_pair(rng: np.random.Generator, shape=(40, 48)) -> tuple[np.ndarray, np.ndarray]:
    image = rng.random(shape).astype(np.float32)
    label = np.zeros(shape[:2], np.int64)
    label[5:20, 8:30] = 3
    label[22:35, 10:40] = 7
    label[25:30, 12:20] = 1
    return image, label


# ---------------------------------------------------------------------------------------------- resizing


def test_resize_image_matches_scipy_zoom_exactly():
    rng = np.random.default_rng(0)
    image = rng.random((50, 37)).astype(np.float32)
    out = resize_image(image, (24, 20))
    expected = ndimage.zoom(image, (24 / 50, 20 / 37), order=3)
    assert out.shape == (24, 20)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_resize_image_rgb_is_per_channel_zoom():
    rng = np.random.default_rng(1)
    image = rng.random((30, 30, 3)).astype(np.float32)
    out = resize_image(image, (17, 45))
    assert out.shape == (17, 45, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], ndimage.zoom(image[..., c], (17 / 30, 45 / 30), order=3))


def test_resize_image_uint8_is_computed_in_float():
    image = np.zeros((20, 20), np.uint8)
    image[5:15, 5:15] = 255
    out = resize_image(image, (13, 13))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ndimage.zoom(image.astype(np.float32), (13 / 20, 13 / 20), order=3))


def test_resize_label_is_nearest_and_exact_size():
    rng = np.random.default_rng(2)
    label = rng.integers(0, 9, size=(51, 33)).astype(np.uint8)
    out = resize_label(label, (224, 224))
    assert out.shape == (224, 224) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, ndimage.zoom(label, (224 / 51, 224 / 33), order=0))
    assert set(np.unique(out)) <= set(np.unique(label))


def test_resize_same_size_returns_copy():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = resize_image(image, (3, 4))
    np.testing.assert_array_equal(out, image)
    assert out is not image


@pytest.mark.parametrize("size", [(0, 5), (5,), (2.5, 3)])
def test_resize_rejects_bad_size(size):
    with pytest.raises(ValueError, match="size must be two positive integers"):
        resize_image(np.zeros((4, 4), np.float32), size)


# ---------------------------------------------------------------------------------------------- single ops


def _op(name: str, image, label, seed: int = 0, **kwargs):
    return MSA2NetAugment(**kwargs).apply_op(name, image, label, np.random.default_rng(seed))


def test_horizontal_flip_reverses_columns():
    rng = np.random.default_rng(3)
    image, label = _random_pair(rng)
    out_image, out_label = _op("horizontal_flip", image, label, flip_p=1.0)
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_label, label[:, ::-1])
    out_image, out_label = _op("horizontal_flip", image, label, flip_p=0.0)
    np.testing.assert_array_equal(out_image, image)


def test_vertical_flip_reverses_rows():
    rng = np.random.default_rng(4)
    image, label = _random_pair(rng)
    out_image, out_label = _op("vertical_flip", image, label, flip_p=1.0)
    np.testing.assert_array_equal(out_image, image[::-1])
    np.testing.assert_array_equal(out_label, label[::-1])


def test_translation_moves_square_by_known_amount():
    image, label = _square_pair(32)
    # 0.25 of 32 px = 8 px along both axes.
    out_image, out_label = _op("translate", image, label, translate_range=(0.25, 0.25))
    np.testing.assert_allclose(out_image, np.roll(image, (8, 8), axis=(0, 1)), atol=1e-5)
    np.testing.assert_array_equal(out_label, np.roll(label, (8, 8), axis=(0, 1)))


def test_translation_fills_background_from_outside():
    image = np.ones((20, 20), np.float32)
    label = np.full((20, 20), 4, np.uint8)
    out_image, out_label = warp_affine(image, label, np.eye(2), translation=(0, -5))
    assert np.all(out_label[:, -5:] == 0) and np.all(out_label[:, :-5] == 4)
    assert np.all(out_image[:, -5:] == 0) and np.allclose(out_image[:, :-5], 1.0)


def test_rotation_by_90_equals_rot90():
    rng = np.random.default_rng(5)
    image, label = _random_pair(rng, shape=(33, 33))
    out_image, out_label = _op("rotate", image, label, rotate_range=(90.0, 90.0))
    np.testing.assert_allclose(out_image[1:-1, 1:-1], np.rot90(image)[1:-1, 1:-1], atol=1e-4)
    np.testing.assert_array_equal(out_label, np.rot90(label))
    # The helper matrix alone gives the same, with a cubic image too.
    cubic, _ = warp_affine(image, label, rotation_matrix(90), image_order=3)
    np.testing.assert_allclose(cubic[2:-2, 2:-2], np.rot90(image)[2:-2, 2:-2], atol=1e-4)


def test_scale_two_enlarges_square_four_times():
    image, label = _square_pair(64, 28, 36)  # 8x8 square around the centre 31.5
    _, out_label = _op("scale", image, label, scale_range=(2.0, 2.0))
    assert np.count_nonzero(out_label) == 16 * 16
    rows, cols = np.nonzero(out_label)
    assert rows.min() == 24 and rows.max() == 39 and cols.min() == 24 and cols.max() == 39


def test_shear_shifts_rows_proportionally_to_distance_from_centre():
    label = np.zeros((41, 41), np.uint8)
    label[:, 20] = 1  # vertical line through the centre column
    image = label.astype(np.float32)
    _, out_label = _op("shear", image, label, shear_range=(45.0, 45.0))
    for row in (0, 10, 20, 30, 40):
        assert np.flatnonzero(out_label[row]).tolist() == [20 + (row - 20)]


def test_gaussian_noise_sigma_and_shared_channels():
    image = np.zeros((64, 64, 3), np.float32)
    label = np.zeros((64, 64), np.uint8)
    out_image, out_label = _op("gaussian_noise", image, label, noise_sigma=0.1)
    assert abs(out_image.std() - 0.1) < 0.01
    np.testing.assert_array_equal(out_image[..., 0], out_image[..., 2])
    np.testing.assert_array_equal(out_label, label)
    default, _ = _op("gaussian_noise", image[..., 0], label)
    assert abs(default.std() - 0.005 * 255) < 0.1  # the kept quirk: sigma in 0-255 units on [0, 1] data


def test_gaussian_blur_matches_scipy_and_keeps_channels_apart():
    rng = np.random.default_rng(6)
    image = rng.random((20, 24, 3)).astype(np.float32)
    label = np.zeros((20, 24), np.uint8)
    out_image, _ = _op("gaussian_blur", image, label)
    for c in range(3):
        np.testing.assert_allclose(
            out_image[..., c], ndimage.gaussian_filter(image[..., c], 1.0, mode="mirror"), rtol=1e-5, atol=1e-6
        )


def test_linear_contrast_multiplies_by_factor_in_range():
    rng = np.random.default_rng(7)
    image = rng.random((16, 16)).astype(np.float32) + 0.1
    out_image, _ = _op("linear_contrast", image, np.zeros((16, 16), np.uint8))
    ratio = out_image / image
    assert np.allclose(ratio, ratio[0, 0], rtol=1e-5)
    assert 0.5 <= ratio[0, 0] <= 1.5


def test_piecewise_affine_is_small_smooth_and_label_safe():
    rng = np.random.default_rng(8)
    image, label = _random_pair(rng, shape=(64, 64))
    out_image, out_label = _op("piecewise_affine", image, label)
    assert out_image.shape == image.shape
    assert set(np.unique(out_label)) <= set(np.unique(label))
    changed = np.mean(out_label != label)
    assert 0 < changed < 0.2  # displacements of about 1-3 % of the size move only boundaries
    same, _ = _op("piecewise_affine", image, label, piecewise_scale_range=(0.0, 0.0))
    np.testing.assert_allclose(same, image, atol=1e-5)


def test_unknown_op_is_rejected():
    with pytest.raises(ValueError, match="unknown augmentation operation 'warp'"):
        _op("warp", *_square_pair())


# ---------------------------------------------------------------------------------------------- recipes


def test_op_count_distribution_covers_zero_to_four_without_repeats():
    aug = MSA2NetAugment()
    rng = np.random.default_rng(9)
    counts = set()
    for _ in range(300):
        ops = aug.sample_ops(rng)
        assert len(set(ops)) == len(ops)
        counts.add(len(ops))
    assert counts == {0, 1, 2, 3, 4}


def test_labels_stay_in_original_set_over_200_random_draws():
    aug = MSA2NetAugment()
    base_rng = np.random.default_rng(10)
    image, label = _random_pair(base_rng, shape=(24, 28))
    allowed = set(np.unique(label).tolist()) | {0}
    for draw in range(200):
        rng = np.random.default_rng([10, draw])
        out_image, out_label = aug(image, label, rng)
        assert out_label.dtype == label.dtype and out_label.shape == label.shape
        assert set(np.unique(out_label).tolist()) <= allowed
        assert np.isfinite(out_image).all()
    for name in aug.OPS:  # each op alone too
        _, out_label = aug.apply_op(name, image, label, np.random.default_rng(1))
        assert set(np.unique(out_label).tolist()) <= allowed, name


def test_augment_is_reproducible_per_seed():
    aug = MSA2NetAugment(min_ops=4)  # always 4 ops so different seeds visibly differ
    image, label = _random_pair(np.random.default_rng(11))
    a = aug(image, label, np.random.default_rng([0, 1, 2]))
    b = aug(image, label, np.random.default_rng([0, 1, 2]))
    c = aug(image, label, np.random.default_rng([0, 1, 3]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_augment_does_not_touch_global_rng():
    # The legacy global RNG is what we check stays untouched, hence the noqa.
    np.random.seed(123)  # noqa: NPY002
    expected = np.random.random()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    MSA2NetAugment(min_ops=4)(*_random_pair(np.random.default_rng(0)), np.random.default_rng(0))
    TransUNetAugment()(*_random_pair(np.random.default_rng(0)), np.random.default_rng(0))
    assert np.random.random() == expected  # noqa: NPY002


def test_augment_rgb_uint8_keeps_dtype_and_range():
    rng = np.random.default_rng(12)
    image = rng.integers(0, 256, size=(20, 22, 3), dtype=np.uint8)
    label = np.zeros((20, 22), np.uint8)
    label[5:15, 5:15] = 1
    aug = MSA2NetAugment(min_ops=4)
    for draw in range(20):
        out_image, out_label = aug(image, label, np.random.default_rng(draw))
        assert out_image.dtype == np.uint8 and out_image.shape == image.shape
        assert set(np.unique(out_label).tolist()) <= {0, 1}


def test_transunet_augment_outputs_are_dihedral_or_rotation():
    image, label = _random_pair(np.random.default_rng(13), shape=(30, 30))
    dihedral = [np.flip(np.rot90(label, k), axis=a) for k in range(4) for a in range(2)]
    aug = TransUNetAugment()
    kinds = set()
    for draw in range(60):
        out_image, out_label = aug(image, label, np.random.default_rng(draw))
        assert out_image.shape == image.shape and out_image.dtype == image.dtype
        assert set(np.unique(out_label)) <= set(np.unique(label))
        if any(np.array_equal(out_label, d) for d in dihedral):
            kinds.add("rot_flip")
        elif np.array_equal(out_label, label) and np.array_equal(out_image, image):
            kinds.add("identity")
        else:
            kinds.add("rotate")
    assert kinds == {"rot_flip", "rotate", "identity"}


def test_flip_augment():
    image, label = _random_pair(np.random.default_rng(14))
    out_image, out_label = FlipAugment(p=1.0)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_label, label[:, ::-1])
    out_image, _ = FlipAugment(p=0.0)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image)


def test_mismatched_pair_is_rejected():
    with pytest.raises(ValueError, match="does not match image shape"):
        MSA2NetAugment()(np.zeros((8, 8), np.float32), np.zeros((8, 9), np.uint8), np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------- pipeline


def test_pipeline_unit_grayscale_normalises_to_minus_one_one():
    image = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    label = np.array([[0, 1], [2, 1]], np.float32)  # float labels as in the TransUNet release
    x, y = SegmentationTransform(size=None, preprocessing=SYNAPSE_PREPROCESSING)(image, label)
    assert x.dtype == torch.float32 and x.shape == (1, 2, 2)
    np.testing.assert_allclose(x[0].numpy(), [[-1.0, 0.0], [1.0, -0.5]])
    assert y.dtype == torch.int64 and y.tolist() == [[0, 1], [2, 1]]
    unit, _ = SegmentationTransform(size=None)(image, label)  # no preprocessing: the unit data stay
    np.testing.assert_array_equal(unit[0].numpy(), image)


def test_pipeline_rgb_per_channel_normalisation_is_the_preprocessings():
    prep = Preprocessing(kind="rgb", in_channels=3, mean=(0.5, 0.2, 0.0), std=(0.5, 0.1, 1.0))
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 255
    image[..., 1] = 51
    x, _ = SegmentationTransform(size=None, preprocessing=prep)(prep.to_unit(image), np.zeros((4, 4), np.uint8))
    assert x.shape == (3, 4, 4)
    np.testing.assert_allclose(x[:, 0, 0].numpy(), [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), prep(image), atol=1e-6)  # what prediction applies


def test_pipeline_resizes_after_augment_and_keeps_labels():
    rng = np.random.default_rng(15)
    image, label = _random_pair(rng, shape=(64, 80))
    transform = build_transform("msa2net", size=(32, 32), preprocessing=SYNAPSE_PREPROCESSING)
    for draw in range(10):
        x, y = transform(image, label, np.random.default_rng(draw))
        assert x.shape == (1, 32, 32) and y.shape == (32, 32)
        assert not torch.isnan(x).any()
        assert set(y.unique().tolist()) <= set(np.unique(label).tolist())


def test_pipeline_without_augment_equals_legacy_resize_and_normalise():
    rng = np.random.default_rng(16)
    image = rng.random((50, 50)).astype(np.float32)
    label = rng.integers(0, 9, size=(50, 50)).astype(np.float32)
    x, y = build_transform("none", size=(24, 24), preprocessing=SYNAPSE_PREPROCESSING)(image, label)
    expected = (ndimage.zoom(image, (24 / 50, 24 / 50), order=3) - 0.5) / 0.5
    np.testing.assert_allclose(x[0].numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y.numpy(), ndimage.zoom(label, (24 / 50, 24 / 50), order=0).astype(np.int64))


def test_pipeline_rgb_with_msa2net_recipe():
    rng = np.random.default_rng(17)
    image = ISIC_PREPROCESSING.to_unit(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8))
    label = (rng.random((40, 40)) > 0.5).astype(np.uint8)
    x, y = build_transform("msa2net", size=(16, 16), preprocessing=ISIC_PREPROCESSING)(
        image, label, np.random.default_rng(0)
    )
    assert x.shape == (3, 16, 16) and torch.isfinite(x).all()
    assert set(y.unique().tolist()) <= {0, 1}


def test_pipeline_float_multichannel_unit_input():
    image = np.full((8, 8, 3), 0.75, np.float32)
    transform = build_transform("flip", size=(8, 8), preprocessing=ISIC_PREPROCESSING)
    x, _ = transform(image, np.zeros((8, 8), np.uint8), np.random.default_rng(0))
    np.testing.assert_allclose(x.numpy(), 0.5)


def test_pipeline_rejects_nan_raw_dtype_and_fractional_labels():
    transform = SegmentationTransform(size=None)
    image = np.zeros((4, 4), np.float32)
    image[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN/infinite"):
        transform(image, np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="Preprocessing.to_unit"):
        transform(np.zeros((4, 4), np.int16), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="Preprocessing.to_unit"):
        transform(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="non-integer"):
        transform(np.zeros((4, 4), np.float32), np.full((4, 4), 0.5, np.float32))
    with pytest.raises(ValueError, match="rng"):
        build_transform("flip", size=None)(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8))


def test_pipeline_rejects_channel_count_mismatch():
    transform = SegmentationTransform(size=None, preprocessing=Preprocessing(kind="zscore", in_channels=2))
    with pytest.raises(ValueError, match="2 channels"):
        transform(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8))


def test_build_transform_recipes_and_unknown():
    assert isinstance(build_transform("msa2net", (8, 8)).augment, MSA2NetAugment)
    assert isinstance(build_transform("transunet", (8, 8)).augment, TransUNetAugment)
    assert isinstance(build_transform("flip", (8, 8)).augment, FlipAugment)
    assert build_transform("none", (8, 8)).augment is None
    with pytest.raises(ValueError, match="msa2net, transunet, flip, none"):
        build_transform("imgaug", (8, 8))
