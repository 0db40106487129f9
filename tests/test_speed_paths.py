"""The fast paths give the figures of the plain computation: bounded surface distances (every plan against full
distance transforms and MedPy, on noisy and organ-like masks), the shifted-view surface, threads, and chunked
volume inference against the one-slice-at-a-time legacy procedure."""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
from reference import benchmark_module
from scipy import ndimage

from msa2net.metrics import _distances as metrics  # the bounded-work engine, tested directly
from msa2net.metrics import hd95, legacy_case_scores, overlap, surface_dice

medpy_binary = pytest.importorskip("medpy.metric.binary")

Spacing = tuple[float, ...] | None


# ----------------------------------------------------------------------------------------------
# Reference: full distance transforms of the whole arrays
# ----------------------------------------------------------------------------------------------


def reference_distances(pred: np.ndarray, gt: np.ndarray, spacing: Spacing) -> tuple[np.ndarray, np.ndarray]:
    structure = ndimage.generate_binary_structure(pred.ndim, 1)
    surfaces = [m & ~ndimage.binary_erosion(m, structure=structure, border_value=0) for m in (pred, gt)]
    to_gt = ndimage.distance_transform_edt(~surfaces[1], sampling=spacing)[surfaces[0]]
    to_pred = ndimage.distance_transform_edt(~surfaces[0], sampling=spacing)[surfaces[1]]
    return to_gt, to_pred


def reference_figures(pred: np.ndarray, gt: np.ndarray, spacing: Spacing, tolerance: float) -> tuple[float, float]:
    to_gt, to_pred = reference_distances(pred, gt, spacing)
    pooled = np.concatenate((to_gt, to_pred))
    return float(np.percentile(pooled, 95)), float(np.count_nonzero(pooled <= tolerance) / pooled.size)


def noisy(rng: np.random.Generator, shape: tuple[int, ...], fill: float) -> np.ndarray:
    """Salt-and-pepper foreground everywhere: the prediction of an untrained model."""
    return rng.random(shape) < fill


