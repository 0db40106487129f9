"""The demo's ``report.md``: what was trained on which phantom, the evaluation's tables, curves and overlays."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._atomic import write_text_atomic
from .summary import CaseSummary, as_summary, number

__all__ = ["write_demo_report"]


def write_demo_report(
    path: str | os.PathLike[str],
    *,
    model_name: str,
    img_size: Sequence[int],
    n_cases: int,
    evaluation: CaseSummary | Mapping[str, Any],
    table: str,
    best_mean_dice: float,
    best_epoch: int,
    curves: str,
    overlays: Sequence[str],
    seconds: Mapping[str, float],
) -> Path:
    """Write the demo's ``report.md`` (the evaluation's mean Dice and test cases, ``table``, curves, overlays and
    step durations), atomically; TypeError for a pooled summary or one without its rows."""
    summary = as_summary(evaluation)
    if not isinstance(summary, CaseSummary) or summary.cases is None:
        raise TypeError("the demo report quotes a per-case evaluation summary with its per-case rows")
    mean_dice = number(summary.legacy.mean_dice)
    test_cases = list(dict.fromkeys(str(row["case_id"]) for row in summary.cases))
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
