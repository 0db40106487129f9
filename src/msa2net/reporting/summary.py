"""Evaluation summaries, typed: :class:`CaseSummary` (legacy and millimetre figures per case and class) or
:class:`PooledSummary` (ISIC 2018: pixels pooled over the test images). ``to_json`` is exactly ``summary.json``
(undefined figures ``null``) and ``from_json`` reads it back; :func:`summary_from_json` tells the kinds apart."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._json import json_safe
from .aggregate import MetricAggregator, PooledBinaryMetrics, mean_omit_nan

__all__ = [
    "CaseSummary",
    "ClassTotals",
    "Figure",
    "LegacyFigures",
    "MillimetreFigures",
    "PooledSummary",
    "Summary",
    "SummaryError",
    "as_summary",
    "build_evaluation_summary",
    "build_isic_summary",
    "number",
    "read_summary",
    "summary_from_json",
]

#: A reported figure: a float, or NaN / None (JSON ``null``) when undefined.
Figure = float | None

_MM_NOTE = "hd95_mm omits failures (an empty prediction or ground truth) from the means and counts them"


class SummaryError(ValueError):
    """Data that is not an evaluation summary of ``msa2net evaluate``; the message says what is missing."""


def number(value: object) -> float:
    """A summary figure as a float: ``None`` (JSON null) becomes NaN."""
    return float("nan") if value is None else float(value)  # type: ignore[arg-type]


def _require(data: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise SummaryError(f"{where} lacks {missing}")


@dataclass
class _Summary:
    """What both kinds of summary hold first: the evaluation's settings."""

    settings: dict[str, Any]

    @property
    def title(self) -> str:
        """Row label of the tables: ``settings.title``, else the checkpoint's model name."""
        return str(self.settings.get("title") or self.settings.get("model", "model"))


@dataclass
class LegacyFigures:
    """The paper's legacy protocol: Dice and HD95 in voxels (a miss scores 0); means are plain means over classes."""

    mean_dice: Figure
    mean_hd95_voxels: Figure
    per_class_dice: dict[str, Figure]
    per_class_hd95_voxels: dict[str, Figure]


@dataclass
class MillimetreFigures:
    """HD95 in millimetres with failures (an empty prediction or ground truth) left out of the means and counted,
    and the normalised surface Dice."""

    mean_hd95_mm: Figure
    per_class_hd95_mm: dict[str, Figure]
    per_class_failures: dict[str, int]
    n_failed: int
    n_values: int
    per_class_nsd: dict[str, Figure]
    note: str = _MM_NOTE


@dataclass
class ClassTotals:
    """One class over the cases: how many cases have it, the metric means (NaN omitted) and the NaN counts."""

    n_cases: int
    mean: dict[str, Figure]
    n_failed: dict[str, int]


