"""Tables of an evaluation: the paper's layout, the millimetre figures, and the files an evaluation leaves.

Every figure is read from a :class:`~msa2net.reporting.summary.CaseSummary` (also one read back from
``summary.json``), and :func:`evaluation_tables` gives the cells that ``table.md``, ``report.html`` and the model card
all print, so they show the same numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import write_text_atomic
from .._json import write_json
from ..constants import SYNAPSE_CLASS_NAMES
from .aggregate import MetricAggregator
from .summary import CaseSummary, as_summary, number

__all__ = [
    "MISSING",
    "SYNAPSE_COLUMNS",
    "Table",
    "cell",
    "evaluation_tables",
    "format_evaluation_tables",
    "format_paper_table",
    "markdown_table",
    "write_evaluation_report",
]

#: Column headers of the paper's Synapse table for classes 1..8 of :data:`msa2net.constants.SYNAPSE_CLASS_NAMES`.
SYNAPSE_COLUMNS: tuple[str, ...] = ("Spl", "RKid", "LKid", "Gal", "Liv", "Sto", "Aor", "Pan")

#: Text shown in a table cell for a figure that is undefined (NaN in memory, ``null`` in JSON).
MISSING = "n/a"

#: A table as cells: ``(caption, header, rows)``.
Table = tuple[str, list[str], list[list[str]]]


def cell(value: object, scale: float = 1.0) -> str:
    """``scale * value`` with two decimals, or :data:`MISSING` when undefined (None or NaN)."""
    figure = number(value)
    return MISSING if math.isnan(figure) else f"{scale * figure:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Header, alignment (first column left, the others right) and rows, separated by newlines."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_paper_table(
    per_class_dice: Mapping[str, float | None],
    per_class_hd95: Mapping[str, float | None],
    classes: Sequence[str],
    title: str,
    columns: Sequence[str] | None = None,
    *,
    mean_dice: float | None = None,
    mean_hd95: float | None = None,
) -> str:
    """One method's results in the layout of the paper's Synapse table (``Method | DSC | HD95 | classes``), markdown.

    Dice as percentages, two decimals, ``n/a`` when undefined; ``mean_dice``/``mean_hd95`` default to plain means
    over ``classes`` (reports pass their summary's figures), ``columns`` to :data:`SYNAPSE_COLUMNS` for the organs.
    """
    headers, row = _paper_row(per_class_dice, per_class_hd95, classes, title, columns, mean_dice, mean_hd95)
    return markdown_table(["Method", "DSC", "HD95", *headers], [row])


def _paper_row(
    per_class_dice: Mapping[str, float | None],
    per_class_hd95: Mapping[str, float | None],
    classes: Sequence[str],
    title: str,
    columns: Sequence[str] | None,
    mean_dice: float | None,
    mean_hd95: float | None,
) -> tuple[list[str], list[str]]:
    """Class column headers and the result row of :func:`format_paper_table`, after its checks."""
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes must name at least one class")
    missing = [n for n in names if n not in per_class_dice or n not in per_class_hd95]
    if missing:
        raise KeyError(f"classes {missing} are missing from per_class_dice or per_class_hd95")
    if columns is None:  # the paper's abbreviations for the 8 Synapse organs in label order, else the class names
        headers = list(SYNAPSE_COLUMNS) if tuple(names) == SYNAPSE_CLASS_NAMES[1:] else list(names)
    else:
        headers = [str(c) for c in columns]
        if len(headers) != len(names):
            raise ValueError(f"columns has {len(headers)} headers for {len(names)} classes")
    dice_values = [number(per_class_dice[n]) for n in names]
    if any(v > 1.0 for v in dice_values if not math.isnan(v)):
        raise ValueError("per_class_dice must be fractions in [0, 1]; the table converts them to percentages")
    dsc = float(np.mean(dice_values)) if mean_dice is None else mean_dice
    hd = float(np.mean([number(per_class_hd95[n]) for n in names])) if mean_hd95 is None else mean_hd95
    return headers, [title, cell(dsc, 100.0), cell(hd), *(cell(v, 100.0) for v in dice_values)]


#: What each ``--empty`` policy means, for the millimetre table's caption (a number of mm is said as such).
_EMPTY_RULES = {
    "nan": "Failures (HD95 undefined: the prediction or the ground truth is empty) are left out of the means and "
    "counted in the `failed` row.",
    "diagonal": "An empty prediction or ground truth scores the diagonal of the image.",
    "legacy": "An empty prediction or ground truth scores 0 mm, as in the legacy protocol.",
}


def evaluation_tables(summary: CaseSummary | Mapping[str, Any]) -> list[Table]:
    """The two tables of a per-case evaluation as ``(caption, header, rows)`` cells, which ``table.md``,
    ``report.html`` and the model card all print: the legacy protocol in the paper's layout, and the millimetre
    figures (HD95 mm, failures, NSD when computed). TypeError for a pooled summary.
    """
    summary = as_summary(summary)
    if not isinstance(summary, CaseSummary):
        raise TypeError("evaluation_tables needs a per-case summary; pooled scores have no per-class tables")
    settings, title, names = summary.settings, summary.title, summary.foreground
    legacy, mm = summary.legacy, summary.mm
    # the same checks and cells as format_paper_table, which table.md has always printed
    headers, legacy_row = _paper_row(
        legacy.per_class_dice,
        legacy.per_class_hd95_voxels,
        names,
        title,
        None,
        number(legacy.mean_dice),
        number(legacy.mean_hd95_voxels),
    )
    rows = [
        ["HD95 (mm)", cell(mm.mean_hd95_mm), *(cell(mm.per_class_hd95_mm[c]) for c in names)],
        [
            "failed",
            f"{int(mm.n_failed)}/{int(mm.n_values)}",
            *(f"{int(mm.per_class_failures[c])}/{int(summary.per_class[c].n_cases)}" for c in names),
        ],
    ]
    nsd = mm.per_class_nsd
    with_nsd = any(nsd.get(c) is not None for c in names)
    if with_nsd:
        tolerance = settings.get("nsd_tolerance_mm")
        label = "NSD" if tolerance is None else f"NSD ({number(tolerance):g} mm)"
        rows.append([label, cell(summary.mean.get("nsd"), 100.0), *(cell(nsd.get(c), 100.0) for c in names)])
    legacy_caption = (
        f"Legacy protocol (the paper's table), {title}: Dice in percent, HD95 in voxels (slices count as 1); a missed "
        "organ scores Dice 0 and HD95 0, an organ predicted where there is none Dice 1 and HD95 0."
    )
    empty = settings.get("empty_policy_mm")
    rule = _EMPTY_RULES.get(empty) or f"An empty prediction or ground truth scores {number(empty):g} mm."
    mm_caption = (
        f"HD95 in mm, {title}: with the voxel spacing of each case, empty={empty}. {rule} Class means "
        "are over cases, the Mean column is the mean over classes of the class means (classes without a value left "
        f"out){'; NSD in percent' if with_nsd else ''}."
    )
    return [
        (legacy_caption, ["Method", "DSC", "HD95", *headers], [legacy_row]),
        (mm_caption, ["Metric", "Mean", *headers], rows),
    ]


def format_evaluation_tables(summary: CaseSummary | Mapping[str, Any]) -> str:
    """The text of ``table.md``: the tables of :func:`evaluation_tables` as markdown, each after its caption."""
    blocks = [f"{caption}\n\n{markdown_table(header, rows)}" for caption, header, rows in evaluation_tables(summary)]
    return "\n\n".join(blocks) + "\n"


def write_evaluation_report(
    out_dir: str | os.PathLike[str], summary: CaseSummary | Mapping[str, Any], aggregator: MetricAggregator
) -> dict[str, Path]:
    """Write ``summary.json`` (strict JSON), ``per_case.csv`` and ``table.md`` into ``out_dir``, atomically."""
    summary = as_summary(summary)
    out = Path(out_dir)
    return {
        "summary": write_json(out / "summary.json", summary.to_json()),
        "per_case": aggregator.write_csv(out / "per_case.csv"),
        "table": write_text_atomic(out / "table.md", format_evaluation_tables(summary)),
    }
