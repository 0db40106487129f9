"""The HTML report: one self-contained ``report.html`` per evaluation, demo or prediction run.

Slices are embedded as ``data:`` URIs and the script and style of ``report_template.html`` are inline, so the page
opens from disk with no network. It shows the summary tables, a sortable per-case table, training curves and one
slice browser per case. :class:`HtmlReport` appends each case to a temporary file as it is added and
:meth:`HtmlReport.finish` renames it into place, so ``report.html`` is either complete or absent.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from .._json import json_safe
from .._version import __version__
from .aggregate import mean_omit_nan
from .overlays import OVERLAY_COLORS
from .summary import CaseSummary, PooledSummary, Summary, as_summary, number
from .tables import cell, evaluation_tables

__all__ = [
    "BACKGROUND_STRIDE",
    "JPEG_QUALITY",
    "MAX_SIDE",
    "MAX_SLICES",
    "HtmlReport",
    "open_report",
    "select_slices",
    "slice_confusion",
]

#: Longest side of an embedded slice, in pixels.
MAX_SIDE = 256
#: Every ``BACKGROUND_STRIDE``-th slice without foreground (ground truth or prediction) is shown too.
BACKGROUND_STRIDE = 4
#: Most slices shown per case.
MAX_SLICES = 300
#: JPEG quality of the embedded images.
JPEG_QUALITY = 85

_CASES_MARKER = "<!--MSA2NET:CASES-->"
_METRIC_COLUMNS: dict[str, tuple[str, float, int, str]] = {  # key: (label, scale, digits, title)
    "dice": ("Dice %", 100.0, 2, "Dice, legacy protocol, in percent"),
    "hd95": ("HD95 vox", 1.0, 2, "HD95 in voxels, legacy protocol (a miss scores 0)"),
    "hd95_mm": ("HD95 mm", 1.0, 2, "HD95 in millimetres (n/a: a failure, an empty prediction or ground truth)"),
    "nsd": ("NSD %", 100.0, 2, "normalised surface Dice in percent"),
}
_FLAG_COLUMNS = {"gt_empty": "GT empty", "pred_empty": "pred empty"}


def _hex(colour: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in colour[:3])


def _json_for_script(data: object) -> str:
    """Strict compact JSON that can sit inside a ``<script>`` element (``<`` escaped)."""
    text = json.dumps(json_safe(data), separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def slice_confusion(label: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """``(D, K, K)`` int64: ``[z, g, p]`` counts the pixels of slice ``z`` with truth ``g`` and prediction ``p``."""
    gt, pred = np.asarray(label), np.asarray(prediction)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"label and prediction must be (D, H, W) of one shape, found {gt.shape} and {pred.shape}")
    _check_ids(gt, num_classes, "label")
    _check_ids(pred, num_classes, "prediction")
    k = int(num_classes)
    dtype = np.uint8 if k <= 16 else np.int64  # codes g * k + p up to k * k - 1
    out = np.empty((gt.shape[0], k, k), dtype=np.int64)
    for z in range(gt.shape[0]):
        codes = gt[z].astype(dtype) * dtype(k) + pred[z].astype(dtype)
        out[z] = np.bincount(codes.ravel(), minlength=k * k).reshape(k, k)
    return out


def _check_ids(labels: np.ndarray, num_classes: int, what: str) -> None:
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class ids, found dtype {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{what} ids must be in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}")


def select_slices(relevant: np.ndarray, score: np.ndarray, stride: int, max_slices: int) -> np.ndarray:
    """Sorted indices of every relevant slice and every ``stride``-th other one, at most ``max_slices``.

    When more qualify, the ``max_slices // 2`` with the highest positive ``score`` stay and evenly spaced picks
    among the other candidates fill the rest; never empty when ``D > 0``.
    """
    relevant = np.asarray(relevant, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    if stride < 1 or max_slices < 1:
        raise ValueError(f"stride and max_slices must be at least 1, got {stride} and {max_slices}")
    if relevant.shape != score.shape or relevant.ndim != 1:
        raise ValueError(f"relevant and score must be 1D of one length, found {relevant.shape} and {score.shape}")
    candidates = np.flatnonzero(relevant | (np.arange(relevant.size) % stride == 0))

    if candidates.size <= max_slices:
        return candidates.astype(np.int64)
    ranked = candidates[np.argsort(-score[candidates], kind="stable")]
    worst = ranked[: max_slices // 2]
    worst = worst[score[worst] > 0]
    rest = np.setdiff1d(candidates, worst)
    picks = rest[np.round(np.linspace(0, rest.size - 1, max_slices - worst.size)).astype(np.int64)]
    return np.union1d(worst, picks).astype(np.int64)


def _display_range(image: np.ndarray) -> tuple[float, float]:
    """Intensity window of a unit-representation volume: [0, 1] when it lies there (within 5 %), else its 0.5-99.5
    percentiles of the finite values."""
    if image.size == 0:
        return 0.0, 1.0
    lo, hi = float(image.min()), float(image.max())  # NaN when any value is NaN
    if lo >= -0.05 and hi <= 1.05:
        return 0.0, 1.0
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    if float(finite.min()) >= -0.05 and float(finite.max()) <= 1.05:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def open_report(
    path: Path, class_names: Sequence[str], *, title: str, kind: Literal["evaluation", "prediction"]
) -> HtmlReport | None:
    """An :class:`HtmlReport` at ``path``, or None with a warning when the classes outnumber the overlay colours."""
    if len(class_names) > len(OVERLAY_COLORS):
        logging.getLogger(__name__).warning(
            "report.html skipped: it draws at most %d classes and this model has %d",
            len(OVERLAY_COLORS),
            len(class_names),
        )
        return None
    return HtmlReport(path, class_names, title=title, kind=kind)


class HtmlReport:
    """Writer of one ``report.html``: add cases one by one, then :meth:`finish`.

    As a context manager, leaving the block without :meth:`finish` removes the temporary file and leaves any
    earlier ``report.html`` untouched. ``kind="evaluation"`` cases come with ground truth.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        class_names: Sequence[str],
        *,
        title: str,
        kind: Literal["evaluation", "prediction"] = "evaluation",
        max_side: int = MAX_SIDE,
        stride: int = BACKGROUND_STRIDE,
        max_slices: int = MAX_SLICES,
        jpeg_quality: int = JPEG_QUALITY,
    ) -> None:
        if len(class_names) > len(OVERLAY_COLORS):
            raise ValueError(f"the report draws at most {len(OVERLAY_COLORS)} classes, got {len(class_names)}")
        if kind not in ("evaluation", "prediction"):
            raise ValueError(f"kind must be 'evaluation' or 'prediction', got {kind!r}")
        if max_side < 8 or stride < 1 or max_slices < 1 or not 1 <= jpeg_quality <= 95:
            raise ValueError(
                f"need max_side >= 8, stride >= 1, max_slices >= 1 and jpeg_quality in 1..95; got {max_side}, "
                f"{stride}, {max_slices}, {jpeg_quality}"
            )
        self.path = Path(path)
        self.class_names = [str(c) for c in class_names]
        self.title = str(title)
        self.kind = kind
        self.max_side, self.stride, self.max_slices, self.jpeg_quality = max_side, stride, max_slices, jpeg_quality
        #: Seconds spent encoding and writing so far (cases and the page).
        self.seconds = 0.0
        #: ``{"name", "depth", "shown", "word"}`` per added case, in order.
        self.cases: list[dict[str, Any]] = []
        self._palette = [int(v) for v in OVERLAY_COLORS.reshape(-1)]
        self._empty: dict[tuple[int, ...], str] = {}  # the PNG of an empty label map, per shape
        started = time.perf_counter()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".tmp-{uuid.uuid4().hex[:12]}-{self.path.name}"
        import jinja2

        environment = jinja2.Environment(
            autoescape=True, trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
        )
        template = resources.files("msa2net.reporting").joinpath("report_template.html").read_text(encoding="utf-8")
        text = environment.from_string(template).render(report=self)
        head, self._tail = text.split(_CASES_MARKER)  # case data go between the two
        self._file: io.TextIOWrapper | None = open(self._tmp, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        self._file.write(head)
        self.seconds += time.perf_counter() - started

    # -- context manager ------------------------------------------------------------------------------------------

    def __enter__(self) -> HtmlReport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()

    def abort(self) -> None:
        """Drop the temporary file (nothing happens after :meth:`finish`)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._tmp.unlink(missing_ok=True)

    # -- cases ----------------------------------------------------------------------------------------------------

    def add_case(
        self,
        name: str,
        image: np.ndarray,
        prediction: np.ndarray,
        label: np.ndarray | None = None,
        spacing: Sequence[float] | None = None,
        word: str = "slice",
    ) -> dict[str, Any]:
        """Encode one ``(D, H, W[, C])`` case and append it to the page; returns ``{"name", "depth", "shown"}``.

        ``image`` is in the unit representation; ``label`` is required for an evaluation; ``spacing`` ``(z, y, x)``
        keeps the pixel aspect on screen. A failed write leaves the page as it was before this case.
        """
        if self._file is None:
            raise ValueError("the report is finished or aborted; no case can be added")
        started = time.perf_counter()
        pred = np.asarray(prediction)
        if pred.ndim != 3:
            raise ValueError(f"prediction must be (D, H, W), found shape {pred.shape}")
        img = np.asarray(image)
        if img.ndim == 4 and img.shape[3] != 3:  # (D, H, W) or (D, H, W, 3): other channel counts show their first
            img = img[..., 0]
        if img.shape[:3] != pred.shape:
            raise ValueError(f"image shape {img.shape} does not match prediction shape {pred.shape}")
        k = len(self.class_names)
        depth, height, width = pred.shape
        if self.kind == "evaluation":
            if label is None:
                raise ValueError("an evaluation report needs the ground truth of every case")
            conf = slice_confusion(label, pred, k)
            diag = np.einsum("zcc->zc", conf)
            per_class = conf.sum(axis=2) + conf.sum(axis=1) - 2 * diag  # false positives + false negatives
            relevant = (conf.sum(axis=(1, 2)) - conf[:, 0, 0]) > 0
            score_name = "false-positive + false-negative pixels"
            gt = np.asarray(label)
        else:
            _check_ids(pred, k, "prediction")
            per_class = np.stack([np.bincount(pred[z].astype(np.int64).ravel(), minlength=k) for z in range(depth)])
            relevant = per_class[:, 1:].sum(axis=1) > 0
            score_name = "predicted pixels"
            gt = None
        scores = per_class[:, 1:]
        keep = select_slices(relevant, scores.sum(axis=1), self.stride, self.max_slices)

        scale = min(1.0, self.max_side / max(height, width))
        shown_h, shown_w = max(1, round(height * scale)), max(1, round(width * scale))
        rows = ((np.arange(shown_h) + 0.5) * height / shown_h).astype(np.int64)
        cols = ((np.arange(shown_w) + 0.5) * width / shown_w).astype(np.int64)
        lo, hi = _display_range(img)
        has_nan = bool(np.isnan(img.min())) if np.issubdtype(img.dtype, np.floating) and img.size else False
        aspect = height / width
        if spacing is not None and len(spacing) >= 2 and all(float(s) > 0 for s in spacing[-2:]):
            aspect *= float(spacing[-2]) / float(spacing[-1])
        data = {
            "name": str(name),
            "depth": int(depth),
            "size": [int(height), int(width)],
            "shown": [shown_h, shown_w],
            "aspect": aspect,
            "word": str(word),
            "spacing": None if spacing is None else [float(s) for s in spacing],
            "z": [int(z) for z in keep],
            "img_type": "jpeg",
            "img": [self._encode_image(img[z], lo, hi, (shown_w, shown_h), has_nan) for z in keep],
            "gt": None if gt is None else [self._encode_labels(gt[z].take(rows, 0).take(cols, 1)) for z in keep],
            "pred": [self._encode_labels(pred[z].take(rows, 0).take(cols, 1)) for z in keep],
            "score_name": score_name,
            "scores": {str(c + 1): [int(v) for v in scores[:, c]] for c in range(k - 1)},
        }
        chunk = (
            f'<script type="application/json" class="case-data" data-index="{len(self.cases)}">'
            f"{_json_for_script(data)}</script>\n"
        )
        position = self._file.tell()
        try:
            self._file.write(chunk)
            self._file.flush()
        except BaseException:
            self._file.seek(position)
            self._file.truncate()
            raise
        record = {"name": str(name), "depth": int(depth), "shown": [int(z) for z in keep]}
        self.cases.append({**record, "word": str(word)})
        self.seconds += time.perf_counter() - started
        return record

    def _encode_image(self, slice2d: np.ndarray, lo: float, hi: float, size: tuple[int, int], has_nan: bool) -> str:
        """Base64 JPEG of one slice: ``[lo, hi]`` mapped to 0..255, shrunk to ``size`` (W, H) with a box filter."""
        from PIL import Image

        pixels = np.array(slice2d, dtype=np.float32)  # a copy, scaled in place
        if has_nan:
            np.nan_to_num(pixels, copy=False, nan=lo)
        pixels -= lo
        pixels *= 255.0 / (hi - lo)
        pixels += 0.5
        np.clip(pixels, 0, 255, out=pixels)
        picture = Image.fromarray(pixels.astype(np.uint8))
        width, height = picture.size
        factor = width // size[0]
        if picture.size == (size[0] * factor, size[1] * factor) and factor > 1:
            picture = picture.reduce(factor)  # the same box filter, faster
        elif picture.size != size:
            picture = picture.resize(size, Image.Resampling.BOX)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=self.jpeg_quality)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def _encode_labels(self, labels2d: np.ndarray) -> str:
        """Base64 palette PNG of a label map: ids index :data:`OVERLAY_COLORS`, id 0 transparent."""
        from PIL import Image

        empty = not labels2d.any()
        if empty and labels2d.shape in self._empty:
            return self._empty[labels2d.shape]
        picture = Image.fromarray(np.asarray(labels2d).astype(np.uint8))
        picture.putpalette(self._palette)  # an "L" image with a palette becomes a "P" image
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", transparency=0)
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        if empty:
            self._empty[labels2d.shape] = encoded
        return encoded

    # -- page -----------------------------------------------------------------------------------------------------

    def finish(
        self,
        *,
        evaluation: Summary | Mapping[str, Any] | None = None,
        predictions: Mapping[str, Any] | None = None,
        history: Sequence[Mapping[str, float]] | None = None,
        history_note: str = "",
        mark_epoch: int | None = None,
        notes: Sequence[str] = (),
    ) -> Path:
        """Write the page around the cases and move it into place; returns the written ``report.html``.

        ``evaluation`` is a per-case or pooled summary (typed or JSON), ``predictions`` the ``predictions.json``
        record of a prediction run, ``history`` the training rows drawn as curves (``mark_epoch`` dashed).
        """
        if self._file is None:
            raise ValueError("the report is finished or aborted")
        started = time.perf_counter()
        summary = as_summary(evaluation) if evaluation is not None else None
        page = self._page(summary, predictions, history, history_note, mark_epoch, notes)
        self._file.write(self._tail.replace("__PAGE__", _json_for_script(page)))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.path)
        self.seconds += time.perf_counter() - started
        return self.path

    def _page(
        self,
        evaluation: Summary | None,
        predictions: Mapping[str, Any] | None,
        history: Sequence[Mapping[str, float]] | None,
        history_note: str,
        mark_epoch: int | None,
        notes: Sequence[str],
    ) -> dict[str, Any]:
        page: dict[str, Any] = {
            "title": self.title,
            "kind": self.kind,
            "subtitle": "",
            "notes": [str(n) for n in notes],
            "settings": [],
            "summary_heading": "Summary",
            "tables_html": "",
            "classes": [
                {"id": i, "name": n, "colour": _hex(OVERLAY_COLORS[i])} for i, n in enumerate(self.class_names) if i
            ],
            "case_columns": [],
            "case_rows": [],
            "default_sort": {"key": "dice", "ascending": True},
            "history": _history_page(history, self.class_names, history_note, mark_epoch) if history else None,
            "cases_heading": "Cases",
            "cases": [],
        }
        means: dict[str, float] = {}
        if isinstance(evaluation, CaseSummary):
            page["settings"] = _settings_rows(evaluation.settings)
            page["subtitle"] = (
                f"{int(evaluation.n_cases)} case(s), {len(self.class_names) - 1} classes; msa2net {__version__}"
            )
            page["summary_heading"] = "Summary (from summary.json)"
            page["tables_html"] = "".join(_table_html(*t) for t in evaluation_tables(evaluation))
            page["case_columns"], page["case_rows"] = _case_table(evaluation, self.class_names)
            means = _case_means(evaluation)
            page["cases_heading"] = "Cases, worst mean Dice first"
        elif isinstance(evaluation, PooledSummary):
            page["settings"] = _settings_rows(evaluation.settings)
            page["subtitle"] = f"{int(evaluation.n_images)} image(s), pixels pooled; msa2net {__version__}"
            page["summary_heading"] = "Pooled scores (from summary.json)"
            pooled = evaluation.pooled
            page["tables_html"] = _table_html(
                "Scores of the pixels of every test image pooled (ISIC protocol), in percent"
                + (", after opening and hole filling" if evaluation.postprocess else "")
                + ".",
                ["Metric", *(str(k) for k in pooled)],
                [["percent", *(cell(v, 100.0) for v in pooled.values())]],
            )
        elif predictions is not None:
            page["subtitle"] = (
                f"{len(self.cases)} input(s) segmented; no ground truth, no scores; msa2net {__version__}"
            )
            page["summary_heading"] = "Predicted voxels per class"
            page["settings"] = _settings_rows(
                {k: predictions.get(k) for k in ("checkpoint", "model_name", "device", "tta", "amp")}
            )
            names = self.class_names[1:]
            rows = [
                [
                    Path(str(c["input"])).name,
                    " x ".join(str(s) for s in c["shape"]),
                    "n/a" if not c.get("spacing") else " x ".join(f"{float(s):g}" for s in c["spacing"]),
                    *(f"{int(c['counts'].get(n, 0)):,}" for n in names),
                ]
                for c in predictions.get("cases", [])
            ]
            page["tables_html"] = _table_html(
                "Voxels (pixels) of each class in each predicted mask, from predictions.json.",
                ["Input", "shape", "spacing (mm)", *names],
                rows,
            )
            failed = predictions.get("failed") or []
            if failed:
                page["tables_html"] += _table_html(
                    "Inputs that could not be segmented.",
                    ["Input", "reason"],
                    [[str(f["input"]), str(f["reason"])] for f in failed],
                )
            page["cases_heading"] = "Inputs"
        order = list(range(len(self.cases)))
        if means:
            order.sort(key=lambda i: (_nan_last(means.get(self.cases[i]["name"], math.nan)), i))
        for i in order:
            case = self.cases[i]
            shown = f"{len(case['shown'])} of {case['depth']} {case['word']}s shown" if case["depth"] > 1 else "2D"
            summary = f"{case['name']}: {shown}"
            if case["name"] in means:
                summary = f"{case['name']}: mean Dice {cell(means[case['name']], 100.0)} %, {shown}"
            info = (
                f"{case['name']}: shown slices {_ranges(case['shown'])} of 0..{case['depth'] - 1}."
                if case["depth"] > 1
                else f"{case['name']}: a single 2D image."
            )
            page["cases"].append({"index": i, "name": case["name"], "summary": summary, "info": info})
        return page


def _nan_last(value: float) -> float:
    return math.inf if value is None or math.isnan(value) else value


def _ranges(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    runs = [[z for _, z in run] for _, run in itertools.groupby(enumerate(indices), lambda iz: iz[1] - iz[0])]
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def _table_html(caption: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<p>{esc(caption.replace('`', ''))}</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _settings_rows(settings: Mapping[str, Any]) -> list[list[str]]:
    return [
        [str(key), ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)]
        for key, value in settings.items()
        if value is not None
    ]


def _case_table(summary: CaseSummary, class_names: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """Columns and rows of the per-case, per-class table, straight from ``summary.cases``."""
    ids = {name: i for i, name in enumerate(class_names)}
    metrics = [str(m) for m in summary.metrics]
    columns: list[dict[str, Any]] = [
        {"key": "case_id", "label": "Case", "kind": "text"},
        {"key": "class_name", "label": "Class", "kind": "text"},
    ]
    for metric in (m for m in metrics if m not in _FLAG_COLUMNS):
        label, scale, digits, title = _METRIC_COLUMNS.get(metric, (metric, 1.0, 3, metric))
        columns.append(
            {"key": metric, "label": label, "kind": "number", "scale": scale, "digits": digits, "title": title}
        )
    for metric in metrics:
        if metric in _FLAG_COLUMNS:
            columns.append({"key": metric, "label": _FLAG_COLUMNS[metric], "kind": "flag", "ascending": False})
    rows = []
    for row in summary.cases or []:
        entry = {k: row.get(k) for k in ("case_id", "class_name", *metrics)}
        entry["class_id"] = ids.get(str(row.get("class_name")))
        rows.append(entry)
    return columns, json_safe(rows)  # type: ignore[return-value]


def _case_means(summary: CaseSummary) -> dict[str, float]:
    """Mean legacy Dice over the classes of each case (undefined values left out), from ``summary.cases``."""
    values: dict[str, list[float]] = {}
    for row in summary.cases or []:
        values.setdefault(str(row["case_id"]), []).append(number(row.get("dice")))
    return {case: mean_omit_nan(v) for case, v in values.items()}


def _history_page(
    history: Sequence[Mapping[str, float]], class_names: Sequence[str], note: str, mark_epoch: int | None
) -> dict[str, Any]:
    """The curves' numbers: per epoch loss, learning rate, validation mean Dice and Dice per class."""

    def column(key: str) -> list[float | None]:  # NaN and inf become null with the rest of the page's JSON
        return [None if row.get(key) is None else float(row[key]) for row in history]

    names = list(dict.fromkeys(k[len("val_dice_") :] for row in history for k in row if k.startswith("val_dice_")))
    index = {name: i for i, name in enumerate(class_names)}
    val = [
        {
            "name": name,
            "colour": _hex(OVERLAY_COLORS[index[name]]) if index.get(name, 0) > 0 else "#888888",
            "values": column(f"val_dice_{name}"),
        }
        for name in names
    ]

    return {
        "epochs": [int(round(float(row["epoch"]))) for row in history],
        "loss": column("train_loss"),
        "lr": column("lr"),
        "val_mean": column("val_mean_dice"),
        "val": val,
        "note": note,
        "mark_epoch": mark_epoch,
    }
