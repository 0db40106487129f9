"""Tests of msa2net.losses: Boundary DoU against an independent loop implementation, hand values, checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from msa2net.losses import (
    LOSS_NAMES,
    BoundaryDoULoss,
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    boundary_alpha,
    build_loss,
)

EPS = 1e-5


def reference_boundary_dou(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Boundary DoU written from the paper's description with plain loops (float64)."""
    batch, _, height, width = logits.shape
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    total = 0.0
    for c in range(num_classes):
        target = (labels == c).astype(np.float64)
        boundary = 0
        for b in range(batch):
            for i in range(height):
                for j in range(width):
                    if target[b, i, j] != 1:
                        continue
                    cross = 1.0  # the pixel itself
                    for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                        if 0 <= i + di < height and 0 <= j + dj < width:  # zero padding outside
                            cross += target[b, i + di, j + dj]
                    if cross < 5:
                        boundary += 1
        size = target.sum()
        alpha = min(2 * (1 - (boundary + EPS) / (size + EPS)) - 1, 0.8)
        p = probs[:, c]
        z_sum, y_sum, intersect = (p * p).sum(), (target * target).sum(), (p * target).sum()
        total += (z_sum + y_sum - 2 * intersect + EPS) / (z_sum + y_sum - (1 + alpha) * intersect + EPS)
    return total / num_classes


def blocky_labels(rng: np.random.Generator, batch: int, height: int, width: int, num_classes: int) -> np.ndarray:
    """Label maps made of a few random rectangles, so that classes have interiors and boundaries."""
    labels = np.zeros((batch, height, width), dtype=np.int64)
    for b in range(batch):
        for c in range(1, num_classes):
            top, left = rng.integers(0, height - 2), rng.integers(0, width - 2)
            labels[b, top : top + rng.integers(2, height), left : left + rng.integers(2, width)] = c
    return labels


def perfect_logits(labels: torch.Tensor, num_classes: int, scale: float = 50.0) -> torch.Tensor:
    return scale * nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


# ----------------------------------------------------------------------------------------------
# Boundary DoU
# ----------------------------------------------------------------------------------------------


def test_boundary_dou_hand_example() -> None:
    # One 5x5 image, a 3x3 square of class 1, uniform logits (p = 0.5 everywhere).
    # Class 1: S = 9, C = 8 (all but the centre), alpha = 2(1 - 8/9) - 1 = -7/9;
    #   sum p^2 = 6.25, sum t^2 = 9, sum pt = 4.5 -> (6.25 + 9 - 9) / (6.25 + 9 - (2/9) 4.5) = 6.25 / 14.25.
    # Class 0: the 16-pixel ring, all boundary: alpha = -1, sum pt = 8 -> (6.25 + 16 - 16) / (6.25 + 16) = 6.25 / 22.25.
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    labels[0, 1:4, 1:4] = 1
    logits = torch.zeros(1, 2, 5, 5)
    alpha = boundary_alpha(labels.unsqueeze(1) == torch.arange(2).view(1, 2, 1, 1))
    assert alpha.tolist() == pytest.approx([-1.0, -7 / 9])
    expected = (6.25 / 22.25 + 6.25 / 14.25) / 2
    assert BoundaryDoULoss(2)(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_boundary_dou_matches_loop_reference_on_random_batches() -> None:
    rng = np.random.default_rng(0)
    for batch, height, width, num_classes in [(2, 9, 11, 4), (3, 7, 6, 3), (1, 12, 8, 5)]:
        labels = blocky_labels(rng, batch, height, width, num_classes)
        logits = rng.normal(scale=2.0, size=(batch, num_classes, height, width))
        ours = BoundaryDoULoss(num_classes)(torch.from_numpy(logits).float(), torch.from_numpy(labels))
        assert ours.item() == pytest.approx(reference_boundary_dou(logits, labels, num_classes), rel=1e-5)


def test_boundary_dou_alpha_is_clipped_at_0_8() -> None:
    # A 40x40 square: 156 of 1600 pixels on the boundary -> alpha = 2 (1 - 156/1600) - 1 = 0.805 -> 0.8.
    labels = np.zeros((1, 48, 48), dtype=np.int64)
    labels[0, 4:44, 4:44] = 1
    one_hot = torch.from_numpy(labels).unsqueeze(1) == torch.arange(2).view(1, 2, 1, 1)
    assert boundary_alpha(one_hot)[1].item() == pytest.approx(0.8)
    logits = np.random.default_rng(1).normal(size=(1, 2, 48, 48))
    ours = BoundaryDoULoss(2)(torch.from_numpy(logits), torch.from_numpy(labels))
    assert ours.dtype == torch.float64
    assert ours.item() == pytest.approx(reference_boundary_dou(logits, labels, 2), rel=1e-10)


def test_perfect_prediction_gives_near_zero_loss() -> None:
    labels = torch.from_numpy(blocky_labels(np.random.default_rng(2), 2, 16, 16, 4))
    assert set(labels.unique().tolist()) == {0, 1, 2, 3}
    perfect = perfect_logits(labels, 4)
    wrong = perfect_logits((labels + 1) % 4, 4)
    for loss in (BoundaryDoULoss(4), DiceLoss(4)):
        assert loss(perfect, labels).item() < 1e-4
        assert loss(wrong, labels).item() > 0.5


def test_class_absent_from_batch_contributes_one() -> None:
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :3] = 1  # class 2 absent
    assert BoundaryDoULoss(3)(perfect_logits(labels, 3), labels).item() == pytest.approx(1 / 3, abs=1e-4)


