"""Tests of msa2net.metrics: MedPy as an oracle, geometry known by hand, empty-mask rules, pooled scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from msa2net import metrics
from msa2net.metrics import (
    binary_confusion,
    diagonal_mm,
    dice,
    hd95,
    isic_postprocess,
    legacy_case_metrics,
    legacy_case_scores,
    pooled_binary_metrics,
    surface_dice,
)

medpy_binary = pytest.importorskip("medpy.metric.binary")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def blob(rng: np.random.Generator, shape: tuple[int, ...], fill: float) -> np.ndarray:
    """Random smooth blob(s): smoothed noise thresholded so that about ``fill`` of the voxels are set."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(0.5, 2.5))
    return noise > np.quantile(noise, 1.0 - fill)


def box(shape: tuple[int, ...], starts: tuple[int, ...], sizes: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + n) for s, n in zip(starts, sizes))] = True
    return mask


def full_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference: surface distances of both directions from full distance transforms of the whole arrays."""
    structure = ndimage.generate_binary_structure(pred.ndim, 1)
    surfaces = [m & ~ndimage.binary_erosion(m, structure=structure, border_value=0) for m in (pred, gt)]
    to_gt = ndimage.distance_transform_edt(~surfaces[1], sampling=spacing)[surfaces[0]]
    to_pred = ndimage.distance_transform_edt(~surfaces[0], sampling=spacing)[surfaces[1]]
    return to_gt, to_pred


def uncropped_hd95(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...] | None) -> float:
    """HD95 from full distance transforms of the whole arrays, without the bounding-box crop."""
    return float(np.percentile(np.concatenate(full_distances(pred, gt, spacing)), 95))


def uncropped_nsd(pred: np.ndarray, gt: np.ndarray, tolerance: float, spacing: tuple[float, ...] | None) -> float:
    to_gt, to_pred = full_distances(pred, gt, spacing)
    return float(
        (np.count_nonzero(to_gt <= tolerance) + np.count_nonzero(to_pred <= tolerance)) / (to_gt.size + to_pred.size)
    )


def random_pairs(seed: int, count: int):
    """Non-empty mask pairs of random 2D/3D shapes (size-1 axes included), many touching the border."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        ndim = int(rng.integers(2, 4))
        shape = tuple(int(n) for n in rng.integers(1, 24, size=ndim))
        pred = blob(rng, shape, rng.uniform(0.02, 0.6))
        gt = blob(rng, shape, rng.uniform(0.02, 0.6))
        if not pred.any() or not gt.any():
            continue
        spacing = tuple(float(s) for s in rng.uniform(0.3, 5.0, size=ndim))
        yield pred, gt, spacing


# Two 10x10 squares, the second shifted right by 3 px. Worked out by hand:
# each surface has 36 pixels; of the 72, 28 are exactly 3 px from the other surface (the outer
# vertical edge: 8, its two corners: 2, and 4 pixels in the middle of the inner vertical edge, per
# square) and the other 44 are at most 2 px away. So HD95 = 3 (more than 5% at the maximum 3) and
# NSD at a tolerance of 2.5 is 44 / 72.
SQUARE_A = box((20, 20), (5, 5), (10, 10))
SQUARE_B = box((20, 20), (5, 8), (10, 10))


# ----------------------------------------------------------------------------------------------
# MedPy oracle
# ----------------------------------------------------------------------------------------------


def test_dice_and_hd95_match_medpy_on_random_masks() -> None:
    checked = 0
    for pred, gt, spacing in random_pairs(seed=0, count=80):
        assert dice(pred, gt) == pytest.approx(medpy_binary.dc(pred, gt), abs=1e-12)
        assert hd95(pred, gt) == pytest.approx(medpy_binary.hd95(pred, gt), abs=1e-6)
        assert hd95(pred, gt, spacing=spacing) == pytest.approx(
            medpy_binary.hd95(pred, gt, voxelspacing=spacing), abs=1e-6
        )
        checked += 1
    assert checked > 60


