"""Segmentation metrics: pure functions of numpy arrays.

Overlap (:func:`dice`), surface distances (:func:`hd95`, :func:`surface_dice`), the legacy (paper) protocol
(:func:`legacy_case_metrics`, :func:`legacy_case_scores`) and the pooled pixel scores of the ISIC protocol
(:func:`binary_confusion`, :func:`pooled_binary_metrics`, :func:`isic_postprocess`). Nothing here writes files,
formats tables or accumulates state: aggregation over cases and every report live in :mod:`msa2net.report`.

Conventions shared by all functions:

* Masks are arrays of any dimension; anything non-zero counts as foreground. Label maps are
  integer arrays where class ``c`` is ``labels == c``.
* ``spacing`` is the physical size of a voxel along each array axis, in millimetres, in the array's
  axis order (for a Synapse test volume of shape (D, H, W) that is (slice spacing, row, column)).
  ``None`` means unit spacing, so distances are in voxels: this is what the legacy protocol uses.
* The surface of a mask is the mask minus its binary erosion by the connectivity-1 structuring
  element (6-neighbourhood in 3D, 4-neighbourhood in 2D), with everything outside the array counted
  as background, so a mask touching the array border has a surface there.
* NaN means "undefined for this case" (for instance a distance to an empty mask under the ``"nan"``
  policy); :class:`msa2net.report.MetricAggregator` counts NaN values as failures instead of averaging
  them away silently.

The Dice and HD95 definitions reproduce the legacy evaluation of the MSA2Net / TransUNet code (which
calls MedPy) to within floating point; MedPy is only used as an oracle in the tests, never here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "EmptyPolicy",
    "binary_confusion",
    "diagonal_mm",
    "dice",
    "hd95",
    "isic_postprocess",
    "legacy_case_metrics",
    "legacy_case_scores",
    "pooled_binary_metrics",
    "surface_dice",
]

#: An empty-mask policy of :func:`hd95`: ``"legacy"``, ``"nan"``, ``"diagonal"`` or a non-negative distance.
EmptyPolicy = str | float

_EMPTY_POLICIES = ("legacy", "nan", "diagonal")


# ----------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------


def _as_mask(mask: np.ndarray) -> np.ndarray:
    """Return ``mask`` as a boolean array with at least one dimension."""
    array = np.atleast_1d(np.asarray(mask))
    if array.dtype != np.bool_:
        array = array != 0
    return array


def _mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred_mask = _as_mask(pred)
    gt_mask = _as_mask(gt)
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(
            f"pred and gt must have the same shape, found {pred_mask.shape} and {gt_mask.shape}; "
            "resample the prediction to the ground-truth grid first"
        )
    return pred_mask, gt_mask


def _normalize_spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """Validate ``spacing`` and return one positive float per axis (``None`` stays ``None``)."""
    if spacing is None:
        return None
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if values.ndim != 1:
        raise ValueError(f"spacing must be a number or a sequence of {ndim} numbers, found {spacing!r}")
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.size != ndim:
        raise ValueError(f"spacing has {values.size} values but the masks have {ndim} axes: give one value per axis")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing values must be finite and positive (mm per voxel), found {tuple(values.tolist())}")
    return tuple(float(v) for v in values)


def _check_empty_policy(empty: EmptyPolicy) -> None:
    if isinstance(empty, str):
        if empty not in _EMPTY_POLICIES:
            raise ValueError(f"empty must be one of {_EMPTY_POLICIES} or a non-negative number, found {empty!r}")
        return
    if isinstance(empty, bool) or not isinstance(empty, (int, float, np.integer, np.floating)):
        raise ValueError(f"empty must be one of {_EMPTY_POLICIES} or a non-negative number, found {empty!r}")
    if math.isnan(float(empty)) or float(empty) < 0:
        raise ValueError(f"an empty-mask penalty must be a non-negative number (e.g. the diagonal), found {empty!r}")


def _empty_value(empty: EmptyPolicy, shape: tuple[int, ...], spacing: tuple[float, ...] | None) -> float:
    """The distance reported when a mask is empty, under an already validated policy."""
    if empty == "legacy":
        return 0.0
    if empty == "nan":
        return float("nan")
    if empty == "diagonal":
        return diagonal_mm(shape, spacing)
    return float(empty)


def diagonal_mm(shape: Sequence[int], spacing: float | Sequence[float] | None = None) -> float:
    """Length of the diagonal of the image's field of view.

    Useful as a penalty distance for an empty mask: it is larger than any distance between two
    voxels of the image.

    Args:
        shape: Array shape, one entry per axis.
        spacing: Voxel size per axis in mm (a single number applies to every axis); ``None`` means
            1 per axis, so the result is in voxels.

    Returns:
        ``sqrt(sum((shape[i] * spacing[i]) ** 2))`` in mm (voxels when ``spacing`` is ``None``).
    """
    dims = tuple(int(n) for n in shape)
    if any(n < 0 for n in dims):
        raise ValueError(f"shape must have non-negative entries, found {dims}")
    sizes = _normalize_spacing(spacing, len(dims)) or (1.0,) * len(dims)
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(dims, sizes))))


# ----------------------------------------------------------------------------------------------
# Cropping and surfaces
# ----------------------------------------------------------------------------------------------


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the foreground as slices, or ``None`` when the mask is empty (one pass in C)."""
    if mask.size == 0:
        return None
    boxes = ndimage.find_objects(mask.view(np.uint8))
    return boxes[0] if boxes else None


