"""Reporting: every table, JSON/CSV file, overlay image, curve and markdown report the product writes.

:mod:`msa2net.metrics` computes numbers (pure functions); this module gathers them over cases and images and writes
them out. Every figure a report shows is read from one summary dict, the one written to ``summary.json``, so the
tables, the printed output and the JSON cannot disagree.

Contents:

- per-case aggregation (:class:`MetricAggregator`) and pooled ISIC counts (:class:`PooledBinaryMetrics`);
- strict JSON (:func:`json_safe`, :func:`write_json`);
- evaluation reports: :func:`build_evaluation_summary`, :func:`evaluation_tables` (the cells table.md and
  report.html print), :func:`format_evaluation_tables`,
  :func:`write_evaluation_report` (per-case scores), :func:`build_isic_summary` (pooled scores, ISIC 2018),
  and the paper's table layout (:func:`format_paper_table`);
- overlays (:func:`overlay_rgb`, :func:`write_overlay_png`: titled panels and a legend of the class names),
  training curves (:func:`plot_curves`), ``metrics.csv`` (:func:`write_metrics_csv`, :func:`read_metrics_csv`),
  the demo's ``report.md`` (:func:`write_demo_report`);
- the self-contained ``report.html`` lives in its own part, :mod:`msa2net.report_html` (a page template and the
  slice encoder), which prints the tables of :func:`evaluation_tables` and the colours of :data:`OVERLAY_COLORS`.
- model cards of published models (:func:`build_model_card`, :func:`write_model_card`), from a pretrained folder's
  ``config.json`` alone (its ``evaluation`` is a ``summary.json`` written here).

Every writer here is atomic (temporary file in the target folder, renamed into place).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_path, write_text_atomic
from .data.synapse import CLASS_NAMES as SYNAPSE_CLASS_NAMES
from .metrics import binary_confusion, isic_postprocess, pooled_binary_metrics

__all__ = [
    "MISSING",
    "OVERLAY_COLORS",
    "OVERLAY_PAD",
    "SYNAPSE_COLUMNS",
    "MetricAggregator",
    "PooledBinaryMetrics",
    "build_evaluation_summary",
    "build_isic_summary",
    "evaluation_tables",
    "format_evaluation_tables",
    "format_paper_table",
    "MSA2NET_BIBTEX",
    "build_model_card",
    "json_safe",
    "overlay_rgb",
    "plot_curves",
    "read_metrics_csv",
    "write_demo_report",
    "write_evaluation_report",
    "write_json",
    "write_metrics_csv",
    "write_model_card",
    "write_overlay_png",
]

#: Column headers of the paper's Synapse table for classes 1..8 of :data:`msa2net.data.synapse.CLASS_NAMES`.
SYNAPSE_COLUMNS: tuple[str, ...] = ("Spl", "RKid", "LKid", "Gal", "Liv", "Sto", "Aor", "Pan")

#: Overlay colours (RGB uint8) for label ids 0..15; id 0 (background) is never drawn.
OVERLAY_COLORS: np.ndarray = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
    ],
    dtype=np.uint8,
)

#: Text shown in a table cell for a figure that is undefined (NaN in memory, ``null`` in JSON).
MISSING = "n/a"

_RESERVED = ("case_id", "class_name")


# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------


def json_safe(value: object) -> object:
    """``value`` with NaN/inf floats replaced by ``None`` (JSON null), recursively, so it dumps as strict JSON.

    NumPy scalars become Python numbers, tuples become lists and mapping keys become strings.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], data: object) -> Path:
    """Write ``json_safe(data)`` as indented strict JSON (NaN as ``null``) atomically; returns the path."""
    return write_text_atomic(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------------
# Accumulators
# ----------------------------------------------------------------------------------------------


def _mean_omit_nan(values: Sequence[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none."""
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    return float(array.mean()) if array.size else float("nan")


class MetricAggregator:
    """Per-case, per-class metric rows with class means and NaN-as-failure counts.

    A row is ``(case_id, class_name, metric values...)``. NaN marks a metric that could not be
    computed for that case (for instance HD95 with an empty mask under the ``"nan"`` policy); means
    omit NaN and :meth:`summary` reports how many were omitted as ``n_failed``.

    Args:
        class_names: Optional class order for reports; classes seen later are appended.
    """

    def __init__(self, class_names: Sequence[str] | None = None) -> None:
        self._classes: list[str] = [str(c) for c in class_names] if class_names is not None else []
        self._metrics: list[str] = []
        self._rows: list[dict[str, object]] = []
        self._case_ids: list[str] = []

    def add_case(self, case_id: str, per_class: Mapping[str, Mapping[str, float]]) -> None:
        """Add the metrics of one case, e.g. the output of :func:`msa2net.metrics.legacy_case_scores`.

        Args:
            case_id: Unique case identifier (a second case with the same id is an error).
            per_class: ``{class_name: {metric_name: value}}``; booleans are stored as 0.0/1.0 and
                ``None`` as NaN.

        Raises:
            ValueError: a repeated case id, or a metric named ``case_id`` or ``class_name``; nothing is added.
        """
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
        """Everything needed for a report, JSON-ready apart from NaN floats (see :func:`json_safe`).

        Returns:
            ``{"n_cases", "classes", "metrics", "per_class": {class: {"n_cases", "mean": {metric: v},
            "n_failed": {metric: k}}}, "mean": {metric: mean over classes of the class means},
            "cases": rows}``. Class means omit NaN values (counted in ``n_failed``); the mean over classes
            omits classes whose mean is NaN. ``cases`` are copies of the rows in the order they were added.
        """
        per_class: dict[str, dict[str, object]] = {}
        for name in self._classes:
            values = {metric: self._values(name, metric) for metric in self._metrics}
            per_class[name] = {
                "n_cases": len({row["case_id"] for row in self._rows if row["class_name"] == name}),
                "mean": {metric: _mean_omit_nan(v) for metric, v in values.items()},
                "n_failed": {metric: int(np.count_nonzero(np.isnan(v))) for metric, v in values.items()},
            }
        overall = {
            metric: _mean_omit_nan([per_class[name]["mean"][metric] for name in self._classes])  # type: ignore[index]
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
        """Write the rows as CSV (``case_id,class_name,<metrics>``; NaN as ``nan``, a missing value empty), atomically.

        Returns:
            The written path.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*_RESERVED, *self._metrics])
        for row in self._rows:
            cells = [repr(float(row[m])) if m in row else "" for m in self._metrics]  # type: ignore[arg-type]
            writer.writerow([row["case_id"], row["class_name"], *cells])
        return write_text_atomic(path, buffer.getvalue())


class PooledBinaryMetrics:
    """Streaming :func:`msa2net.metrics.pooled_binary_metrics`: accumulate pixel counts batch by batch.

    Args:
        postprocess: Apply :func:`msa2net.metrics.isic_postprocess` to each predicted 2D mask before counting
            (the D-LKA protocol; off by default, report whether it was used).
        opening: Size of the opening when ``postprocess`` is on.
    """

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
        """Add one mask (H, W) or a batch (N, H, W) of thresholded predictions and ground truths.

        Raises:
            ValueError: shapes differ, or post-processing is on and the masks are neither (H, W) nor (N, H, W).
        """
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


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def _number(value: object) -> float:
    """A summary figure as a float: ``None`` (JSON null) becomes NaN."""
    return float("nan") if value is None else float(value)  # type: ignore[arg-type]


def _cell(value: object, scale: float = 1.0) -> str:
    """``scale * value`` with two decimals, or :data:`MISSING` when undefined."""
    number = _number(value)
    return MISSING if math.isnan(number) else f"{scale * number:.2f}"


def _column_headers(names: Sequence[str]) -> list[str]:
    """The paper's abbreviations for the 8 Synapse organs in label order, else the class names."""
    return list(SYNAPSE_COLUMNS) if tuple(names) == SYNAPSE_CLASS_NAMES[1:] else list(names)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Header, alignment (first column left, the others right) and rows, separated by newlines."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_paper_table(
    per_class_dice: Mapping[str, float],
    per_class_hd95: Mapping[str, float],
    classes: Sequence[str],
    title: str,
    columns: Sequence[str] | None = None,
    *,
    mean_dice: float | None = None,
    mean_hd95: float | None = None,
) -> str:
    """One method's results in the layout of the paper's Synapse table, as a markdown table.

    Columns: ``Method | DSC | HD95 | <one Dice column per class>``. DSC and the class columns are
    percentages with two decimals; HD95 has two decimals in the unit it was given in; undefined values
    show as ``n/a``.

    Args:
        per_class_dice: ``{class_name: mean Dice}`` as fractions in [0, 1].
        per_class_hd95: ``{class_name: mean HD95}`` (only the classes' mean is shown).
        classes: Classes to show, in column order.
        title: Text of the Method cell (e.g. the model name).
        columns: Column headers for ``classes``; default :data:`SYNAPSE_COLUMNS` when ``classes`` are the 8
            Synapse organs in label order, else the class names.
        mean_dice: The DSC cell, as a fraction; default the plain mean of ``per_class_dice`` over ``classes``
            (NaN if any class is NaN). Reports pass the figure of their summary so both show the same number.
        mean_hd95: The HD95 cell; default the plain mean of ``per_class_hd95`` over ``classes``.

    Returns:
        Header, alignment and one result row, separated by newlines.

    Raises:
        ValueError: no classes, a wrong number of column headers, or Dice values above 1 (percentages).
        KeyError: a class missing from ``per_class_dice`` or ``per_class_hd95``.
    """
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes must name at least one class")
    missing = [n for n in names if n not in per_class_dice or n not in per_class_hd95]
    if missing:
        raise KeyError(f"classes {missing} are missing from per_class_dice or per_class_hd95")
    if columns is None:
        headers = _column_headers(names)
    else:
        headers = [str(c) for c in columns]
        if len(headers) != len(names):
            raise ValueError(f"columns has {len(headers)} headers for {len(names)} classes")
    dice_values = [_number(per_class_dice[n]) for n in names]
    if any(v > 1.0 for v in dice_values if not math.isnan(v)):
        raise ValueError("per_class_dice must be fractions in [0, 1]; the table converts them to percentages")
    dsc = float(np.mean(dice_values)) if mean_dice is None else mean_dice
    hd = float(np.mean([_number(per_class_hd95[n]) for n in names])) if mean_hd95 is None else mean_hd95
    row = [title, _cell(dsc, 100.0), _cell(hd), *(_cell(v, 100.0) for v in dice_values)]
    return _markdown_table(*_paper_table_cells(headers, row))