@pytest.mark.parametrize("ndim", [2, 3])
def test_hd95_matches_medpy_on_masks_touching_every_border(ndim: int) -> None:
    rng = np.random.default_rng(1)
    shape = (12, 9, 7)[:ndim]
    full = np.ones(shape, dtype=bool)  # its surface is the array border
    for _ in range(10):
        gt = blob(rng, shape, 0.4)
        gt[(0,) * ndim] = True  # touches a corner
        assert hd95(full, gt) == pytest.approx(medpy_binary.hd95(full, gt), abs=1e-6)
        assert hd95(gt, full, spacing=(0.7, 2.0, 3.0)[:ndim]) == pytest.approx(
            medpy_binary.hd95(gt, full, voxelspacing=(0.7, 2.0, 3.0)[:ndim]), abs=1e-6
        )


def test_hd95_of_single_voxels_is_their_distance() -> None:
    shape = (9, 10, 11)
    pred = box(shape, (1, 2, 3), (1, 1, 1))
    gt = box(shape, (4, 6, 3), (1, 1, 1))
    assert hd95(pred, gt) == pytest.approx(5.0)  # 3-4-5 triangle
    assert hd95(pred, gt, spacing=(2.0, 1.0, 9.0)) == pytest.approx(math.hypot(6.0, 4.0))
    assert hd95(pred, gt) == pytest.approx(medpy_binary.hd95(pred, gt))
    big = blob(np.random.default_rng(2), shape, 0.3)
    assert hd95(pred, big, spacing=(1.5, 0.8, 0.8)) == pytest.approx(
        medpy_binary.hd95(pred, big, voxelspacing=(1.5, 0.8, 0.8)), abs=1e-6
    )


def test_scalar_spacing_applies_to_every_axis() -> None:
    assert hd95(SQUARE_A, SQUARE_B, spacing=0.5) == pytest.approx(1.5)
    assert hd95(SQUARE_A, SQUARE_B, spacing=0.5) == pytest.approx(
        medpy_binary.hd95(SQUARE_A, SQUARE_B, voxelspacing=0.5)
    )


# ----------------------------------------------------------------------------------------------
# Bounding-box crop
# ----------------------------------------------------------------------------------------------


def test_crop_gives_identical_results_to_uncropped_computation() -> None:
    for pred, gt, spacing in random_pairs(seed=3, count=40):
        assert hd95(pred, gt) == uncropped_hd95(pred, gt, None)
        assert hd95(pred, gt, spacing=spacing) == uncropped_hd95(pred, gt, spacing)


def test_crop_is_exact_for_small_far_apart_masks_in_a_large_volume() -> None:
    shape = (30, 64, 64)
    pred = box(shape, (2, 3, 50), (4, 5, 6))
    gt = box(shape, (20, 40, 4), (6, 3, 5))
    pred_crop, gt_crop = metrics._masks._joint_crop(pred, gt)
    # joint box: axis 0 [2, 26), axis 1 [3, 43), axis 2 [4, 56); padded by one voxel on each side
    assert pred_crop.shape == gt_crop.shape == (26, 42, 54)
    assert hd95(pred, gt, spacing=(3.0, 0.7, 0.7)) == uncropped_hd95(pred, gt, (3.0, 0.7, 0.7))
    # A mask touching the array border: the crop edge is the array edge, as for the full array.
    edge = box(shape, (0, 0, 0), (5, 5, 5))
    assert hd95(edge, gt) == uncropped_hd95(edge, gt, None)


# ----------------------------------------------------------------------------------------------
# Geometry known by hand
# ----------------------------------------------------------------------------------------------


