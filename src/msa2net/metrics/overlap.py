"""Per-mask metrics (Dice, HD95, NSD), the legacy (paper) protocol per case, and label agreement."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from ._distances import _check_tolerance, _Sampling, _surface_figures
from ._masks import (
    EmptyPolicy,
    _check_empty_policy,
    _empty_value,
    _joint_crop,
    _joint_window,
    _mask_pair,
    _normalize_spacing,
)

#: Most threads :func:`legacy_case_scores` scores classes in (fewer on machines with fewer usable cores).
MAX_THREADS = 4

# ----------------------------------------------------------------------------------------------
# Per-mask metrics
# ----------------------------------------------------------------------------------------------


def _dice_counts(pred: np.ndarray, gt: np.ndarray) -> float:
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    if total == 0:
        return 0.0
    return float(2.0 * np.count_nonzero(pred & gt) / total)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice similarity coefficient ``2|P & G| / (|P| + |G|)`` of two masks (non-zero is foreground).

    Both empty gives 0.0, the value MedPy's ``dc`` was written to give (with numpy >= 2 MedPy 0.5 returns NaN with a
    warning instead).
    """
    return _dice_counts(*_mask_pair(pred, gt))


def hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    empty: EmptyPolicy = "legacy",
) -> float:
    """95th percentile Hausdorff distance between the surfaces of two masks, in mm (voxels without ``spacing``).

    Equals MedPy's ``hd95(pred, gt, voxelspacing=spacing)`` when both masks are non-empty, computed only where it can
    decide the percentile (see ``_Plan``). ``empty`` (either mask empty): ``"legacy"`` 0.0, ``"nan"``, ``"diagonal"``
    (:func:`diagonal_mm`) or a fixed non-negative penalty.
    """
    pred_mask, gt_mask = _mask_pair(pred, gt)
    sizes = _normalize_spacing(spacing, pred_mask.ndim)
    _check_empty_policy(empty)
    pred_crop, gt_crop = _joint_crop(pred_mask, gt_mask)
    if not pred_crop.any() or not gt_crop.any():
        return _empty_value(empty, pred_mask.shape, sizes)
    return _surface_figures(pred_crop, gt_crop, {sizes: (True, None)})[sizes][0]


