"""Accumulators: per-case metric rows with class means and failure counts, and pooled pixel counts (ISIC).

They gather the numbers of :mod:`msa2net.metrics` case by case (or batch by batch); the summaries of
:mod:`msa2net.reporting.summary` are built from them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .._atomic import write_text_atomic
from ..metrics import binary_confusion, isic_postprocess, pooled_binary_metrics

__all__ = ["MetricAggregator", "PooledBinaryMetrics", "mean_omit_nan"]

_RESERVED = ("case_id", "class_name")


def mean_omit_nan(values: Sequence[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none."""
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    return float(array.mean()) if array.size else float("nan")


class MetricAggregator:
    """Per-case, per-class metric rows with class means and NaN-as-failure counts (means omit NaN, counted)."""

    def __init__(self, class_names: Sequence[str] | None = None) -> None:
        self._classes: list[str] = [str(c) for c in class_names] if class_names is not None else []
        self._metrics: list[str] = []
        self._rows: list[dict[str, object]] = []
        self._case_ids: list[str] = []

    def add_case(self, case_id: str, per_class: Mapping[str, Mapping[str, float]]) -> None:
        """Add the ``{class_name: {metric: value}}`` of one case (None as NaN); a repeated case id is an error."""
        key = str(case_id)
        if key in self._case_ids:
            raise ValueError(f"case {key!r} was already added; case ids must be unique")
        new_rows = []
        for class_name, values in per_class.items():
            row: dict[str, object] = {"case_id": key, "class_name": str(class_name)}
            for metric, value in values.items():
                if metric in _RESERVED:
                    raise ValueError(f"{metric!r} is a reserved column name and cannot be a metric")
                row[str(metric)] = float("nan") if value is None else float(value)
            new_rows.append(row)
        self._case_ids.append(key)
        for row in new_rows:
            if row["class_name"] not in self._classes:
                self._classes.append(str(row["class_name"]))
            for metric in row:
                if metric not in _RESERVED and metric not in self._metrics:
                    self._metrics.append(metric)
            self._rows.append(row)

    def _values(self, class_name: str, metric: str) -> list[float]:
        return [
            float(row[metric])  # type: ignore[arg-type]
            for row in self._rows
            if row["class_name"] == class_name and metric in row
        ]

    def summary(self) -> dict[str, object]:
        """``{"n_cases", "classes", "metrics", "per_class", "mean", "cases"}``: class means omit NaN (counted in
        ``n_failed``), the mean over classes omits NaN class means; JSON-ready apart from NaN floats."""
        per_class: dict[str, dict[str, object]] = {}
        for name in self._classes:
            values = {metric: self._values(name, metric) for metric in self._metrics}
            per_class[name] = {
                "n_cases": len({row["case_id"] for row in self._rows if row["class_name"] == name}),
                "mean": {metric: mean_omit_nan(v) for metric, v in values.items()},
                "n_failed": {metric: int(np.count_nonzero(np.isnan(v))) for metric, v in values.items()},
            }
        overall = {
            metric: mean_omit_nan([per_class[name]["mean"][metric] for name in self._classes])  # type: ignore[index]
            for metric in self._metrics
        }
        return {
            "n_cases": len(self._case_ids),
            "classes": list(self._classes),
            "metrics": list(self._metrics),
            "per_class": per_class,
            "mean": overall,
            "cases": [dict(row) for row in self._rows],
        }

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the rows as CSV (``case_id,class_name,<metrics>``; NaN as ``nan``, a missing value empty) atomically;
        returns the path."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*_RESERVED, *self._metrics])
        for row in self._rows:
            cells = [repr(float(row[m])) if m in row else "" for m in self._metrics]  # type: ignore[arg-type]
            writer.writerow([row["case_id"], row["class_name"], *cells])
        return write_text_atomic(path, buffer.getvalue())


class PooledBinaryMetrics:
    """Streaming :func:`msa2net.metrics.pooled_binary_metrics`, optionally after ``isic_postprocess``."""

    def __init__(self, postprocess: bool = False, opening: int = 6) -> None:
        self.postprocess = bool(postprocess)
        self.opening = int(opening)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._counts = [0, 0, 0, 0]

    @property
    def confusion(self) -> tuple[int, int, int, int]:
        """Pooled ``(tp, fp, fn, tn)`` so far."""
        tp, fp, fn, tn = self._counts
        return tp, fp, fn, tn

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one mask (H, W) or a batch (N, H, W) of thresholded predictions and ground truths."""
        pred_mask = np.atleast_1d(np.asarray(pred)) != 0
        gt_mask = np.atleast_1d(np.asarray(gt)) != 0
        if pred_mask.shape != gt_mask.shape:
            raise ValueError(f"pred and gt must have the same shape, found {pred_mask.shape} and {gt_mask.shape}")
        if self.postprocess:
            if pred_mask.ndim == 2:
                pred_mask = isic_postprocess(pred_mask, self.opening)
            elif pred_mask.ndim == 3:
                pred_mask = np.stack([isic_postprocess(m, self.opening) for m in pred_mask])
            else:
                raise ValueError(f"post-processing needs (H, W) or (N, H, W) masks, found shape {pred_mask.shape}")
        for i, count in enumerate(binary_confusion(pred_mask, gt_mask)):
            self._counts[i] += count

    def compute(self) -> dict[str, float]:
        """Scores of everything added so far (see :func:`msa2net.metrics.pooled_binary_metrics`)."""
        return pooled_binary_metrics(self.confusion)