def test_squares_offset_by_three_pixels() -> None:
    assert hd95(SQUARE_A, SQUARE_B) == pytest.approx(3.0)
    assert hd95(SQUARE_B, SQUARE_A) == pytest.approx(3.0)
    assert dice(SQUARE_A, SQUARE_B) == pytest.approx(2 * 70 / 200)
    assert surface_dice(SQUARE_A, SQUARE_B, tolerance_mm=2.5) == pytest.approx(44 / 72)
    assert surface_dice(SQUARE_A, SQUARE_B, tolerance_mm=3.0) == pytest.approx(1.0)  # inclusive


@pytest.mark.parametrize("k", [1, 4])
def test_cubes_k_slices_apart_give_millimetres(k: int) -> None:
    # Two 6^3 cubes shifted by k slices: the faces across the shift are exactly k slices apart
    # (72 of 304 surface voxels) and nothing is farther, so HD95 = k * slice spacing.
    shape = (20, 12, 12)
    pred = box(shape, (3, 3, 3), (6, 6, 6))
    gt = box(shape, (3 + k, 3, 3), (6, 6, 6))
    assert hd95(pred, gt) == pytest.approx(float(k))
    assert hd95(pred, gt, spacing=(2.5, 0.8, 0.8)) == pytest.approx(2.5 * k)
    assert surface_dice(pred, gt, tolerance_mm=2.5 * k, spacing=(2.5, 0.8, 0.8)) == pytest.approx(1.0)


def test_identical_masks() -> None:
    mask = box((8, 8, 8), (1, 2, 3), (4, 3, 2))
    assert dice(mask, mask) == 1.0
    assert hd95(mask, mask) == 0.0
    assert surface_dice(mask, mask, tolerance_mm=0.0) == 1.0


# ----------------------------------------------------------------------------------------------
# Empty masks
# ----------------------------------------------------------------------------------------------


def test_dice_of_two_empty_masks_is_zero() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    assert dice(empty, empty) == 0.0
    assert dice(empty, SQUARE_A[:4, :4] | True) == 0.0


@pytest.mark.parametrize("which", ["pred", "gt", "both"])
def test_hd95_empty_policies(which: str) -> None:
    shape, spacing = (10, 5), (0.3, 0.8)  # field of view 3 mm x 4 mm
    empty = np.zeros(shape, dtype=bool)
    full = box(shape, (2, 1), (3, 3))
    pred, gt = {"pred": (empty, full), "gt": (full, empty), "both": (empty, empty)}[which]
    assert hd95(pred, gt) == 0.0  # "legacy"
    assert math.isnan(hd95(pred, gt, empty="nan"))
    assert hd95(pred, gt, spacing=spacing, empty=7.5) == 7.5
    assert hd95(pred, gt, spacing=spacing, empty="diagonal") == pytest.approx(5.0)
    assert hd95(pred, gt, empty=diagonal_mm(shape, spacing)) == pytest.approx(5.0)


