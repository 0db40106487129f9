"""Evaluation of a checkpoint on a labelled test set: the paper's legacy protocol and honest millimetre figures."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..data.io import Geometry, write_image
from ..data.preprocessing import Preprocessing
from ..data.source import Case, Source, open_source
from ..metrics import legacy_case_scores
from ..report import (
    MetricAggregator,
    PooledBinaryMetrics,
    build_evaluation_summary,
    build_isic_summary,
    write_evaluation_report,
    write_json,
    write_overlay_png,
)
from .checkpoint import load_checkpoint, model_from_checkpoint
from .distributed import resolve_device
from .inference import AmpCheck, predict_volume


def evaluate(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cases: list[str] | None = None,
    device: str = "auto",
    batch_size: int = 16,
    tta: bool = False,
    amp: str | None = None,
    empty: str | float = "nan",
    nsd_tolerance_mm: float | None = 2.0,
    save_predictions: bool = False,
    overlays_per_case: int = 3,
    postprocess: bool = False,
    progress: bool = True,
    title: str | None = None,
    kind: str | None = None,
    compare_fp32: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint (ours or the authors') and write the report into ``out_dir``.

    Synapse and dataset folders: per case and class, the legacy protocol's Dice and HD95 (voxels, the paper's
    empty-mask rules) and the honest figures: HD95 in millimetres with the case's spacing under the ``empty``
    policy (``"nan"``: a missed or hallucinated organ is a failure, counted, not a 0) and normalised surface Dice
    at ``nsd_tolerance_mm``. Writes ``summary.json``, ``per_case.csv``, ``table.md``, optional NIfTI predictions
    (``predictions/``, in the source geometry where known) and overlay PNGs (``overlays/``).

    ISIC 2018: pixels pooled over the test split (DSC, IoU, sensitivity, specificity, accuracy), optionally
    after the opening + hole-filling post-process of that protocol.

    ``data`` is any dataset folder :func:`~msa2net.data.source.open_source` recognises (``kind`` forces one); the
    cases are ``cases``, else the source's evaluation cases (Synapse and ISIC: the test set; dataset folders:
    every labelled case).

    ``compare_fp32`` (with ``amp``) also segments every case in float32 and records the agreement of the
    mixed-precision labels with the float32 ones in ``summary.json`` under ``settings.amp_check``
    (:class:`~msa2net.engine.inference.AmpCheck`: share of identical labels, legacy Dice change per class); the
    reported scores stay those of the mixed-precision run.

    Returns:
        The summary dict written to ``summary.json``.
    """
    out = Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    class_names = list(ckpt["class_names"])
    source = open_source(data, kind)
    _check_fits(source, class_names, prep, checkpoint)
    model = model_from_checkpoint(ckpt, resolve_device(device))
    ids = list(cases) if cases else source.evaluation_ids()
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "checkpoint": str(checkpoint),
        "model": ckpt["model_name"],
        "data": str(source.root),
        "kind": source.kind,
        "cases": ids,
        "tta": tta,
        "empty_policy_mm": empty,
        "nsd_tolerance_mm": nsd_tolerance_mm,
    }
    amp_check = AmpCheck(class_names, amp) if compare_fp32 else None
    if amp_check is not None:  # filled case by case, so complete when the summary is built
        settings["amp_check"] = amp_check.record

    model_prep = prep.unit_input()  # case images arrive mapped to [0, 1] by the source
    predictions = (
        (
            case,
            predict_volume(
                model,
                case.image,
                preprocessing=model_prep,
                batch_size=batch_size,
                tta=tta,
                amp=amp,
                progress=progress,
                desc=case.name,
            )
            if amp_check is None
            else amp_check.predict(
                model,
                case.name,
                case.image,
                case.label,
                preprocessing=model_prep,
                batch_size=batch_size,
                tta=tta,
                progress=progress,
                desc=case.name,
            ),
        )
        for case in source.cases(ids, prep)
    )
    if source.pooled:
        return _evaluate_pooled(predictions, out, settings, class_names, postprocess, overlays_per_case)

    fg = class_names[1:]
    agg = MetricAggregator(fg)
    for case, pred in predictions:
        rows = legacy_case_scores(
            pred,
            case.label,
            len(class_names),
            spacing=case.spacing,
            empty=empty,
            nsd_tolerance_mm=nsd_tolerance_mm,
            class_names=fg,
        )
        agg.add_case(case.name, rows)
        if save_predictions:
            geom = case.geometry or Geometry.identity(3)
            arr = pred if pred.shape[0] > 1 or geom.ndim == 3 else pred[0]
            write_image(arr, geom, out / "predictions" / f"{case.name}.nii.gz")
        if overlays_per_case:
            _overlays(case, pred, out / "overlays", overlays_per_case, len(class_names))
        if progress:
            dice = np.mean([r["dice"] for r in rows.values()])
            print(f"{case.name}: legacy mean Dice {dice:.4f}")
    report = build_evaluation_summary(agg, class_names, settings, empty, title)
    write_evaluation_report(out, report, agg)
    return report


def _check_fits(source: Source, class_names: list[str], prep: Preprocessing, checkpoint: Any) -> None:
    if len(class_names) != source.num_classes or prep.in_channels != source.in_channels:
        raise ValueError(
            f"checkpoint {checkpoint} segments {len(class_names)} classes from {prep.in_channels} channel(s) but "
            f"{source.describe()}; evaluate it on data of the task it was trained for"
        )


def _overlays(case: Case, pred: np.ndarray, folder: Path, n: int, num_classes: int) -> None:
    """A few slices with the most ground-truth foreground: ground truth (left) and prediction (right)."""
    fg = (case.label > 0).reshape(case.label.shape[0], -1).sum(axis=1)
    order = [int(z) for z in np.argsort(-fg, kind="stable")[:n] if fg[z] > 0] or [case.label.shape[0] // 2]
    for z in sorted(order):
        write_overlay_png(
            case.image[z],
            pred[z],
            folder / f"{case.name}_z{z:03d}.png",
            num_classes=num_classes,
            reference=case.label[z],
        )


def _evaluate_pooled(
    predictions: Iterable[tuple[Case, np.ndarray]],
    out: Path,
    settings: dict[str, Any],
    class_names: list[str],
    postprocess: bool,
    overlays: int,
) -> dict[str, Any]:
    """Pixels of every case pooled (ISIC protocol): DSC, IoU, sensitivity, specificity, accuracy of class 1."""
    if len(class_names) != 2:
        raise ValueError(f"pooled scores are defined for binary tasks; this checkpoint has classes {class_names}")
    pooled = PooledBinaryMetrics(postprocess=postprocess)
    n_images = 0
    for case, pred in predictions:
        for p, g in zip(pred, case.label):
            pooled.update(p == 1, g == 1)
        n_images += len(pred)
        if overlays:
            _overlays(case, pred, out / "overlays", overlays, 2)
    report = build_isic_summary(pooled, settings, n_images)
    write_json(out / "summary.json", report)
    return report