@dataclass
class CaseSummary(_Summary):
    """An evaluation scored per case; the fields are the keys of ``summary.json`` (``cases`` None: left out)."""

    class_names: list[str]
    legacy: LegacyFigures
    mm: MillimetreFigures
    n_cases: int
    classes: list[str]
    metrics: list[str]
    per_class: dict[str, ClassTotals]
    mean: dict[str, Figure]
    cases: list[dict[str, Any]] | None = None

    @property
    def foreground(self) -> list[str]:
        """The reported classes: ``class_names[1:]``."""
        return [str(c) for c in self.class_names[1:]]

    @classmethod
    def build(
        cls,
        aggregator: MetricAggregator,
        class_names: Sequence[str],
        settings: Mapping[str, Any],
        empty: str | float,
        title: str | None = None,
    ) -> CaseSummary:
        """The summary of an aggregator filled with :func:`msa2net.metrics.legacy_case_scores` rows of every case.

        Legacy means are plain means over classes; ``mm.mean_hd95_mm`` is the mean of the class means without
        failures (None when no class has a value), and the failures are counted.
        """
        totals = aggregator.summary()
        foreground = [str(c) for c in class_names[1:]]
        per_class: Mapping[str, Any] = totals["per_class"]  # type: ignore[assignment]
        unknown = [c for c in foreground if c not in per_class]
        if unknown:
            raise ValueError(f"the aggregator holds no rows for classes {unknown}")

        def means(metric: str) -> dict[str, Figure]:
            return {c: per_class[c]["mean"].get(metric) for c in foreground}

        legacy_dice, legacy_hd, mm_hd = means("dice"), means("hd95"), means("hd95_mm")
        failed = {c: int(per_class[c]["n_failed"].get("hd95_mm", 0)) for c in foreground}
        mean_mm = mean_omit_nan([number(v) for v in mm_hd.values()])
        return cls(
            settings={**settings, "empty_policy_mm": empty, "title": title or str(settings.get("model", "model"))},
            class_names=[str(c) for c in class_names],
            legacy=LegacyFigures(
                mean_dice=float(np.mean([number(v) for v in legacy_dice.values()])),
                mean_hd95_voxels=float(np.mean([number(v) for v in legacy_hd.values()])),
                per_class_dice=legacy_dice,
                per_class_hd95_voxels=legacy_hd,
            ),
            mm=MillimetreFigures(
                mean_hd95_mm=None if math.isnan(mean_mm) else mean_mm,
                per_class_hd95_mm=mm_hd,
                per_class_failures=failed,
                n_failed=sum(failed.values()),
                n_values=sum(int(per_class[c]["n_cases"]) for c in foreground),
                per_class_nsd=means("nsd"),
            ),
            n_cases=int(totals["n_cases"]),  # type: ignore[call-overload]
            classes=list(totals["classes"]),  # type: ignore[call-overload]
            metrics=list(totals["metrics"]),  # type: ignore[call-overload]
            per_class={name: ClassTotals(**values) for name, values in per_class.items()},
            mean=dict(totals["mean"]),  # type: ignore[call-overload]
            cases=list(totals["cases"]),  # type: ignore[call-overload]
        )

    def without_cases(self) -> CaseSummary:
        """A copy without the per-case rows (what a published ``config.json`` keeps)."""
        return dataclasses.replace(self, cases=None)

    def to_json(self) -> dict[str, Any]:
        """The content of ``summary.json``: the fields in order, undefined figures ``null``, no ``cases`` key when
        the rows were left out."""
        data: dict[str, Any] = json_safe(dataclasses.asdict(self))  # type: ignore[assignment]
        if self.cases is None:
            del data["cases"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseSummary:
        """Read :meth:`to_json` content back (also without ``cases``), copied; SummaryError for a missing key."""
        _require(data, [f.name for f in dataclasses.fields(cls) if f.name != "cases"], "the summary")
        data = copy.deepcopy(dict(data))  # the summary owns its figures: editing it leaves the caller's data alone
        legacy, mm = data["legacy"], data["mm"]
        _require(legacy, ("mean_dice", "mean_hd95_voxels", "per_class_dice", "per_class_hd95_voxels"), "legacy")
        _require(mm, ("mean_hd95_mm", "per_class_hd95_mm", "per_class_failures", "n_failed", "n_values"), "mm")
        cases = data.get("cases")
        mm_fields = {f.name: mm[f.name] for f in dataclasses.fields(MillimetreFigures) if f.name in mm}
        mm_fields.setdefault("per_class_nsd", {})  # NSD off: absent from hand-made summaries
        return cls(
            settings=dict(data["settings"] or {}),
            class_names=list(data["class_names"]),
            legacy=LegacyFigures(**{f.name: legacy[f.name] for f in dataclasses.fields(LegacyFigures)}),
            mm=MillimetreFigures(**mm_fields),
            n_cases=data["n_cases"],
            classes=list(data["classes"]),
            metrics=list(data["metrics"]),
            per_class={
                str(name): ClassTotals(n_cases=t["n_cases"], mean=dict(t["mean"]), n_failed=dict(t["n_failed"]))
                for name, t in data["per_class"].items()
            },
            mean=dict(data["mean"]),
            cases=[dict(row) for row in cases] if cases is not None else None,
        )


@dataclass
class PooledSummary(_Summary):
    """An evaluation whose pixels are pooled over every test image (the ISIC 2018 protocol), scores as fractions."""

    n_images: int
    pooled: dict[str, Figure]

    @property
    def postprocess(self) -> bool:
        """Whether the predictions were post-processed (opening + hole filling) before counting."""
        return bool(self.settings.get("postprocess"))

    @classmethod
    def build(cls, pooled: PooledBinaryMetrics, settings: Mapping[str, Any], n_images: int) -> PooledSummary:
        """The summary of pooled counts; ``settings`` gains ``postprocess`` from ``pooled``."""
        return cls({**settings, "postprocess": pooled.postprocess}, int(n_images), pooled.compute())

    def to_json(self) -> dict[str, Any]:
        """The content of ``summary.json``: ``{"settings", "n_images", "pooled"}``."""
        return json_safe(dataclasses.asdict(self))  # type: ignore[return-value]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PooledSummary:
        """Read :meth:`to_json` content back, copied; SummaryError for a missing key."""
        _require(data, ("settings", "n_images", "pooled"), "the pooled summary")
        data = copy.deepcopy(dict(data))
        return cls(dict(data["settings"] or {}), data["n_images"], dict(data["pooled"]))


#: Either kind of evaluation summary.
Summary = CaseSummary | PooledSummary


def summary_from_json(data: Mapping[str, Any]) -> Summary:
    """The typed summary of ``summary.json`` content: pooled (``pooled``) or per case (``legacy``/``mm``/...)."""
    if not isinstance(data, Mapping):
        raise SummaryError(f"an evaluation summary is a JSON object, not a {type(data).__name__}")
    if "pooled" in data:
        return PooledSummary.from_json(data)
    if {"legacy", "mm", "per_class"} <= set(data):
        return CaseSummary.from_json(data)
    raise SummaryError("expected legacy/mm/per_class or pooled figures")


def as_summary(value: Summary | Mapping[str, Any]) -> Summary:
    """``value`` itself when typed, else :func:`summary_from_json` of it."""
    return value if isinstance(value, _Summary) else summary_from_json(value)


def read_summary(path: str | os.PathLike[str]) -> Summary:
    """The typed summary of a ``summary.json`` file; SummaryError names a file that is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SummaryError(f"cannot read evaluation summary {path}: {exc}") from exc
    try:
        return summary_from_json(data)
    except SummaryError as exc:
        raise SummaryError(f"{path} is not a summary.json of `msa2net evaluate` ({exc})") from exc


def build_evaluation_summary(
    aggregator: MetricAggregator,
    class_names: Sequence[str],
    settings: Mapping[str, Any],
    empty: str | float,
    title: str | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` content of :meth:`CaseSummary.build` (undefined figures ``null``)."""
    return CaseSummary.build(aggregator, class_names, settings, empty, title).to_json()


def build_isic_summary(pooled: PooledBinaryMetrics, settings: Mapping[str, Any], n_images: int) -> dict[str, Any]:
    """The ``summary.json`` content of :meth:`PooledSummary.build`: ``{"settings": {..., "postprocess"},
    "n_images", "pooled": scores}``."""
    return PooledSummary.build(pooled, settings, n_images).to_json()