def test_invalid_empty_policy_and_spacing_raise() -> None:
    with pytest.raises(ValueError, match="empty must be one of"):
        hd95(SQUARE_A, SQUARE_B, empty="zero")
    with pytest.raises(ValueError, match="non-negative"):
        hd95(SQUARE_A, SQUARE_B, empty=-1.0)
    with pytest.raises(ValueError, match="one value per axis"):
        hd95(SQUARE_A, SQUARE_B, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        hd95(SQUARE_A, SQUARE_B, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="same shape"):
        hd95(SQUARE_A, SQUARE_B[:10])


def test_diagonal_mm() -> None:
    assert diagonal_mm((3, 4)) == pytest.approx(5.0)
    assert diagonal_mm((10, 5), (0.3, 0.8)) == pytest.approx(5.0)
    assert diagonal_mm((100, 512, 512), 1.0) == pytest.approx(math.sqrt(100**2 + 2 * 512**2))


def test_legacy_case_metrics_every_branch() -> None:
    empty = np.zeros_like(SQUARE_A)
    both = legacy_case_metrics(SQUARE_A, SQUARE_B)
    assert both == pytest.approx((medpy_binary.dc(SQUARE_A, SQUARE_B), medpy_binary.hd95(SQUARE_A, SQUARE_B)))
    assert both == pytest.approx((0.7, 3.0))
    assert legacy_case_metrics(SQUARE_A, empty) == (1.0, 0.0)  # false positive organ
    assert legacy_case_metrics(empty, SQUARE_B) == (0.0, 0.0)  # missed organ
    assert legacy_case_metrics(empty, empty) == (0.0, 0.0)


def test_surface_dice_empty_conventions() -> None:
    empty = np.zeros_like(SQUARE_A)
    assert math.isnan(surface_dice(empty, empty, tolerance_mm=1.0))
    assert surface_dice(SQUARE_A, empty, tolerance_mm=1.0) == 0.0
    assert surface_dice(empty, SQUARE_A, tolerance_mm=1.0) == 0.0
    with pytest.raises(ValueError, match="tolerance_mm"):
        surface_dice(SQUARE_A, SQUARE_B, tolerance_mm=-1.0)


# ----------------------------------------------------------------------------------------------
# legacy_case_scores
# ----------------------------------------------------------------------------------------------


def test_legacy_case_scores_on_a_label_map() -> None:
    shape, spacing = (20, 12, 12), (2.5, 0.8, 0.8)
    gt = np.zeros(shape, dtype=np.int64)
    pred = np.zeros(shape, dtype=np.int64)
    gt[box(shape, (3, 3, 3), (6, 6, 6))] = 1
    pred[box(shape, (5, 3, 3), (6, 6, 6))] = 1  # class 1 shifted by 2 slices
    gt[box(shape, (14, 2, 2), (2, 2, 2))] = 2  # class 2 missed by the prediction; class 3 absent
    out = legacy_case_scores(pred, gt, num_classes=4, spacing=spacing, empty="nan", nsd_tolerance_mm=5.0)

    assert list(out) == ["class_1", "class_2", "class_3"]
    c1 = out["class_1"]
    assert c1["dice"] == pytest.approx(2 * 4 / 12)
    assert c1["hd95"] == pytest.approx(2.0)
    assert c1["hd95_mm"] == pytest.approx(5.0)
    assert c1["nsd"] == pytest.approx(1.0)
    assert (c1["pred_empty"], c1["gt_empty"]) == (0.0, 0.0)

    c2 = out["class_2"]
    assert (c2["dice"], c2["hd95"]) == (0.0, 0.0)  # legacy rule for a missed organ
    assert math.isnan(c2["hd95_mm"]) and c2["nsd"] == 0.0
    assert (c2["pred_empty"], c2["gt_empty"]) == (1.0, 0.0)

    c3 = out["class_3"]
    assert (c3["dice"], c3["hd95"]) == (0.0, 0.0)
    assert math.isnan(c3["hd95_mm"]) and math.isnan(c3["nsd"])
    assert (c3["pred_empty"], c3["gt_empty"]) == (1.0, 1.0)

    penalised = legacy_case_scores(pred, gt, num_classes=4, spacing=spacing, empty="diagonal")
    assert penalised["class_2"]["hd95_mm"] == pytest.approx(diagonal_mm(shape, spacing))
    assert "nsd" not in penalised["class_2"]


def test_legacy_case_scores_agrees_with_the_single_mask_functions() -> None:
    rng = np.random.default_rng(4)
    shape, spacing = (10, 24, 24), (3.0, 0.7, 0.7)
    gt = rng.integers(0, 3, size=shape) * blob(rng, shape, 0.5)
    pred = rng.integers(0, 3, size=shape) * blob(rng, shape, 0.5)
    names = ("liver", "spleen")
    out = legacy_case_scores(pred.astype(np.float32), gt, 3, spacing=spacing, nsd_tolerance_mm=2.0, class_names=names)
    for label, name in enumerate(names, start=1):
        assert (out[name]["dice"], out[name]["hd95"]) == legacy_case_metrics(pred == label, gt == label)
        assert out[name]["hd95_mm"] == hd95(pred == label, gt == label, spacing=spacing)
        assert out[name]["nsd"] == surface_dice(pred == label, gt == label, 2.0, spacing=spacing)


def test_legacy_case_scores_rejects_bad_labels() -> None:
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[0, 0], gt[1, 1] = 9, 12
    with pytest.raises(ValueError, match=r"\[9, 12\]"):
        legacy_case_scores(gt, gt, num_classes=9)
    with pytest.raises(ValueError, match="non-integer"):
        legacy_case_scores(np.full((4, 4), 0.5), gt.clip(0, 1), num_classes=2)
    with pytest.raises(ValueError, match="same shape"):
        legacy_case_scores(np.zeros((4, 5), dtype=int), np.zeros((4, 4), dtype=int), num_classes=2)


# ----------------------------------------------------------------------------------------------
# ISIC pooled metrics and post-processing
# ----------------------------------------------------------------------------------------------


def test_pooled_binary_metrics_hand_example() -> None:
    gt = np.zeros((4, 4), dtype=bool)
    gt[0, :4] = gt[1, :2] = True  # 6 pixels
    pred = np.zeros((4, 4), dtype=bool)
    pred[0, :4] = pred[3, 3] = True  # 5 pixels, 4 of them correct
    assert binary_confusion(pred, gt) == (4, 1, 2, 9)
    scores = pooled_binary_metrics((4, 1, 2, 9))
    assert scores == pytest.approx(
        {"dsc": 8 / 11, "iou": 4 / 7, "sensitivity": 4 / 6, "specificity": 9 / 10, "accuracy": 13 / 16}
    )
    assert math.isnan(pooled_binary_metrics((0, 0, 0, 5))["dsc"])


def lesion_with_hole_and_speck() -> tuple[np.ndarray, np.ndarray]:
    lesion = box((40, 40), (5, 5), (24, 24))
    noisy = lesion.copy()
    noisy[16:18, 16:18] = False  # 2x2 hole inside the lesion
    noisy[34:37, 34:37] = True  # 3x3 speck away from it
    return noisy, lesion


def test_isic_postprocess_removes_speck_and_fills_hole() -> None:
    noisy, lesion = lesion_with_hole_and_speck()
    np.testing.assert_array_equal(isic_postprocess(noisy), lesion)
    kept_speck = isic_postprocess(noisy, opening=0)  # no opening: hole filled, speck kept
    np.testing.assert_array_equal(kept_speck, lesion | box((40, 40), (34, 34), (3, 3)))
    with pytest.raises(ValueError, match="2D"):
        isic_postprocess(np.zeros((2, 4, 4)))


def test_legacy_case_scores_dice_follows_the_legacy_rule_not_dice() -> None:
    # The naming trap the rename removes: a hallucinated organ is a perfect score under the legacy rule.
    hallucinated = np.zeros((6, 6), dtype=np.int64)
    hallucinated[1:3, 1:3] = 1
    absent = np.zeros_like(hallucinated)
    scores = legacy_case_scores(hallucinated, absent, num_classes=2, empty="nan")["class_1"]
    assert (scores["dice"], scores["hd95"]) == (1.0, 0.0)
    assert dice(hallucinated == 1, absent == 1) == 0.0
    assert math.isnan(scores["hd95_mm"]) and math.isnan(hd95(hallucinated == 1, absent == 1, empty="nan"))


def test_metrics_exports_pure_functions_only() -> None:
    assert all(callable(getattr(metrics, name)) for name in metrics.__all__ if name != "EmptyPolicy")
    for moved in ("MetricAggregator", "PooledBinaryMetrics", "json_safe", "format_paper_table", "SYNAPSE_CLASSES"):
        assert not hasattr(metrics, moved), moved  # reporting lives in msa2net.reporting, class names in data
    with pytest.raises(AttributeError, match="case_metrics"):
        metrics.case_metrics  # noqa: B018 (renamed legacy_case_scores; no alias keeps the misleading name)