def test_gradient_flows_and_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    labels = torch.from_numpy(blocky_labels(rng, 2, 6, 7, 3))
    logits = torch.from_numpy(rng.normal(size=(2, 3, 6, 7))).requires_grad_(True)
    for loss in (BoundaryDoULoss(3), DiceLoss(3), CrossEntropyLoss(3), build_loss("ce_dice", 3)):
        value = loss(logits, labels)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert torch.autograd.gradcheck(lambda x, loss=loss: loss(x, labels), (logits,))


def test_bf16_autocast_on_cpu() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
    images = torch.randn(2, 3, 16, 16)
    labels = torch.from_numpy(blocky_labels(np.random.default_rng(4), 2, 16, 16, 4))
    for name in ("boundary_dou", "dice", "ce", "ce_dice"):
        loss_fn = build_loss(name, 4)
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = conv(images)
            loss = loss_fn(logits, labels)
        assert logits.dtype == torch.bfloat16
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert loss.item() == pytest.approx(loss_fn(logits.detach().float(), labels).item(), rel=1e-5)
        loss.backward()
        assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
        assert conv.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# Dice, CE, combinations
# ----------------------------------------------------------------------------------------------


def test_dice_loss_hand_example() -> None:
    # 2x2 image, one pixel of class 1, p = 0.5 everywhere: sum p^2 = 1 per class.
    # Class 0: sum pt = 1.5, sum t = 3 -> Dice (3 + s) / (4 + s); class 1: sum pt = 0.5, sum t = 1 -> (1 + s) / (2 + s).
    labels = torch.tensor([[[1, 0], [0, 0]]])
    logits = torch.zeros(1, 2, 2, 2)
    s = EPS
    dice0, dice1 = (3 + s) / (4 + s), (1 + s) / (2 + s)
    assert DiceLoss(2)(logits, labels).item() == pytest.approx(1 - (dice0 + dice1) / 2, rel=1e-6)
    assert DiceLoss(2, include_background=False)(logits, labels).item() == pytest.approx(1 - dice1, rel=1e-6)


def test_cross_entropy_matches_numpy() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 3, 4, 5))
    labels = rng.integers(0, 3, size=(2, 4, 5))
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.mean(np.take_along_axis(log_probs, labels[:, None], axis=1))
    ours = CrossEntropyLoss(3)(torch.from_numpy(logits), torch.from_numpy(labels))
    assert ours.item() == pytest.approx(expected, rel=1e-10)


def test_ce_dice_is_the_weighted_sum() -> None:
    rng = np.random.default_rng(6)
    logits = torch.from_numpy(rng.normal(size=(2, 3, 8, 8))).float()
    labels = torch.from_numpy(rng.integers(0, 3, size=(2, 8, 8)))
    ce, dice = CrossEntropyLoss(3)(logits, labels).item(), DiceLoss(3)(logits, labels).item()
    assert build_loss("ce_dice", 3)(logits, labels).item() == pytest.approx(0.4 * ce + 0.6 * dice, rel=1e-6)
    custom = build_loss("ce_dice", 3, weights={"ce": 1.0})
    assert custom(logits, labels).item() == pytest.approx(ce + 0.6 * dice, rel=1e-6)
    combined = CombinedLoss([(BoundaryDoULoss(3), 2.0)])
    assert combined(logits, labels).item() == pytest.approx(2 * BoundaryDoULoss(3)(logits, labels).item())


def test_build_loss_names_and_errors() -> None:
    expected = {"boundary_dou": BoundaryDoULoss, "ce": CrossEntropyLoss, "dice": DiceLoss, "ce_dice": CombinedLoss}
    for name, cls in expected.items():
        assert isinstance(build_loss(name, 9), cls)
    assert set(LOSS_NAMES) == set(expected)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("focal", 9)
    with pytest.raises(ValueError, match="unknown weight keys"):
        build_loss("ce_dice", 9, weights={"boundary": 1.0})
    with pytest.raises(ValueError, match="only apply to 'ce_dice'"):
        build_loss("dice", 9, weights={"dice": 1.0})
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("bce", 2)  # removed: binary tasks use two classes with "ce"
    with pytest.raises(ValueError, match="non-negative"):
        CombinedLoss([(DiceLoss(2), -1.0)])


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["boundary_dou", "ce", "dice", "ce_dice"])
def test_out_of_range_labels_are_named(name: str) -> None:
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, 0], labels[0, 1, 1], labels[0, 2, 2] = 9, 12, -1
    with pytest.raises(ValueError, match=r"label values \[-1, 9, 12\] found outside \[0, 9\)"):
        build_loss(name, 9)(torch.zeros(1, 9, 4, 4), labels)


@pytest.mark.parametrize("name", ["boundary_dou", "ce", "dice"])
def test_nan_logits_raise(name: str) -> None:
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 0, 1, 1] = math.nan
    with pytest.raises(ValueError, match="1 NaN"):
        build_loss(name, 3)(logits, torch.zeros(1, 4, 4, dtype=torch.long))


def test_label_layouts_and_shape_errors() -> None:
    rng = np.random.default_rng(8)
    logits = torch.from_numpy(rng.normal(size=(2, 3, 5, 5))).float()
    labels = torch.from_numpy(rng.integers(0, 3, size=(2, 5, 5)))
    loss = BoundaryDoULoss(3)
    reference = loss(logits, labels).item()
    assert loss(logits, labels.float()).item() == reference  # Synapse stores labels as float32
    assert loss(logits, labels.unsqueeze(1)).item() == reference
    with pytest.raises(ValueError, match="non-integer"):
        loss(logits, labels.float() + 0.5)
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        loss(logits[:, :2], labels)
    with pytest.raises(ValueError, match="labels of shape"):
        loss(logits, labels[:, :4])