def _joint_crop(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their joint bounding box padded by one voxel (clipped at the array border).

    Every foreground voxel of both masks lies in the crop, so counts, surfaces and surface distances
    computed on the crop equal those of the full arrays: the one-voxel pad keeps the erosion from
    seeing an artificial border, except where the crop edge is the array edge, where the full arrays
    see the same border; and the nearest surface voxel of the other mask is inside the crop. Two
    empty masks give two arrays of the original number of axes with no voxels.
    """
    boxes = [box for box in (_bounding_box(pred), _bounding_box(gt)) if box is not None]
    if not boxes:
        empty = (slice(0, 0),) * pred.ndim
        return pred[empty], gt[empty]
    window = tuple(
        slice(max(min(box[axis].start for box in boxes) - 1, 0), min(max(box[axis].stop for box in boxes) + 1, size))
        for axis, size in enumerate(pred.shape)
    )
    return pred[window], gt[window]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one background neighbour (connectivity 1; outside = background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1, border_value=0)


def _distances_between(
    surface_a: np.ndarray, surface_b: np.ndarray, spacing: tuple[float, ...] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface voxel of A to the nearest of B, and from B to A (flat float64)."""
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    return to_b, to_a


def _percentile95(a_to_b: np.ndarray, b_to_a: np.ndarray) -> float:
    # Pooled over both directions, numpy's default (linear) interpolation: the legacy definition.
    return float(np.percentile(np.concatenate((a_to_b, b_to_a)), 95))


def _nsd(a_to_b: np.ndarray, b_to_a: np.ndarray, tolerance: float) -> float:
    within = np.count_nonzero(a_to_b <= tolerance) + np.count_nonzero(b_to_a <= tolerance)
    return float(within / (a_to_b.size + b_to_a.size))


def _check_tolerance(tolerance_mm: float) -> float:
    value = float(tolerance_mm)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"tolerance_mm must be a finite non-negative distance, found {tolerance_mm!r}")
    return value


# ----------------------------------------------------------------------------------------------
# Per-mask metrics
# ----------------------------------------------------------------------------------------------