def _paper_table_cells(headers: Sequence[str], row: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and the one row of the paper's table (``Method | DSC | HD95 | classes``)."""
    return ["Method", "DSC", "HD95", *headers], [list(row)]


# ----------------------------------------------------------------------------------------------
# Evaluation reports
# ----------------------------------------------------------------------------------------------


def build_evaluation_summary(
    aggregator: MetricAggregator,
    class_names: Sequence[str],
    settings: Mapping[str, Any],
    empty: str | float,
    title: str | None = None,
) -> dict[str, Any]:
    """The evaluation summary written to ``summary.json``; every figure of ``table.md`` is read from it.

    Args:
        aggregator: Filled with the rows of :func:`msa2net.metrics.legacy_case_scores` for every case.
        class_names: All class names, background first; classes 1.. are reported.
        settings: What was evaluated and how (checkpoint, model, data, ...); stored under ``settings``.
        empty: The empty-mask policy ``hd95_mm`` was computed with (stored as ``settings.empty_policy_mm``).
        title: Row label of the tables (stored as ``settings.title``); default ``settings["model"]``, the
            checkpoint's model name.

    Returns:
        ``{"settings", "class_names", "legacy": {"mean_dice", "mean_hd95_voxels", "per_class_dice",
        "per_class_hd95_voxels"}, "mm": {"mean_hd95_mm", "per_class_hd95_mm", "per_class_failures",
        "n_failed", "n_values", "per_class_nsd", "note"}}`` followed by the keys of
        :meth:`MetricAggregator.summary`. Legacy means are plain means over classes. ``mean_hd95_mm`` is the mean
        over classes of the class means, computed as the aggregator's ``mean``: class means omit failures (NaN
        ``hd95_mm``: an empty prediction or ground truth under ``empty="nan"``), classes without any value are left
        out, ``None`` when no class has one.
        ``per_class_failures`` and ``n_failed`` count the omitted values, per class and in all, out of
        ``per_class[c]["n_cases"]`` and ``n_values``.
    """
    totals = aggregator.summary()
    foreground = [str(c) for c in class_names[1:]]
    per_class: Mapping[str, Any] = totals["per_class"]  # type: ignore[assignment]
    unknown = [c for c in foreground if c not in per_class]
    if unknown:
        raise ValueError(f"the aggregator holds no rows for classes {unknown}")

    def means(metric: str) -> dict[str, float | None]:
        return {c: per_class[c]["mean"].get(metric) for c in foreground}

    legacy_dice, legacy_hd, mm_hd = means("dice"), means("hd95"), means("hd95_mm")
    failed = {c: int(per_class[c]["n_failed"].get("hd95_mm", 0)) for c in foreground}
    mean_mm = _mean_omit_nan([_number(v) for v in mm_hd.values()])
    return {
        "settings": {**settings, "empty_policy_mm": empty, "title": title or str(settings.get("model", "model"))},
        "class_names": [str(c) for c in class_names],
        "legacy": {
            "mean_dice": float(np.mean([_number(v) for v in legacy_dice.values()])),
            "mean_hd95_voxels": float(np.mean([_number(v) for v in legacy_hd.values()])),
            "per_class_dice": legacy_dice,
            "per_class_hd95_voxels": legacy_hd,
        },
        "mm": {
            "mean_hd95_mm": None if math.isnan(mean_mm) else mean_mm,
            "per_class_hd95_mm": mm_hd,
            "per_class_failures": failed,
            "n_failed": sum(failed.values()),
            "n_values": sum(int(per_class[c]["n_cases"]) for c in foreground),
            "per_class_nsd": means("nsd"),
            "note": "hd95_mm omits failures (an empty prediction or ground truth) from the means and counts them",
        },
        **totals,
    }


def _empty_rule(empty: object) -> str:
    if empty == "nan":
        return (
            "Failures (HD95 undefined: the prediction or the ground truth is empty) are left out of the means and "
            "counted in the `failed` row."
        )
    if empty == "diagonal":
        return "An empty prediction or ground truth scores the diagonal of the image."
    if empty == "legacy":
        return "An empty prediction or ground truth scores 0 mm, as in the legacy protocol."
    return f"An empty prediction or ground truth scores {_number(empty):g} mm."


def evaluation_tables(summary: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The two tables of an evaluation, as ``(caption, header, rows)`` cells, from a :func:`build_evaluation_summary`
    dict (also after a JSON round trip). ``table.md`` and ``report.html`` both print these cells.

    - legacy protocol, the paper's layout (:func:`format_paper_table`): DSC and HD95 (voxels) are
      ``legacy.mean_dice`` and ``legacy.mean_hd95_voxels``, the class columns ``legacy.per_class_dice``;
    - millimetres: rows ``HD95 (mm)`` (``mm.mean_hd95_mm`` and ``mm.per_class_hd95_mm``), ``failed``
      (``mm.n_failed/mm.n_values`` and ``per_class_failures[c]/per_class[c].n_cases``) and, when NSD was
      computed, ``NSD (<tolerance> mm)`` in percent (``mean.nsd`` and ``mm.per_class_nsd``).

    Figures have two decimals (Dice and NSD as percentages); undefined ones show as ``n/a``. Captions say what
    each table measures.
    """
    settings = summary["settings"]
    title = str(settings.get("title") or settings.get("model", "model"))
    names = [str(c) for c in summary["class_names"][1:]]
    legacy, mm, per_class = summary["legacy"], summary["mm"], summary["per_class"]
    headers = _column_headers(names)
    # the same checks and cells as format_paper_table, which table.md has always printed
    format_paper_table(legacy["per_class_dice"], legacy["per_class_hd95_voxels"], names, title, headers)
    dsc, hd = _number(legacy["mean_dice"]), _number(legacy["mean_hd95_voxels"])
    legacy_row = [
        title,
        _cell(dsc, 100.0),
        _cell(hd),
        *(_cell(legacy["per_class_dice"][c], 100.0) for c in names),
    ]
    rows = [
        ["HD95 (mm)", _cell(mm["mean_hd95_mm"]), *(_cell(mm["per_class_hd95_mm"][c]) for c in names)],
        [
            "failed",
            f"{int(mm['n_failed'])}/{int(mm['n_values'])}",
            *(f"{int(mm['per_class_failures'][c])}/{int(per_class[c]['n_cases'])}" for c in names),
        ],
    ]
    nsd = mm.get("per_class_nsd") or {}
    with_nsd = any(nsd.get(c) is not None for c in names)
    if with_nsd:
        tolerance = settings.get("nsd_tolerance_mm")
        label = "NSD" if tolerance is None else f"NSD ({_number(tolerance):g} mm)"
        rows.append([label, _cell(summary["mean"].get("nsd"), 100.0), *(_cell(nsd.get(c), 100.0) for c in names)])
    legacy_caption = (
        f"Legacy protocol (the paper's table), {title}: Dice in percent, HD95 in voxels (slices count as 1); a missed "
        "organ scores Dice 0 and HD95 0, an organ predicted where there is none Dice 1 and HD95 0."
    )
    mm_caption = (
        f"HD95 in mm, {title}: with the voxel spacing of each case, empty={settings.get('empty_policy_mm')}. "
        f"{_empty_rule(settings.get('empty_policy_mm'))} Class means are over cases, the Mean column is the mean "
        f"over classes of the class means (classes without a value left out){'; NSD in percent' if with_nsd else ''}."
    )
    return [
        (legacy_caption, *_paper_table_cells(headers, legacy_row)),
        (mm_caption, ["Metric", "Mean", *headers], rows),
    ]


def format_evaluation_tables(summary: Mapping[str, Any]) -> str:
    """The text of ``table.md``, from a :func:`build_evaluation_summary` dict (also after a JSON round trip).

    The tables of :func:`evaluation_tables` as markdown, each after its caption.
    """
    blocks = [f"{caption}\n\n{_markdown_table(header, rows)}" for caption, header, rows in evaluation_tables(summary)]
    return "\n\n".join(blocks) + "\n"


def write_evaluation_report(
    out_dir: str | os.PathLike[str], summary: Mapping[str, Any], aggregator: MetricAggregator
) -> dict[str, Path]:
    """Write ``summary.json`` (strict JSON), ``per_case.csv`` and ``table.md`` into ``out_dir``, atomically.

    Args:
        out_dir: Output folder (created).
        summary: A :func:`build_evaluation_summary` dict.
        aggregator: The aggregator the summary was built from (its rows go to ``per_case.csv``).

    Returns:
        ``{"summary": path, "per_case": path, "table": path}``.
    """
    out = Path(out_dir)
    return {
        "summary": write_json(out / "summary.json", summary),
        "per_case": aggregator.write_csv(out / "per_case.csv"),
        "table": write_text_atomic(out / "table.md", format_evaluation_tables(summary)),
    }


def build_isic_summary(pooled: PooledBinaryMetrics, settings: Mapping[str, Any], n_images: int) -> dict[str, Any]:
    """The ISIC evaluation summary: ``{"settings": {..., "postprocess"}, "n_images", "pooled": scores}``."""
    return {
        "settings": {**settings, "postprocess": pooled.postprocess},
        "n_images": int(n_images),
        "pooled": pooled.compute(),
    }


# ----------------------------------------------------------------------------------------------
# Overlays
# ----------------------------------------------------------------------------------------------


def _to_uint8_rgb(image2d: np.ndarray) -> np.ndarray:
    image = np.asarray(image2d, dtype=np.float64)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"overlay image must be (H, W) or (H, W, 3), got shape {image.shape}")
    finite = np.isfinite(image)
    if finite.any():
        lo, hi = float(image[finite].min()), float(image[finite].max())
    else:
        lo, hi = 0.0, 0.0
    scaled = np.where(finite, (image - lo) / (hi - lo) if hi > lo else 0.0, 0.0)
    grey = np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)
    return grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=2)


def overlay_rgb(
    image2d: np.ndarray, labels2d: np.ndarray, alpha: float = 0.4, num_classes: int | None = None
) -> np.ndarray:
    """The colour overlay of a label map on a 2D image, as pixels (no titles, no legend, native size).

    Args:
        image2d: ``(H, W)`` grey or ``(H, W, 3)`` colour image of any numeric dtype; min-max scaled to 0..255 over its
            finite values (NaN/inf drawn black; a constant image is drawn black).
        labels2d: ``(H, W)`` integer label map with ids 0..15; id 0 is left uncoloured.
        alpha: Opacity of the label colours in [0, 1].
        num_classes: Number of classes including background (<= 16). When given, ids >= ``num_classes`` are an error.

    Returns:
        ``(H, W, 3)`` uint8: ``(1 - alpha) * image + alpha * OVERLAY_COLORS[label]`` where label > 0, else the image.

    Raises:
        ValueError: shapes differ, ids are negative/non-integer/too large, or alpha is outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _to_uint8_rgb(image2d)
    limit = _colour_limit(num_classes)
    labels = _check_labels(labels2d, rgb.shape[:2], limit, num_classes is not None)
    colours = OVERLAY_COLORS[labels].astype(np.float64)
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colours
    return np.where((labels > 0)[..., None], np.round(blended), rgb).astype(np.uint8)


def _colour_limit(num_classes: int | None) -> int:
    limit = len(OVERLAY_COLORS) if num_classes is None else int(num_classes)
    if limit > len(OVERLAY_COLORS):
        raise ValueError(f"the overlay colour table has {len(OVERLAY_COLORS)} entries; got num_classes={limit}")
    return limit


def _check_labels(labels2d: np.ndarray, shape: tuple[int, ...], limit: int, explicit: bool) -> np.ndarray:
    """``labels2d`` as int64 after checking its shape and ids (0..limit-1)."""
    labels = np.asarray(labels2d)
    if labels.shape != tuple(shape):
        raise ValueError(f"labels shape {labels.shape} differs from image shape {tuple(shape)}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError("labels must be integer ids; got non-integer values (pass an argmax, not probabilities)")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= limit):
        raise ValueError(
            f"label ids must be in 0..{limit - 1}, found {int(labels.min())}..{int(labels.max())}"
            + ("" if explicit else f"; overlays support at most {len(OVERLAY_COLORS)} classes")
        )
    return labels


#: Blank border around the panels of an overlay PNG, and between them, in pixels.
OVERLAY_PAD = 8
_TEXT = (34, 34, 34)


@functools.lru_cache(maxsize=4)
def _font(size: int) -> Any:
    """DejaVu Sans (shipped with matplotlib) at ``size`` px; Pillow's default font when it cannot be found."""
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            return ImageFont.truetype(str(Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _legend_entries(
    limit: int, class_names: Sequence[str] | None, present: Sequence[np.ndarray]
) -> list[tuple[str, tuple[int, int, int]]]:
    """``(name, colour)`` of every foreground class: all named classes, else ids 1..max id present."""
    if class_names is not None:
        count = min(len(class_names), limit)
    else:
        count = max([int(p.max()) + 1 for p in present if p.size] + [1])
    return [
        (str(class_names[i]) if class_names is not None else f"class {i}", tuple(int(v) for v in OVERLAY_COLORS[i]))
        for i in range(1, count)
    ]


def _legend_rows(entries: Sequence[tuple[str, tuple[int, int, int]]], width: int, draw: Any, font: Any) -> list[Any]:
    """Entries packed into rows that fit ``width`` pixels: ``[[(x, name, colour), ...], ...]``."""
    rows: list[list[tuple[int, str, tuple[int, int, int]]]] = [[]]
    x = 0
    for name, colour in entries:
        step = 16 + int(math.ceil(draw.textlength(name, font=font))) + 14
        if rows[-1] and x + step - 14 > width:
            rows.append([])
            x = 0
        rows[-1].append((x, name, colour))
        x += step
    return rows if rows[0] else []


def write_overlay_png(
    image2d: np.ndarray,
    labels2d: np.ndarray,
    path: str | os.PathLike[str],
    alpha: float = 0.4,
    num_classes: int | None = None,
    reference: np.ndarray | None = None,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    caption: str = "prediction",
    min_size: int = 256,
) -> Path:
    """Write a colour overlay of a label map on a 2D image as a captioned PNG with a legend, atomically.

    Layout, on white: an optional ``title`` line; one panel per label map, each under its caption (``reference``,
    the ground truth, on the left captioned "ground truth", then ``labels2d`` captioned ``caption``), panels
    :data:`OVERLAY_PAD` px from the border and apart; below them a legend of the foreground classes (colour swatch
    and name). Each panel is :func:`overlay_rgb` enlarged by an integer factor with nearest neighbour so that its
    longer side is at least ``min_size`` (images of that size or more keep their size).

    Args:
        image2d: ``(H, W)`` grey or ``(H, W, 3)`` colour image (see :func:`overlay_rgb`).
        labels2d: ``(H, W)`` integer label map with ids 0..15; id 0 is left uncoloured.
        path: Target ``.png`` file.
        alpha: Opacity of the label colours in [0, 1].
        num_classes: Number of classes including background (<= 16). When given, ids >= ``num_classes`` are an error.
        reference: Optional ``(H, W)`` ground-truth label map, drawn left of ``labels2d``.
        class_names: Names of the class ids, background first; the legend lists ids ``1..len(class_names)-1``
            (at most ``num_classes - 1``). Without names it lists "class 1" .. the largest id present.
        title: Line above the panels, e.g. ``"case0001, slice 45 of 147"``.
        caption: Caption of the ``labels2d`` panel.
        min_size: Smallest longer side of a panel, in pixels (>= 1).

    Returns:
        The written path.

    Raises:
        ValueError: shapes differ, ids are negative/non-integer/too large, alpha is outside [0, 1], or
            ``min_size`` < 1.
    """
    from PIL import Image, ImageDraw

    if min_size < 1:
        raise ValueError(f"min_size must be at least 1, got {min_size}")
    panels = [(caption, overlay_rgb(image2d, labels2d, alpha, num_classes))]
    maps = [np.asarray(labels2d)]
    if reference is not None:
        panels.insert(0, ("ground truth", overlay_rgb(image2d, reference, alpha, num_classes)))
        maps.append(np.asarray(reference))
    height, width = panels[0][1].shape[:2]
    scale = max(1, math.ceil(min_size / max(height, width, 1)))
    panels = [(text, np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)) for text, rgb in panels]
    ph, pw = height * scale, width * scale

    title_font, font = _font(15), _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = OVERLAY_PAD
    canvas_w = 2 * pad + len(panels) * pw + (len(panels) - 1) * pad
    if title:
        canvas_w = max(canvas_w, 2 * pad + int(math.ceil(probe.textlength(title, font=title_font))))
    entries = _legend_entries(_colour_limit(num_classes), class_names, maps)
    legend = _legend_rows(entries, canvas_w - 2 * pad, probe, font)
    title_h, caption_h, line_h = (22 if title else 0), 18, 18
    top = pad + title_h + caption_h
    canvas_h = top + ph + (pad + line_h * len(legend) if legend else 0) + pad

    canvas = Image.new("RGB", (canvas_w, canvas_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=_TEXT, font=title_font)
    for i, (text, rgb) in enumerate(panels):
        x = pad + i * (pw + pad)
        draw.text((x, pad + title_h), text, fill=_TEXT, font=font)
        canvas.paste(Image.fromarray(rgb), (x, top))
    y = top + ph + pad
    for row in legend:
        for x, name, colour in row:
            draw.rectangle([pad + x, y + 3, pad + x + 11, y + 14], fill=colour, outline=_TEXT)
            draw.text((pad + x + 16, y), name, fill=_TEXT, font=font)
        y += line_h
    target = Path(path)
    with atomic_path(target) as tmp:
        canvas.save(tmp, format="PNG")
    return target


# ----------------------------------------------------------------------------------------------
# Training logs
# ----------------------------------------------------------------------------------------------


def write_metrics_csv(path: str | os.PathLike[str], history: Sequence[Mapping[str, float]]) -> Path | None:
    """Write the per-epoch history as CSV, atomically; columns in order of first appearance.

    Returns:
        The path, or ``None`` (nothing written) when ``history`` is empty. A row lacking a column leaves it empty.
    """
    if not history:
        return None
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return write_text_atomic(path, buffer.getvalue())


def read_metrics_csv(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Read a :func:`write_metrics_csv` file back: one dict per row, every cell a float (an empty cell is NaN).

    Raises:
        OSError: the file cannot be read.
        ValueError: a cell is not a number.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            {key: float(value) if value not in ("", None) else float("nan") for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def plot_curves(history: Sequence[Mapping[str, float]], path: str | os.PathLike[str]) -> Path:
    """Training loss per epoch (left) and validation mean Dice (right, epochs with a finite value), as a PNG.

    Points carry markers (so a single epoch shows), and the epoch axes have integer ticks only.

    Args:
        history: Rows with ``epoch`` and ``train_loss``, optionally ``val_mean_dice`` (NaN or absent: not drawn).
        path: Target ``.png`` file, written atomically.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    markers = {"marker": "o", "markersize": 4} if len(epochs) <= 60 else {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss = [(r["epoch"], r["train_loss"]) for r in history if math.isfinite(r.get("train_loss", math.nan))]
    if loss:
        ax1.plot(*zip(*loss), color="tab:blue", **markers)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.grid(alpha=0.3)
    val = [(r["epoch"], r["val_mean_dice"]) for r in history if math.isfinite(r.get("val_mean_dice", math.nan))]
    if val:
        ax2.plot(*zip(*val), marker="o", markersize=4, color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation mean Dice")
    ax2.set_ylim(0, 1)
    ax2.grid(alpha=0.3)
    if epochs:
        lo, hi = min(epochs), max(epochs)
        margin = max(0.5, 0.03 * (hi - lo))
        for ax in (ax1, ax2):
            ax.set_xlim(lo - margin, hi + margin)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.tight_layout()
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return target


# ----------------------------------------------------------------------------------------------
# Demo
# ----------------------------------------------------------------------------------------------


def write_demo_report(
    path: str | os.PathLike[str],
    *,
    model_name: str,
    img_size: Sequence[int],
    n_cases: int,
    evaluation: Mapping[str, Any],
    table: str,
    best_mean_dice: float,
    best_epoch: int,
    curves: str,
    overlays: Sequence[str],
    seconds: Mapping[str, float],
) -> Path:
    """Write the demo's ``report.md``, atomically.

    Args:
        path: Target file.
        model_name: Model preset that was trained.
        img_size: Model input (H, W).
        n_cases: Number of phantom cases generated.
        evaluation: The evaluation summary (:func:`build_evaluation_summary`); the mean Dice shown is its
            ``legacy.mean_dice``, the test cases named are those of its ``cases`` rows.
        table: The evaluation's ``table.md`` text, included as is.
        best_mean_dice: Best validation mean Dice during training, and ``best_epoch`` its epoch.
        curves: Path of the training curves image, relative to the report.
        overlays: Paths of overlay images, relative to the report.
        seconds: Duration of each step.

    Returns:
        The written path.
    """
    mean_dice = _number(evaluation["legacy"]["mean_dice"])
    test_cases = list(dict.fromkeys(str(row["case_id"]) for row in evaluation["cases"]))
    lines = [
        "# msa2net demo report",
        "",
        f"A small MSA2Net ({model_name}, {img_size[0]}x{img_size[1]}) trained from scratch on the built-in CT "
        f"phantom ({n_cases} synthetic cases in the BTCV layout, prepared exactly as the Synapse data), evaluated "
        f"on the phantom's test cases ({', '.join(test_cases)}) with the paper's legacy protocol and with HD95 in "
        "millimetres.",
        "",
        f"**Mean Dice (legacy protocol): {mean_dice:.4f}**; best validation Dice {best_mean_dice:.4f} at epoch "
        f"{best_epoch}.",
        "",
        table.rstrip("\n"),
        "",
        "Browse every test slice (image, ground truth, prediction), the per-case scores and the curves in "
        "`report.html`: open it in a browser, it needs no network.",
        "",
        "## Training curves",
        "",
        f"![curves]({curves})",
        "",
        "## Test slices: ground truth (left) and prediction (right)",
        "",
        *[f"![{Path(p).stem}]({p})" for p in overlays],
        "",
        "## Timings (s)",
        "",
        *[f"- {k}: {v}" for k, v in seconds.items()],
        "",
        "Files: `run/` (checkpoints best.pt/last.pt, metrics.csv, TensorBoard logs), `eval/summary.json` (per case and "
        "class, legacy and mm), `predict/` (mask of a raw NIfTI scan in its geometry, with overlays).",
    ]
    return write_text_atomic(path, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------

#: BibTeX of the MSA2Net paper, cited by every model card.
MSA2NET_BIBTEX = """@inproceedings{kolahi2024msa2net,
  title     = {{MSA2Net}: Multi-scale Adaptive Attention-guided Network for Medical Image Segmentation},
  author    = {Kolahi, Sina Ghorbani and Chaharsooghi, Seyed Kamal and Khatibi, Toktam and Bozorgpour, Afshin and
               Azad, Reza and Heidari, Moein and Hacihaliloglu, Ilker and Merhof, Dorit},
  booktitle = {35th British Machine Vision Conference (BMVC)},
  year      = {2024},
  eprint    = {2407.21640},
  archivePrefix = {arXiv},
  primaryClass  = {eess.IV}
}"""

_VARIANT_TEXT = {
    "paper": "`paper`: the network of the paper (DAE-Former blocks and a MASAG gate in decoder stage 2)",
    "released": (
        "`released`: the network the authors' released code runs (LKA blocks in decoder stage 2 and no MASAG "
        "there; the skip connection is added unchanged)"
    ),
}

#: Per data kind: (description of the training/evaluation data, card tags, intended domain).
_DATA_KINDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "synapse": (
        "Synapse multi-organ abdominal CT (MICCAI 2015 Multi-Atlas Abdomen Labeling challenge, BTCV), axial slices, "
        "8 organs",
        ("ct", "abdomen", "multi-organ", "synapse", "btcv"),
        "axial slices of contrast-enhanced abdominal CT of adults, like the BTCV scans",
    ),
    "isic2018": (
        "ISIC 2018 Task 1 (skin lesion boundary segmentation), dermoscopic images",
        ("dermoscopy", "skin-lesion", "isic-2018"),
        "dermoscopic images of skin lesions, like the ISIC 2018 archive images",
    ),
    "folder": (
        "a dataset folder (msa2net's `dataset.json` layout)",
        (),
        "images of the kind the training folder held (see the training data below)",
    ),
    "phantom": (
        "msa2net's built-in synthetic CT phantom (not real patients; a demonstration model)",
        ("ct", "synthetic"),
        "none: the model was trained on synthetic phantoms and is a demonstration only",
    ),
}


def _data_kind(config: Mapping[str, Any]) -> str | None:
    """The kind of data the model was trained on: ``synapse``, ``isic2018``, ``folder``, ``phantom`` or None."""
    prov = config.get("provenance") or {}
    run = prov.get("run_config") or {}
    if run.get("preset") == "demo":
        return "phantom"
    evaluation = config.get("evaluation") or {}
    kind = (evaluation.get("settings") or {}).get("kind") or (run.get("data") or {}).get("kind") or run.get("preset")
    if (
        kind is None
        and prov.get("source") == "official"
        and tuple(config.get("class_names", ())) == SYNAPSE_CLASS_NAMES
    ):
        kind = "synapse"
    return kind if kind in _DATA_KINDS else None


def _yaml_header(meta: Mapping[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def _pct(value: object) -> float | None:
    number = _number(value)
    return None if math.isnan(number) else round(100.0 * number, 2)


def _plain(value: object) -> float | None:
    number = _number(value)
    return None if math.isnan(number) else round(number, 2)


def _card_metrics(evaluation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``model-index`` metrics of an evaluation summary (legacy + mm, or ISIC pooled); undefined ones left out."""
    if "pooled" in evaluation:
        pooled = evaluation["pooled"]
        post = " after post-processing" if (evaluation.get("settings") or {}).get("postprocess") else ""
        names = {
            "dsc": "Dice",
            "iou": "IoU",
            "sensitivity": "Sensitivity",
            "specificity": "Specificity",
            "accuracy": "Accuracy",
        }
        rows = [
            (key, _pct(pooled.get(key)), f"{label} (%, pixels pooled over the test set{post})")
            for key, label in names.items()
        ]
    else:
        legacy, mm = evaluation["legacy"], evaluation["mm"]
        rows = [
            ("dice", _pct(legacy.get("mean_dice")), "Mean Dice (%, legacy protocol)"),
            ("hd95", _plain(legacy.get("mean_hd95_voxels")), "Mean HD95 (voxels, legacy protocol)"),
            ("hd95_mm", _plain(mm.get("mean_hd95_mm")), f"Mean HD95 (mm; {mm.get('n_failed')} failures left out)"),
        ]
        nsd = (evaluation.get("mean") or {}).get("nsd")
        if nsd is not None:
            tolerance = (evaluation.get("settings") or {}).get("nsd_tolerance_mm")
            rows.append(("nsd", _pct(nsd), f"Mean NSD (%, {_number(tolerance):g} mm)"))
    return [{"type": key, "value": value, "name": name} for key, value, name in rows if value is not None]


def _isic_table(evaluation: Mapping[str, Any]) -> str:
    pooled = evaluation["pooled"]
    settings = evaluation.get("settings") or {}
    keys = ("dsc", "iou", "sensitivity", "specificity", "accuracy")
    table = _markdown_table(
        ["Method", "DSC", "IoU", "Sensitivity", "Specificity", "Accuracy"],
        [[str(settings.get("title") or settings.get("model", "model")), *(_cell(pooled.get(k), 100.0) for k in keys)]],
    )
    post = "with" if settings.get("postprocess") else "without"
    return (
        f"ISIC protocol: pixels pooled over the {int(evaluation.get('n_images', 0))} test images, {post} the opening + "
        f"hole-filling post-process; figures in percent.\n\n{table}\n"
    )


def _checkpoint_lines(config: Mapping[str, Any]) -> list[str]:
    prov = config.get("provenance") or {}
    source = prov.get("source")
    lines: list[str] = []
    file = prov.get("source_checkpoint")
    sha = prov.get("source_sha256")
    where = f"`{file}`" + (f" (SHA-256 `{sha}`)" if sha else "") if file else None
    if source == "official":
        lines.append(
            f"Converted from the authors' checkpoint{' ' + where if where else ''} (github.com/xmindflow/MSA-2Net) by "
            f"msa2net's converter; variant detected from its keys: `{prov.get('variant_detected')}`. Keys of modules "
            "that never run in the authors' forward pass were dropped; every other tensor is loaded unchanged."
        )
        if prov.get("assumed"):
            lines.append(f"Assumed for the authors' checkpoint (it does not record them): {prov['assumed']}.")
        return lines
    epoch, best_epoch, best = prov.get("epoch"), prov.get("best_epoch"), prov.get("best_validation_mean_dice")
    epochs = prov.get("epochs")
    of = f" of {epochs}" if epochs else ""
    if source == "training" and epoch is not None:
        if best is not None and best_epoch == epoch:
            lines.append(f"The best checkpoint on validation: mean Dice {_number(best):.4f} at epoch {epoch}{of}.")
        elif best is not None and best_epoch is not None and best_epoch > 0:
            lines.append(
                f"The weights after epoch {epoch}{of} (the last saved); the best validation mean Dice was "
                f"{_number(best):.4f} at epoch {best_epoch}."
            )
        else:
            lines.append(f"The weights after epoch {epoch}{of} (the last saved; the run had no validation).")
    elif source:
        lines.append(f"Source: {source} (no training state recorded).")
    else:
        lines.append("Provenance not recorded (saved from Python without it).")
    if where:
        lines.append(f"Source checkpoint: {where}.")
    versions = [f"published with msa2net {config.get('msa2net_version')}"]
    if prov.get("trained_with_msa2net"):
        versions.insert(0, f"trained with msa2net {prov['trained_with_msa2net']}")
    lines.append(", ".join(versions).capitalize() + ".")
    return lines


def _kv_table(rows: Sequence[Sequence[str]]) -> str:
    """A two-column, left-aligned markdown table of ``(name, value)`` rows under an empty header."""
    return "\n".join(["| | |", "|:---|:---|", *(f"| {k} | {v} |" for k, v in rows)])


def _recipe_rows(run: Mapping[str, Any]) -> list[list[str]]:
    """``(setting, value)`` rows of a run config (``Config.to_dict()``); none for an empty config."""
    if not run:
        return []
    model, data, train = run.get("model") or {}, run.get("data") or {}, run.get("train") or {}
    rows: list[list[str]] = []

    def add(label: str, value: object) -> None:
        if value not in (None, "", [], {}):
            rows.append([label, f"`{value}`" if not isinstance(value, str) or " " not in value else value])

    add("preset", run.get("preset"))
    add("data kind", data.get("kind"))
    add("data root", data.get("root"))
    if data.get("validation"):
        val = data["validation"]
        if val == "held_out":
            val = f"held_out ({_number(data.get('val_fraction', 0.0)) * 100:g} % of the training cases)"
        add("validation", val)
    add("labels", data.get("labels"))
    add("augmentation", data.get("augment"))
    add("model", model.get("name"))
    add("input size", "x".join(str(s) for s in model.get("img_size") or []) or None)
    add("encoder initialisation", model.get("pretrained_encoder") or "random (no ImageNet weights)")
    add("started from", model.get("official_checkpoint"))
    add("epochs", train.get("epochs"))
    add("batch size", train.get("batch_size"))
    add("loss", train.get("loss"))
    optimizer = train.get("optimizer")
    if optimizer:
        extra = f", momentum {train.get('momentum')}" if optimizer == "sgd" else ""
        add(
            "optimizer",
            f"{optimizer}, lr {train.get('lr')} (scaling: {train.get('lr_scaling')}){extra}, "
            f"weight decay {train.get('weight_decay')}",
        )
    add("schedule", train.get("scheduler"))
    add("mixed precision", train.get("amp"))
    add("seed", train.get("seed"))
    return rows


def build_model_card(config: Mapping[str, Any], *, repo_id: str | None = None) -> str:
    """The model card (``README.md`` of a pretrained folder), from its ``config.json`` content alone.

    It starts with the hub's YAML metadata (``library_name: msa2net``, ``license``, ``tags``,
    ``pipeline_tag: image-segmentation`` and, when ``config["evaluation"]`` holds a summary, ``model-index`` with its
    mean figures), then describes the architecture and variant, parameter count, which checkpoint the weights are
    (best on validation at epoch N, last, or converted from the authors'), the training data and recipe (from
    ``provenance.run_config``), the evaluation (the tables of :func:`format_evaluation_tables` for per-case
    summaries, the pooled scores for ISIC summaries), usage, intended use and limits, licence and citation.

    Args:
        config: ``config.json`` content (:func:`msa2net.models.pretrained.build_pretrained_config`).
        repo_id: The hub repo the folder is meant for, used in the usage examples; default a folder placeholder.

    Returns:
        Markdown text ending with a newline.
    """
    args = config["model_args"]
    names = [str(c) for c in config["class_names"]]
    prov = config.get("provenance") or {}
    run = prov.get("run_config") or {}
    evaluation = config.get("evaluation")
    kind = _data_kind(config)
    data_text, kind_tags, domain = _DATA_KINDS.get(kind or "", (None, (), None))
    model_name = str(config.get("model_name") or f"msa2net_{args['variant']}")
    tags = ["medical-imaging", "segmentation", "semantic-segmentation", "msa2net", "maxvit", "pytorch", *kind_tags]
    meta: dict[str, Any] = {
        "library_name": "msa2net",
        "license": str(config.get("license") or "mit"),
        "tags": list(dict.fromkeys(tags)),
        "pipeline_tag": "image-segmentation",
    }
    if evaluation:
        metrics = _card_metrics(evaluation)
        settings = evaluation.get("settings") or {}
        dataset_kind = settings.get("kind") or kind or "custom"
        dataset_name = {"synapse": "Synapse multi-organ CT", "isic2018": "ISIC 2018 Task 1"}.get(
            str(dataset_kind), f"{dataset_kind} ({Path(str(settings.get('data', 'data'))).name})"
        )
        if metrics:
            meta["model-index"] = [
                {
                    "name": model_name,
                    "results": [
                        {
                            "task": {"type": "image-segmentation", "name": "Image Segmentation"},
                            "dataset": {"name": dataset_name, "type": str(dataset_kind)},
                            "metrics": metrics,
                        }
                    ],
                }
            ]
    h, w = args["img_size"]
    params = int(config.get("num_parameters") or 0)
    prep = config.get("preprocessing")
    if prep is None:
        prep_text = "not recorded: map intensities yourself to [0, 1], then (x - 0.5) / 0.5"
    else:
        if prep.get("kind") == "ct_window":
            lo, hi = prep.get("window") or (None, None)
            first = f"CT window [{lo:g}, {hi:g}] HU mapped to [0, 1]"
        else:
            first = f"`{prep.get('kind')}` to [0, 1]"
        prep_text = f"{first}, then (x - mean) / std with mean {prep.get('mean')}, std {prep.get('std')}"
    where = repo_id or "path/to/this-folder"
    title_data = f" on {data_text.split(',')[0].split(' (')[0]}" if data_text else ""
    lines = [
        _yaml_header(meta).rstrip("\n"),
        "",
        f"# MSA2Net `{model_name}`{title_data}",
        "",
        f"MSA2Net segments {len(names) - 1} foreground class(es) ({', '.join(names[1:]) or 'none'}) in "
        f"{args['in_channels']}-channel 2D images at {h}x{w}; volumes are segmented slice by slice. "
        "This card was generated by msa2net from the folder's `config.json`.",
        "",
        "## Model",
        "",
        _kv_table(
            [
                [
                    "architecture",
                    "MSA2Net (Kolahi et al., BMVC 2024): a timm MaxViT encoder and a four-stage decoder whose skip "
                    "connections pass through Multi-Scale Adaptive Spatial Attention Gates (MASAG)",
                ],
                ["variant", _VARIANT_TEXT.get(str(args["variant"]), f"`{args['variant']}`")],
                ["registered name", f"`{model_name}`"],
                ["encoder", f"`{args['encoder']}`"],
                ["input", f"{args['in_channels']} x {h} x {w}; preprocessing: {prep_text}"],
                [
                    "output",
                    f"{len(names)} class logits per pixel: {', '.join(f'{i} {n}' for i, n in enumerate(names))}",
                ],
                ["parameters", f"{params / 1e6:.2f} M ({params:,})"],
            ],
        ),
        "",
        "## Checkpoint",
        "",
        *[f"- {line}" for line in _checkpoint_lines(config)],
        "",
        "## Training data and recipe",
        "",
    ]
    if data_text:
        lines += [f"Data: {data_text}.", ""]
    recipe = _recipe_rows(run)
    if recipe:
        lines += [_kv_table(recipe), ""]
    elif prov.get("source") == "official":
        lines += ["Trained by the authors with their released code; see the paper for the recipe.", ""]
    else:
        lines += ["Not recorded: the weights do not come from an msa2net training run.", ""]
    lines += ["## Evaluation", ""]
    if evaluation:
        settings = evaluation.get("settings") or {}
        cases = settings.get("cases") or []
        lines += [
            f"`msa2net evaluate` on `{settings.get('data')}` ({settings.get('kind')}"
            + (
                f", {len(cases)} case(s): {', '.join(str(c) for c in cases)}"
                if cases and "pooled" not in evaluation
                else ""
            )
            + f"), test-time augmentation {'on' if settings.get('tta') else 'off'}.",
            "",
            (_isic_table(evaluation) if "pooled" in evaluation else format_evaluation_tables(evaluation)).rstrip("\n"),
            "",
        ]
    else:
        lines += [
            "No evaluation was attached. Evaluate with `msa2net evaluate --checkpoint RUN/best.pt --data DATA --out "
            "RUN/eval` and publish again with `--eval RUN/eval/summary.json`.",
            "",
        ]
    lines += [
        "## How to use",
        "",
        "```bash",
        "pip install msa2net",
        f"msa2net predict -i scan.nii.gz -o out/ --model {where} --split",
        "```",
        "",
        "writes `out/scan.nii.gz` (one label map in the scan's geometry), `out/scan/<class>.nii.gz` (one binary mask "
        "per class), `out/scan_preview.png` and `out/scan_volumes.json` (volume of each class in ml).",
        "",
        "```python",
        "from msa2net import MSA2Net",
        "",
        f'model = MSA2Net.from_pretrained("{where}")  # eval mode; class names: model.pretrained_config["class_names"]',
        "```",
        "",
        "## Intended use and limitations",
        "",
        "- For research only. This model is not a medical device, is not cleared or approved for clinical use, and "
        "must not be used for diagnosis, treatment or any decision about a patient.",
        f"- Trained data domain: {domain or 'not recorded'}. Other modalities, scanners, protocols, "
        "populations or anatomy are out of domain; the model may fail there without warning.",
        "- 2D model: each slice is segmented on its own (no 3D context), resized to "
        f"{h}x{w} and back; thin or small structures may be missed.",
        "- The figures above hold for the stated test data only; check the model on your own data before relying "
        "on it.",
        "",
        "## Licence",
        "",
        f"The weights are released under `{meta['license']}`. The training data has its own terms of use, which "
        "may restrict what the weights may be used for; check them. The msa2net code is MIT licensed.",
        "",
        "## Citation",
        "",
        "```bibtex",
        MSA2NET_BIBTEX,
        "```",
    ]
    return "\n".join(lines) + "\n"


def write_model_card(path: str | os.PathLike[str], config: Mapping[str, Any], *, repo_id: str | None = None) -> Path:
    """Write :func:`build_model_card` to ``path`` atomically; returns the path."""
    return write_text_atomic(path, build_model_card(config, repo_id=repo_id))