def surface_dice(
    pred: np.ndarray,
    gt: np.ndarray,
    tolerance_mm: float,
    spacing: float | Sequence[float] | None = None,
) -> float:
    """Normalised surface Dice: share of the surface voxels of :func:`hd95` within ``tolerance_mm`` of the other.

    Each surface voxel counts as one unit of area (DeepMind's ``surface-distance`` weights mesh elements, so values
    differ slightly). NaN when both masks are empty, 0.0 when one is.
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
    return _surface_figures(pred_crop, gt_crop, {sizes: (False, tolerance)})[sizes][1]


def legacy_case_metrics(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """``(dice, hd95 in voxels)`` of one class under the legacy (MSA2Net / TransUNet) protocol.

    An empty prediction scores (0.0, 0.0), which flatters the mean HD95 of missed organs; a prediction where the
    ground truth is empty scores (1.0, 0.0).
    """
    pred_mask, gt_mask = _mask_pair(pred, gt)
    pred_crop, gt_crop = _joint_crop(pred_mask, gt_mask)
    if not pred_crop.any() or not gt_crop.any():
        return _legacy_dice(pred_crop, gt_crop), 0.0
    return _dice_counts(pred_crop, gt_crop), _surface_figures(pred_crop, gt_crop, {None: (True, None)})[None][0]


def _legacy_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice under the legacy empty-mask rule (:func:`legacy_case_metrics`): 0 for an empty prediction, 1 for a
    prediction where the ground truth is empty."""
    if not pred.any():
        return 0.0
    if not gt.any():
        return 1.0
    return _dice_counts(pred, gt)


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
    """Per-class ``{"dice", "hd95", "hd95_mm", ["nsd"], "pred_empty", "gt_empty"}`` of one case.

    ``dice`` and ``hd95`` (voxels) follow the legacy rule of :func:`legacy_case_metrics`; ``hd95_mm`` and ``nsd``
    follow ``spacing`` and the ``empty`` policy. Each class is cropped once and its surfaces computed once; classes
    are scored in threads (usable cores, at most :data:`MAX_THREADS`) with results independent of their number.
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
    names = _class_names(class_names, num_classes)
    sizes = _normalize_spacing(spacing, max(pred_array.ndim, 1))
    _check_empty_policy(empty)
    tolerance = None if nsd_tolerance_mm is None else _check_tolerance(nsd_tolerance_mm)
    unit = sizes is None or all(s == 1.0 for s in sizes)

    key = None if unit else sizes
    requests: dict[_Sampling, tuple[bool, float | None]] = {None: (True, tolerance if unit else None)}
    if not unit:
        requests[key] = (True, tolerance)

    pred_array, gt_array = np.atleast_1d(pred_array), np.atleast_1d(gt_array)
    # the boxes of every class in one pass per label map; each class is then compared within its crop only
    pred_boxes = _label_boxes(pred_array, num_classes)
    gt_boxes = _label_boxes(gt_array, num_classes)

    def score(label: int) -> dict[str, float]:
        window = _joint_window((pred_boxes[label - 1], gt_boxes[label - 1]), pred_array.shape)
        pred_crop, gt_crop = pred_array[window] == label, gt_array[window] == label
        pred_empty, gt_empty = not pred_crop.any(), not gt_crop.any()
        row: dict[str, float] = {}
        if pred_empty or gt_empty:
            row["dice"] = _legacy_dice(pred_crop, gt_crop)
            row["hd95"] = 0.0
            row["hd95_mm"] = _empty_value(empty, pred_array.shape, sizes)
            if tolerance is not None:
                row["nsd"] = float("nan") if (pred_empty and gt_empty) else 0.0
        else:
            crop_boxes = tuple(_shift_box(box[label - 1], window) for box in (pred_boxes, gt_boxes))
            figures = _surface_figures(pred_crop, gt_crop, requests, boxes=crop_boxes)
            row["dice"] = _dice_counts(pred_crop, gt_crop)
            row["hd95"] = figures[None][0]
            row["hd95_mm"], nsd = figures[key]
            if tolerance is not None:
                row["nsd"] = nsd
        row["pred_empty"] = float(pred_empty)
        row["gt_empty"] = float(gt_empty)
        return row

    labels = range(1, num_classes)
    threads = _thread_count(len(labels))
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="msa2net-metrics") as pool:
            rows = list(pool.map(score, labels))
    else:
        rows = [score(label) for label in labels]
    return dict(zip(names, rows))


def _shift_box(box: tuple[slice, ...] | None, window: tuple[slice, ...]) -> tuple[slice, ...] | None:
    """``box`` in the coordinates of the crop ``window`` (which contains it)."""
    if box is None:
        return None
    return tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, window))


def _label_boxes(labels: np.ndarray, num_classes: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of each class 1..num_classes-1 (``None`` when absent), in one pass over ``labels``."""
    if labels.size == 0:
        return [None] * (num_classes - 1)
    array = labels.view(np.uint8) if labels.dtype == np.bool_ else labels
    boxes = ndimage.find_objects(array, max_label=num_classes - 1)
    return list(boxes) + [None] * (num_classes - 1 - len(boxes))


def _thread_count(tasks: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS, tasks))


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    names = [f"class_{c}" for c in range(1, num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes - 1:
        raise ValueError(f"class_names must name the {num_classes - 1} foreground classes, found {len(names)} names")
    return names


def label_agreement(
    labels: np.ndarray,
    reference: np.ndarray,
    num_classes: int,
    gt_labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, object]:
    """How far a label map is from a reference prediction of the same input (e.g. bfloat16 against float32).

    Returns ``{"identical_fraction", "n_voxels", "n_different", "per_class": {name: {"agreement_dice"
    (NaN when both masks are empty), ["dice_change" of the legacy Dice against gt_labels]}}}``.
    """
    num_classes = int(num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes counts background too and must be >= 2, found {num_classes}")
    a = _check_labels(labels, num_classes, "labels")
    b = _check_labels(reference, num_classes, "reference")
    g = None if gt_labels is None else _check_labels(gt_labels, num_classes, "gt_labels")
    if a.shape != b.shape or (g is not None and g.shape != a.shape):
        shapes = [a.shape, b.shape] + ([] if g is None else [g.shape])
        raise ValueError(f"labels, reference and gt_labels must have the same shape, found {shapes}")
    names = _class_names(class_names, num_classes)
    different = int(np.count_nonzero(a != b))
    per_class: dict[str, dict[str, float]] = {}
    for label, name in enumerate(names, start=1):
        mine, theirs = a == label, b == label
        row = {"agreement_dice": _dice_counts(mine, theirs) if (mine.any() or theirs.any()) else float("nan")}
        if g is not None:
            truth = g == label
            row["dice_change"] = _legacy_dice(mine, truth) - _legacy_dice(theirs, truth)
        per_class[name] = row
    return {
        "identical_fraction": float(1.0 - different / a.size) if a.size else 1.0,
        "n_voxels": int(a.size),
        "n_different": different,
        "per_class": per_class,
    }