def _dice_counts(pred: np.ndarray, gt: np.ndarray) -> float:
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    if total == 0:
        return 0.0
    return float(2.0 * np.count_nonzero(pred & gt) / total)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice similarity coefficient ``2|P & G| / (|P| + |G|)`` of two masks.

    Args:
        pred: Predicted mask, any shape; non-zero is foreground.
        gt: Ground-truth mask of the same shape.

    Returns:
        Dice in [0, 1]. When both masks are empty the ratio is undefined and 0.0 is returned, the
        value MedPy's ``dc`` was written to give (with numpy >= 2 MedPy 0.5 returns NaN with a
        warning instead). The legacy protocol never reaches this case (see
        :func:`legacy_case_metrics`).
    """
    pred_mask, gt_mask = _mask_pair(pred, gt)
    return _dice_counts(pred_mask, gt_mask)


def hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    empty: EmptyPolicy = "legacy",
) -> float:
    """95th percentile Hausdorff distance between the surfaces of two masks.

    Surface distances are measured in both directions (each surface voxel of ``pred`` to the nearest
    surface voxel of ``gt`` and vice versa), pooled, and the 95th percentile taken with linear
    interpolation. With both masks non-empty this equals MedPy's ``hd95(pred, gt, voxelspacing=spacing)``.
    Only the joint bounding box of the two masks is processed, which makes this much faster than
    MedPy on large volumes with small structures, with identical results.

    Args:
        pred: Predicted mask, any number of dimensions; non-zero is foreground.
        gt: Ground-truth mask of the same shape.
        spacing: Voxel size per axis in mm (a single number applies to every axis). ``None`` means
            unit spacing: the result is then in voxels, as in the legacy protocol.
        empty: What to return when either mask is empty (no surface to measure): ``"legacy"`` gives
            0.0 (the legacy protocol, which rewards a miss), ``"nan"`` gives NaN (count it as a
            failure), ``"diagonal"`` gives :func:`diagonal_mm` of the image, and a non-negative number
            is returned as is (a fixed penalty, in the same unit as the result).

    Returns:
        HD95 in mm, or in voxels when ``spacing`` is ``None``.
    """
    pred_mask, gt_mask = _mask_pair(pred, gt)
    sizes = _normalize_spacing(spacing, pred_mask.ndim)
    _check_empty_policy(empty)
    pred_crop, gt_crop = _joint_crop(pred_mask, gt_mask)
    if not pred_crop.any() or not gt_crop.any():
        return _empty_value(empty, pred_mask.shape, sizes)
    return _percentile95(*_distances_between(_surface(pred_crop), _surface(gt_crop), sizes))


def surface_dice(
    pred: np.ndarray,
    gt: np.ndarray,
    tolerance_mm: float,
    spacing: float | Sequence[float] | None = None,
) -> float:
    """Normalised surface Dice (NSD): share of surface voxels within a tolerance of the other surface.

    ``(#{a in S_pred: d(a, S_gt) <= tol} + #{b in S_gt: d(b, S_pred) <= tol}) / (|S_pred| + |S_gt|)``
    over the same voxel surfaces as :func:`hd95`. This is the voxel-surface approximation: each
    surface voxel counts as one unit of area. DeepMind's ``surface-distance`` package instead weights
    surface elements of a marching-cubes mesh by their area, so values differ slightly, mostly on
    anisotropic grids.

    Args:
        pred: Predicted mask, any number of dimensions; non-zero is foreground.
        gt: Ground-truth mask of the same shape.
        tolerance_mm: Distance under which a surface voxel counts as matched (inclusive), in mm
            (in voxels when ``spacing`` is ``None``).
        spacing: Voxel size per axis in mm; ``None`` means unit spacing.

    Returns:
        NSD in [0, 1]; NaN when both masks are empty (nothing to compare), 0.0 when exactly one is.
    """
    pred_mask, gt_mask = _mask_pair(pred, gt)
    sizes = _normalize_spacing(spacing, pred_mask.ndim)
    tolerance = _check_tolerance(tolerance_mm)
    pred_crop, gt_crop = _joint_crop(pred_mask, gt_mask)
    pred_empty, gt_empty = not pred_crop.any(), not gt_crop.any()
    if pred_empty and gt_empty:
        return float("nan")
    if pred_empty or gt_empty:
        return 0.0
    return _nsd(*_distances_between(_surface(pred_crop), _surface(gt_crop), sizes), tolerance)


def legacy_case_metrics(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Dice and HD95 of one class of one case under the legacy (paper) protocol.

    Rules of the MSA2Net / TransUNet evaluation code:

    * both masks non-empty: (Dice, HD95 in voxels, unit spacing);
    * prediction non-empty, ground truth empty: (1.0, 0.0);
    * prediction empty, whatever the ground truth: (0.0, 0.0). A missed organ thus gets HD95 0,
      which flatters the mean HD95; use :func:`hd95` with a spacing and an empty policy for an
      honest figure.

    Args:
        pred: Predicted mask of one class; non-zero is foreground.
        gt: Ground-truth mask of the same shape.

    Returns:
        ``(dice, hd95_voxels)``.
    """
    pred_mask, gt_mask = _mask_pair(pred, gt)
    pred_crop, gt_crop = _joint_crop(pred_mask, gt_mask)
    return _legacy_from_crop(pred_crop, gt_crop)


def _legacy_from_crop(pred_crop: np.ndarray, gt_crop: np.ndarray) -> tuple[float, float]:
    pred_any, gt_any = bool(pred_crop.any()), bool(gt_crop.any())
    if not pred_any:
        return 0.0, 0.0
    if not gt_any:
        return 1.0, 0.0
    distances = _distances_between(_surface(pred_crop), _surface(gt_crop), None)
    return _dice_counts(pred_crop, gt_crop), _percentile95(*distances)


def _check_labels(labels: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)):
        if np.issubdtype(array.dtype, np.floating) and np.array_equal(array, np.round(array)):
            array = array.astype(np.int64)
        else:
            raise ValueError(
                f"{name} must hold integer class labels, found dtype {array.dtype} with non-integer values"
            )
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= num_classes:
            bad = np.unique(array[(array < 0) | (array >= num_classes)])
            raise ValueError(
                f"{name} holds label values {sorted(int(v) for v in bad)} outside [0, {num_classes}): "
                "check num_classes and the label mapping (e.g. 14-class BTCV labels must be mapped to 9 classes)"
            )
    return array