def organ(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """One smooth blob around the centre."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    radii = [max(n * rng.uniform(0.15, 0.3), 1.0) for n in shape]
    centre = [n * rng.uniform(0.35, 0.65) for n in shape]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def pairs(seed: int, count: int) -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]]:
    """Noisy prediction against an organ, the reverse, and an organ against a shifted organ with specks."""
    rng = np.random.default_rng(seed)
    kinds = ("noisy_pred", "noisy_gt", "organ_specks")
    for i in range(count):
        ndim = int(rng.integers(2, 4))
        shape = tuple(int(n) for n in rng.integers(6, 28 if ndim == 3 else 60, size=ndim))
        kind = kinds[i % 3]
        gt = organ(rng, shape)
        if kind == "noisy_pred":
            pred = noisy(rng, shape, rng.uniform(0.02, 0.4))
        elif kind == "noisy_gt":
            pred, gt = gt, noisy(rng, shape, rng.uniform(0.02, 0.4))
        else:
            pred = np.roll(gt, int(rng.integers(1, 4)), axis=ndim - 1) | noisy(rng, shape, 0.003)
        if pred.any() and gt.any():
            yield kind, pred, gt, tuple(float(s) for s in rng.uniform(0.4, 4.0, size=ndim))


PLANS = {
    f"{bounds}-{exact}-b{block}-m{margin}": metrics._Plan(
        small_crop_voxels=0, bounds=bounds, exact=exact, block=block, margin=margin
    )
    for bounds in ("auto", "window", "blocks")
    for exact in ("auto", "window", "tree")
    for block, margin in ((2, 1), (4, 3))
}


# ----------------------------------------------------------------------------------------------
# Bounded surface distances
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PLANS))
def test_every_plan_gives_the_figures_of_full_distance_transforms(name: str) -> None:
    plan = PLANS[name]
    for _, pred, gt, spacing in pairs(seed=7, count=12):
        for sampling in (None, spacing):
            to_gt, to_pred = reference_distances(pred, gt, sampling)
            pooled = np.concatenate((to_gt, to_pred))
            for tolerance in (float(np.median(pooled)), float(pooled.max()) / 3.0):
                expected = reference_figures(pred, gt, sampling, tolerance)
                got = metrics._surface_figures(pred, gt, {sampling: (True, tolerance)}, plan)[sampling]
                assert got == expected  # bit for bit, millimetres included
            hd_only = metrics._surface_figures(pred, gt, {sampling: (True, None)}, plan)[sampling]
            assert hd_only[0] == expected[0] and math.isnan(hd_only[1])


def test_bounded_paths_match_medpy_on_noisy_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_DEFAULT_PLAN", metrics._Plan(small_crop_voxels=0))
    checked = 0
    for kind, pred, gt, spacing in pairs(seed=11, count=18):
        assert hd95(pred, gt) == medpy_binary.hd95(pred, gt), kind  # voxels: bit for bit
        assert hd95(pred, gt, spacing=spacing) == pytest.approx(
            medpy_binary.hd95(pred, gt, voxelspacing=spacing), rel=1e-12, abs=1e-9
        )
        checked += 1
    assert checked >= 15


def test_window_bounds_beyond_the_margin_fall_back_to_exact_distances() -> None:
    # The ground truth's nearest prediction voxels are ~20 voxels away: farther than the window margin (2), so the
    # window gives only lower bounds there, and the figures come from the exact fallback.
    shape = (12, 60, 60)
    gt = np.zeros(shape, dtype=bool)
    gt[4:8, 5:15, 5:15] = True
    pred = np.zeros(shape, dtype=bool)
    pred[3:9, 35:55, 30:58] = True
    sides = (metrics._Side(pred), metrics._Side(gt))
    bounds = metrics._window_bounds(sides[1], sides[0].mask, None, np.array([2, 2, 2]))
    assert np.all(bounds.lower < bounds.upper) and np.all(bounds.lower == pytest.approx(2.0))
    truth = reference_distances(pred, gt, None)[1]
    assert np.all(bounds.lower <= truth) and np.all(truth <= bounds.upper)
    plan = metrics._Plan(small_crop_voxels=0, bounds="window", margin=2)
    for sampling in (None, (2.5, 0.7, 0.7)):
        expected = reference_figures(pred, gt, sampling, 10.0)
        assert metrics._surface_figures(pred, gt, {sampling: (True, 10.0)}, plan)[sampling] == expected
    # and a window holding no target at all: every distance unknown above the margin, then found exactly
    far = np.zeros(shape, dtype=bool)
    far[0:2, 50:60, 50:60] = True
    empty_window = metrics._window_bounds(sides[1], metrics._Side(far).mask, None, np.array([1, 1, 1]))
    assert np.all(np.isinf(empty_window.upper))
    assert metrics._surface_figures(far, gt, {None: (True, 5.0)}, plan)[None] == reference_figures(far, gt, None, 5.0)


def test_block_bounds_hold_every_distance_of_their_queries() -> None:
    rng = np.random.default_rng(3)
    for _, pred, gt, spacing in pairs(seed=5, count=9):
        for sampling in (None, spacing):
            sides = (metrics._Side(pred), metrics._Side(gt))
            truth = reference_distances(pred, gt, sampling)[0]  # pred surface -> gt surface, C order
            position = {tuple(p): i for i, p in enumerate(sides[0].points.T)}
            block = int(rng.integers(2, 6))
            bounds = metrics._block_bounds(sides[0], sides[1], sampling, block)
            assert int(bounds.weights().sum()) == sides[0].count
            for entry in range(bounds.lower.size):
                queries = bounds.queries(sides[0], np.array([entry]))
                assert queries.shape[1] == bounds.weight[entry]
                values = truth[[position[tuple(q)] for q in queries.T]]
                assert np.all(bounds.lower[entry] <= values) and np.all(values <= bounds.upper[entry])


def test_rank_bounds_are_on_the_safe_side() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        values = rng.uniform(0, rng.uniform(0.5, 400), n).round(int(rng.integers(0, 3)))
        weights = rng.integers(1, 5, n) if rng.random() < 0.5 else None
        if rng.random() < 0.2:
            values[rng.integers(0, n)] = np.inf
        repeated = values if weights is None else np.repeat(values, weights)
        k = int(rng.integers(0, repeated.size))
        kth = np.partition(repeated, k)[k]
        low = metrics._rank_bound(values, weights, k, above=False)
        high = metrics._rank_bound(values, weights, k, above=True)
        assert low <= kth <= high
        finite = repeated[np.isfinite(repeated)]
        if np.isfinite(kth) and finite.max() > 0:
            assert high - low <= 4 * finite.max() / 4096 + 1e-9  # tight: a few histogram bins


def test_legacy_case_scores_on_a_noisy_label_map_match_medpy(monkeypatch: pytest.MonkeyPatch) -> None:
    # every class everywhere, as an untrained model predicts; bounded paths forced on a small volume
    monkeypatch.setattr(metrics, "_DEFAULT_PLAN", metrics._Plan(small_crop_voxels=0, block=3, margin=2))
    rng = np.random.default_rng(2)
    shape, spacing = (14, 48, 40), (3.0, 0.8, 0.8)
    coarse = rng.integers(0, 4, size=(14, 20, 16))
    pred = ndimage.zoom(coarse, (1, 48 / 20, 40 / 16), order=0)
    gt = np.zeros(shape, dtype=np.int64)
    gt[3:9, 10:30, 8:20] = 1
    gt[5:12, 30:44, 22:36] = 2
    gt[0:3, 0:6, 0:8] = 3  # touches the border
    out = legacy_case_scores(pred, gt, 4, spacing=spacing, nsd_tolerance_mm=2.0)
    for label in (1, 2, 3):
        row = out[f"class_{label}"]
        p, g = pred == label, gt == label
        assert (row["dice"], row["hd95"]) == (medpy_binary.dc(p, g), medpy_binary.hd95(p, g))
        assert row["hd95_mm"] == pytest.approx(medpy_binary.hd95(p, g, voxelspacing=spacing), rel=1e-12)
        assert row["nsd"] == reference_figures(p, g, spacing, 2.0)[1]
        assert row["hd95"] == hd95(p, g) and row["nsd"] == surface_dice(p, g, 2.0, spacing=spacing)


def test_threads_do_not_change_the_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    pred = rng.integers(0, 5, size=(6, 30, 30))
    gt = ndimage.median_filter(rng.integers(0, 5, size=(6, 30, 30)), size=5)
    monkeypatch.setattr(overlap, "os", SimpleNamespace(sched_getaffinity=lambda _: range(4)))
    assert overlap._thread_count(4) == 4
    four = legacy_case_scores(pred, gt, 5, spacing=(2.0, 0.7, 0.7), nsd_tolerance_mm=1.5)
    monkeypatch.setattr(overlap, "MAX_THREADS", 1)
    one = legacy_case_scores(pred, gt, 5, spacing=(2.0, 0.7, 0.7), nsd_tolerance_mm=1.5)
    assert overlap._thread_count(4) == 1
    assert one.keys() == four.keys()
    for name in one:
        assert one[name] == pytest.approx(four[name], nan_ok=True, rel=0, abs=0)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_surface_is_mask_minus_its_erosion(ndim: int) -> None:
    rng = np.random.default_rng(ndim)
    structure = ndimage.generate_binary_structure(ndim, 1)
    for _ in range(30):
        shape = tuple(int(n) for n in rng.integers(1, 9, size=ndim))
        mask = ndimage.gaussian_filter(rng.standard_normal(shape), 0.8) > rng.uniform(-0.5, 0.5)
        expected = mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)
        np.testing.assert_array_equal(metrics._surface(mask), expected)


def test_block_counts_equal_a_plain_sum() -> None:
    rng = np.random.default_rng(4)
    for shape, factors in (((7, 10, 9), (1, 4, 4)), ((5, 6), (2, 3)), ((9,), (4,)), ((3, 5, 4), (3, 5, 4))):
        side = metrics._Side(rng.random(shape) < 0.3)
        blocked = side.blocked(np.array(factors))
        expected = blocked.sum(axis=tuple(range(1, 2 * len(shape), 2)))
        np.testing.assert_array_equal(metrics._block_counts(blocked), expected)


# ----------------------------------------------------------------------------------------------
# Volume inference: chunked forward passes and the resize helper thread
# ----------------------------------------------------------------------------------------------


def _legacy_reference():
    """benchmarks/legacy_reference.py: the authors' one-slice-at-a-time procedure, written independently."""
    return benchmark_module("legacy_reference")


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    import msa2net

    torch.manual_seed(0)
    return msa2net.create_model("msa2net_test", num_classes=9, img_size=64).eval()


def test_stepped_inference_is_the_one_slice_procedure(tiny_model) -> None:
    from msa2net.engine import inference

    rng = np.random.default_rng(1)
    volume = np.clip(rng.normal(0.5, 0.2, (7, 90, 100)), 0, 1).astype(np.float32)
    expected = _legacy_reference().legacy_single_volume_labels(tiny_model, volume, 64)
    passes: list[int] = []
    hook = tiny_model.register_forward_pre_hook(lambda _module, args: passes.append(int(args[0].shape[0])))
    try:
        for batch in (1, 2, 3, 16):
            passes.clear()
            labels = inference.predict_volume(tiny_model, volume, batch_size=batch)
            np.testing.assert_array_equal(labels, expected)  # bit for bit: same computation per slice
            assert labels.dtype == np.uint8 and passes == [1] * 7  # CPU: one slice per forward pass
    finally:
        hook.remove()


def test_steps_keep_autocast_and_tta(tiny_model) -> None:
    """bf16 and flip TTA are applied to every slice whatever the step size (and under inference mode)."""
    import torch

    from msa2net.engine import inference

    volume = np.clip(np.random.default_rng(2).normal(0.5, 0.2, (6, 70, 70)), 0, 1).astype(np.float32)
    modes: list[tuple[bool, bool]] = []
    hook = tiny_model.register_forward_pre_hook(
        lambda _m, _a: modes.append((torch.is_autocast_enabled("cpu"), torch.is_inference_mode_enabled()))
    )
    try:
        for amp, tta in (("bf16", False), (None, True)):
            one = inference.predict_volume(tiny_model, volume, batch_size=1, amp=amp, tta=tta)
            modes.clear()
            stepped = inference.predict_volume(tiny_model, volume, batch_size=6, amp=amp, tta=tta)
            np.testing.assert_array_equal(stepped, one)
            assert set(modes) == {(amp == "bf16", True)}
    finally:
        hook.remove()


def test_errors_of_a_step_reach_the_caller(tiny_model) -> None:
    from msa2net.data.preprocessing import Preprocessing
    from msa2net.engine import inference

    class Broken(Preprocessing):
        def normalize(self, unit: np.ndarray) -> np.ndarray:
            raise RuntimeError("broken normalisation")

    volume = np.zeros((5, 64, 64), dtype=np.float32)
    broken_forward = tiny_model.register_forward_pre_hook(lambda _m, _a: (_ for _ in ()).throw(RuntimeError("pass")))
    try:
        with pytest.raises(RuntimeError, match="pass"):  # an error in a forward pass
            inference.predict_volume(tiny_model, volume, batch_size=4)
    finally:
        broken_forward.remove()
    with pytest.raises(RuntimeError, match="broken normalisation"):
        inference.predict_volume(tiny_model, volume, preprocessing=Broken(kind="unit"), batch_size=2)
    with pytest.raises(ValueError, match="amp"):
        inference.predict_volume(tiny_model, volume, amp="fp8")
