"""The training history: ``metrics.csv`` (one row per epoch) and the curves drawn from it."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._atomic import atomic_path, write_text_atomic

__all__ = ["plot_curves", "read_metrics_csv", "write_metrics_csv"]


def write_metrics_csv(path: str | os.PathLike[str], history: Sequence[Mapping[str, float]]) -> Path | None:
    """Write the per-epoch history as CSV, atomically (columns in order of first appearance); None when empty."""
    if not history:
        return None
    buffer = io.StringIO()
    keys = list(dict.fromkeys(key for row in history for key in row))
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return write_text_atomic(path, buffer.getvalue())


def read_metrics_csv(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Read a :func:`write_metrics_csv` file back: one dict per row, every cell a float (an empty cell is NaN)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            {key: float(value) if value not in ("", None) else float("nan") for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def plot_curves(history: Sequence[Mapping[str, float]], path: str | os.PathLike[str]) -> Path:
    """Training loss per epoch (left) and validation mean Dice (right, finite values) as a PNG, atomically.

    Points carry markers (so a single epoch shows), and the epoch axes have integer ticks only.
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
    ax1.set_ylabel("training loss")
    val = [(r["epoch"], r["val_mean_dice"]) for r in history if math.isfinite(r.get("val_mean_dice", math.nan))]
    if val:
        ax2.plot(*zip(*val), marker="o", markersize=4, color="tab:green")
    ax2.set(ylabel="validation mean Dice", ylim=(0, 1))
    if epochs:
        lo, hi = min(epochs), max(epochs)
        margin = max(0.5, 0.03 * (hi - lo))
        for ax in (ax1, ax2):
            ax.set_xlim(lo - margin, hi + margin)
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.tight_layout()
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return target