def legacy_case_scores(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    empty: EmptyPolicy = "nan",
    nsd_tolerance_mm: float | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-class scores of one case: the legacy (paper) figures and the millimetre figures side by side.

    **Keys ``dice`` and ``hd95`` follow the legacy empty-mask rule** of :func:`legacy_case_metrics`, not
    :func:`dice` / :func:`hd95`: a missed organ scores (0.0, 0.0), a hallucinated one (1.0, 0.0), an organ absent
    from both masks (0.0, 0.0), and ``hd95`` is in voxels (unit spacing). Keys ``hd95_mm`` and ``nsd`` follow
    ``spacing`` and the ``empty`` policy instead (NaN for an empty mask under ``"nan"``).

    Each class is cropped once to its joint bounding box and its surfaces computed once, so the
    legacy figures and the millimetre figures cost little more than one of them.

    Args:
        pred_labels: Predicted integer label map, any number of dimensions (e.g. (D, H, W)).
        gt_labels: Ground-truth label map of the same shape. Integral float labels are accepted.
        num_classes: Number of classes including background 0; classes 1..num_classes-1 are scored.
        spacing: Voxel size per axis in mm for ``hd95_mm`` and ``nsd`` (``None``: unit spacing, so
            those are in voxels).
        empty: Empty-mask policy of ``hd95_mm`` (see :func:`hd95`); the legacy ``hd95`` always
            follows the legacy rule.
        nsd_tolerance_mm: If given, also report ``nsd`` (:func:`surface_dice`) at this tolerance.
        class_names: Names of classes 1..num_classes-1, used as keys; default ``"class_1"``, ...

    Returns:
        ``{class_name: {"dice", "hd95", "hd95_mm", ["nsd"], "pred_empty", "gt_empty"}}``: ``dice`` and
        ``hd95`` are the legacy figures (see above), ``hd95_mm`` uses ``spacing`` and ``empty``, ``nsd`` is
        NaN when both masks are empty and 0.0 when one is, and the flags are 1.0 when that mask is empty,
        else 0.0.

    Raises:
        ValueError: labels outside ``[0, num_classes)`` or non-integral, shapes that differ, a wrong number
            of class names, a bad spacing, policy or tolerance.
    """
    if int(num_classes) < 2:
        raise ValueError(f"num_classes counts background too and must be >= 2, found {num_classes}")
    num_classes = int(num_classes)
    pred_array = _check_labels(pred_labels, num_classes, "pred_labels")
    gt_array = _check_labels(gt_labels, num_classes, "gt_labels")
    if pred_array.shape != gt_array.shape:
        raise ValueError(
            f"pred_labels and gt_labels must have the same shape, found {pred_array.shape} and {gt_array.shape}"
        )
    if class_names is None:
        names = [f"class_{c}" for c in range(1, num_classes)]
    else:
        names = [str(n) for n in class_names]
        if len(names) != num_classes - 1:
            raise ValueError(
                f"class_names must name the {num_classes - 1} foreground classes, found {len(names)} names"
            )
    ndim = max(pred_array.ndim, 1)
    sizes = _normalize_spacing(spacing, ndim)
    _check_empty_policy(empty)
    tolerance = None if nsd_tolerance_mm is None else _check_tolerance(nsd_tolerance_mm)
    unit = sizes is None or all(s == 1.0 for s in sizes)

    results: dict[str, dict[str, float]] = {}
    for label, name in zip(range(1, num_classes), names):
        pred_crop, gt_crop = _joint_crop(np.atleast_1d(pred_array == label), np.atleast_1d(gt_array == label))
        pred_empty, gt_empty = not pred_crop.any(), not gt_crop.any()
        row: dict[str, float] = {}
        if pred_empty or gt_empty:
            row["dice"], row["hd95"] = _legacy_from_crop(pred_crop, gt_crop)
            row["hd95_mm"] = _empty_value(empty, pred_array.shape, sizes)
            if tolerance is not None:
                row["nsd"] = float("nan") if (pred_empty and gt_empty) else 0.0
        else:
            surfaces = (_surface(pred_crop), _surface(gt_crop))
            voxel_distances = _distances_between(*surfaces, None)
            distances = voxel_distances if unit else _distances_between(*surfaces, sizes)
            row["dice"] = _dice_counts(pred_crop, gt_crop)
            row["hd95"] = _percentile95(*voxel_distances)
            row["hd95_mm"] = _percentile95(*distances)
            if tolerance is not None:
                row["nsd"] = _nsd(*distances, tolerance)
        row["pred_empty"] = float(pred_empty)
        row["gt_empty"] = float(gt_empty)
        results[name] = row
    return results


# ----------------------------------------------------------------------------------------------
# ISIC: pooled binary metrics
# ----------------------------------------------------------------------------------------------


def binary_confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel counts of a binary prediction against the ground truth.

    Args:
        pred: Binary prediction (already thresholded), any shape; non-zero is foreground.
        gt: Binary ground truth of the same shape.

    Returns:
        ``(tp, fp, fn, tn)`` as Python ints.
    """
    pred_mask, gt_mask = _mask_pair(pred, gt)
    tp = int(np.count_nonzero(pred_mask & gt_mask))
    pred_total = int(np.count_nonzero(pred_mask))
    gt_total = int(np.count_nonzero(gt_mask))
    fp = pred_total - tp
    fn = gt_total - tp
    tn = int(pred_mask.size) - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def pooled_binary_metrics(confusion: Sequence[int]) -> dict[str, float]:
    """Scores from pixel counts pooled over a whole test set (the ISIC protocol).

    Args:
        confusion: ``(tp, fp, fn, tn)`` as returned by :func:`binary_confusion`, summed over images.

    Returns:
        ``dsc`` (F1, ``2tp / (2tp + fp + fn)``), ``iou`` (``tp / (tp + fp + fn)``), ``sensitivity``
        (``tp / (tp + fn)``), ``specificity`` (``tn / (tn + fp)``) and ``accuracy``; each is NaN when
        its denominator is zero.
    """
    counts = tuple(int(v) for v in confusion)
    if len(counts) != 4 or any(v < 0 for v in counts):
        raise ValueError(f"confusion must be four non-negative counts (tp, fp, fn, tn), found {tuple(confusion)}")
    tp, fp, fn, tn = counts
    return {
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def isic_postprocess(mask: np.ndarray, opening: int = 6) -> np.ndarray:
    """Post-processing of the D-LKA / DAE-Former skin-lesion code: binary opening, then hole filling.

    Args:
        mask: Binary 2D mask (H, W); non-zero is foreground.
        opening: Side of the square structuring element of the opening (6 in that code); 0 skips
            the opening.

    Returns:
        Boolean mask (H, W): specks smaller than the square removed, enclosed holes filled.
    """
    array = _as_mask(mask)
    if array.ndim != 2:
        raise ValueError(f"isic_postprocess expects one 2D mask (H, W), found shape {array.shape}")
    if int(opening) < 0:
        raise ValueError(f"opening must be a non-negative size in pixels, found {opening}")
    if opening:
        array = ndimage.binary_opening(array, structure=np.ones((int(opening), int(opening)), dtype=bool))
    return ndimage.binary_fill_holes(array)
