"""Training losses: Boundary DoU (the one MSA2Net trains with), soft Dice, cross-entropy and weighted sums.

Losses take logits (B, K, H, W) and integer labels (B, H, W) or (B, 1, H, W), and compute in at least float32
whatever the autocast dtype (batch-wide sums are not meaningful in bfloat16/float16). Inputs are checked unless
``validate=False`` (each check costs a device synchronisation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSS_NAMES",
    "boundary_alpha",
    "BoundaryDoULoss",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "build_loss",
]

#: Names accepted by :func:`build_loss`.
LOSS_NAMES: tuple[str, ...] = ("boundary_dou", "ce", "dice", "ce_dice")

_EPS = 1e-5


def _check_logits(logits: torch.Tensor, channels: int) -> None:
    if logits.ndim != 4 or logits.shape[1] != channels:
        raise ValueError(f"expected logits of shape (B, {channels}, H, W), found {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating point tensor, found dtype {logits.dtype}")
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(logits).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise ValueError(
            f"logits contain {n_nan} NaN and {n_inf} infinite values: training has diverged or overflowed "
            "(lower the learning rate, check the input normalisation, or disable float16 autocast)"
        )


def _as_label_map(target: torch.Tensor, logits: torch.Tensor, num_classes: int, validate: bool) -> torch.Tensor:
    """Return ``target`` as int64 labels (B, H, W) matching ``logits`` (B, K, H, W)."""
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]  # (B, 1, H, W) -> (B, H, W)
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"expected integer labels of shape {expected} for these logits, found {tuple(target.shape)}")
    if validate and target.is_floating_point() and not bool(torch.equal(target, target.round())):
        raise ValueError("labels are floating point with non-integer values; pass integer class indices")
    target = target.long()  # the same tensor when already int64
    if validate and target.numel():
        low, high = (int(v) for v in torch.aminmax(target))
        if low < 0 or high >= num_classes:
            bad = torch.unique(target[(target < 0) | (target >= num_classes)]).tolist()
            raise ValueError(
                f"label values {bad} found outside [0, {num_classes}) for a {num_classes}-class loss: "
                "check num_classes or map the labels (e.g. 14-class BTCV labels must be mapped to 9 classes)"
            )
    return target


def _loss_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 logits, float64 stays float64."""
    return torch.promote_types(logits.dtype, torch.float32)


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) int64 -> (B, K, H, W) bool."""
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, 1, 1)
    return labels.unsqueeze(1) == classes


def boundary_alpha(one_hot: torch.Tensor) -> torch.Tensor:
    """The (K,) float64 adaptive weight of Boundary DoU from a (B, K, H, W) one-hot target over the whole batch.

    Boundary pixels have fewer than 5 target pixels in their zero-padded cross neighbourhood (the authors' conv2d
    with ``[[0, 1, 0], [1, 1, 1], [0, 1, 0]]``, here integer shifts, exact under autocast);
    ``alpha = min(2 * (1 - (C + eps) / (S + eps)) - 1, 0.8)``, -1 for a class absent from the batch.
    """
    target = one_hot.to(torch.int16)
    padded = F.pad(target, (1, 1, 1, 1))  # (B, K, H + 2, W + 2), zeros outside
    # (B, K, H, W): pixel + up + down + left + right
    cross_sum = target + padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]
    boundary = (target == 1) & (cross_sum < 5)
    count_c = boundary.sum(dim=(0, 2, 3)).double()
    count_s = target.sum(dim=(0, 2, 3)).double()
    alpha = 2.0 * (1.0 - (count_c + _EPS) / (count_s + _EPS)) - 1.0
    return alpha.clamp(max=0.8)


class _MulticlassLoss(nn.Module):
    """Shared checks of the multi-class losses: ``num_classes >= 2``, finite logits, labels in range."""

    def __init__(self, num_classes: int, validate: bool = True) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), found {num_classes}")
        self.num_classes = int(num_classes)
        self.validate = validate

    def _labels(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Validated (B, H, W) integer labels for ``logits`` (B, K, H, W)."""
        if self.validate:
            _check_logits(logits, self.num_classes)
        return _as_label_map(target, logits, self.num_classes, self.validate)

    def _batch_sums(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per class over the batch: the one-hot target, sum pt, sum p^2 and sum t (softmax p, at least float32)."""
        labels = self._labels(logits, target)
        probs = torch.softmax(logits.to(_loss_dtype(logits)), dim=1)  # (B, K, H, W)
        with torch.no_grad():
            one_hot = _one_hot(labels, self.num_classes)
            target_sum = one_hot.sum(dim=(0, 2, 3)).to(probs.dtype)  # sum t^2 == sum t for 0/1
        dims = (0, 2, 3)
        return one_hot, (probs * one_hot).sum(dim=dims), (probs * probs).sum(dim=dims), target_sum


class BoundaryDoULoss(_MulticlassLoss):
    """Boundary Difference over Union loss (Sun et al., MICCAI 2023), as trained by MSA2Net.

    Per class over the batch, ``(sum p^2 + sum t^2 - 2 sum pt + eps) / (sum p^2 + sum t^2 - (1 + alpha) sum pt +
    eps)`` with :func:`boundary_alpha`, averaged over all classes; an absent class contributes exactly 1, as in the
    authors' code.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        one_hot, intersect, probs_sq, target_sum = self._batch_sums(logits, target)
        alpha = boundary_alpha(one_hot).to(intersect.dtype)  # (K,), no gradient
        numerator = probs_sq + target_sum - 2.0 * intersect + _EPS
        denominator = probs_sq + target_sum - (1.0 + alpha) * intersect + _EPS
        return (numerator / denominator).mean()


class DiceLoss(_MulticlassLoss):
    """Soft Dice loss ``1 - mean_c (2 sum pt + smooth) / (sum p^2 + sum t^2 + smooth)`` per class over the batch.

    The squared-denominator form of V-Net and TransUNet; ``include_background=False`` averages classes 1..K-1.
    """

    def __init__(
        self, num_classes: int, include_background: bool = True, smooth: float = 1e-5, validate: bool = True
    ) -> None:
        super().__init__(num_classes, validate)
        self.include_background = include_background
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, intersect, probs_sq, target_sum = self._batch_sums(logits, target)
        dice = (2.0 * intersect + self.smooth) / (probs_sq + target_sum + self.smooth)  # (K,)
        if not self.include_background:
            dice = dice[1:]
        return 1.0 - dice.mean()


class CrossEntropyLoss(_MulticlassLoss):
    """Pixel-wise cross-entropy on logits (B, K, H, W) against integer labels (B, H, W), mean over pixels."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = self._labels(logits, target)
        return F.cross_entropy(logits.to(_loss_dtype(logits)), labels)


class CombinedLoss(nn.Module):
    """Weighted sum ``[(loss_module, weight), ...]`` of losses called as ``loss(logits, target)``."""

    def __init__(self, terms: Sequence[tuple[nn.Module, float]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CombinedLoss needs at least one (loss, weight) term")
        weights = [float(w) for _, w in terms]
        if any(not (w >= 0 and w < float("inf")) for w in weights):
            raise ValueError(f"loss weights must be finite and non-negative, found {weights}")
        self.losses = nn.ModuleList([loss for loss, _ in terms])
        self.weights = weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        values = [weight * loss(logits, target) for loss, weight in zip(self.losses, self.weights)]
        return torch.stack(values).sum()


def build_loss(name: str, num_classes: int, weights: Mapping[str, float] | None = None) -> nn.Module:
    """A training loss by name (:data:`LOSS_NAMES`); ``ce_dice`` weighs CE and Dice by ``weights`` (0.4 and 0.6,
    the authors' commented-out line). Binary tasks use two classes with ``"ce"`` (BCE on the logit difference)."""
    key = name.lower()
    if key not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSS_NAMES}")
    if weights and key != "ce_dice":
        raise ValueError(f"weights only apply to 'ce_dice', found {dict(weights)} for {name!r}")
    single = {"boundary_dou": BoundaryDoULoss, "ce": CrossEntropyLoss, "dice": DiceLoss}
    if key in single:
        return single[key](num_classes)
    chosen = {"ce": 0.4, "dice": 0.6}
    unknown = set(weights or {}) - set(chosen)
    if unknown:
        raise ValueError(f"unknown weight keys {sorted(unknown)} for 'ce_dice'; use 'ce' and 'dice'")
    chosen.update({k: float(v) for k, v in (weights or {}).items()})
    return CombinedLoss([(CrossEntropyLoss(num_classes), chosen["ce"]), (DiceLoss(num_classes), chosen["dice"])])
