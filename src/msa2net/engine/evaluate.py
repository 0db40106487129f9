"""Evaluation of a checkpoint on a labelled test set: the paper's legacy protocol and honest millimetre figures."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._json import write_json
from ..config import EVALUATION_SPLITS
from ..data.io import Geometry, image_suffix, is_image_file, read_image, write_image
from ..data.preprocessing import Preprocessing
from ..data.registry import open_source
from ..data.source import Case, Source
from ..metrics import legacy_case_scores
from ..reporting.aggregate import MetricAggregator, PooledBinaryMetrics
from ..reporting.curves import read_metrics_csv
from ..reporting.html import HtmlReport, open_report
from ..reporting.overlays import write_overlay_png
from ..reporting.summary import build_evaluation_summary, build_isic_summary
from ..reporting.tables import write_evaluation_report
from .backends import load_backend
from .checkpoint import load_model_source, model_from_checkpoint, resolve_checkpoint_path
from .distributed import resolve_device
from .inference import AmpCheck, predict_volume
from .postprocess import keep_largest as keep_largest_components
from .postprocess import parse_keep_largest
from .predictor import PredictOptions, Predictor

logger = logging.getLogger(__name__)


def evaluate(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cases: list[str] | None = None,
    split: str = "test",
    allow_mismatched_input: bool = False,
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
    html: bool = True,
    notes: Sequence[str] = (),
    compare_fp32: bool = False,
    keep_largest: str | Sequence[str | int] | None = None,
    backend: str = "torch",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Evaluate a model on a labelled dataset and write the report into ``out_dir``.

    Synapse and dataset folders, per case and class: the legacy protocol's Dice and HD95 (voxels, the paper's
    empty-mask rules), HD95 in mm with the case's spacing under the ``empty`` policy (``"nan"``: a missed or
    hallucinated organ is a counted failure, not a 0) and normalised surface Dice at ``nsd_tolerance_mm``. ISIC 2018:
    pixels pooled over the split (DSC, IoU, sensitivity, specificity, accuracy), with ``postprocess`` after that
    protocol's opening + hole filling. Writes ``summary.json``, ``per_case.csv``, ``table.md``, ``overlays/``,
    ``predictions/`` (``save_predictions``, in the source geometry where known) and with ``html`` ``report.html``
    (tables, per-case table, a slice browser per case, training curves from the run's ``metrics.csv`` when it agrees
    with the checkpoint's history, else that history; ``notes`` on top; skipped with a warning beyond the overlay
    colours).

    Args:
        checkpoint: Any model source of :func:`~msa2net.engine.checkpoint.load_model_source`, or a run folder (its
            ``best.pt``, else ``last.pt``).
        data: A dataset folder :func:`~msa2net.data.registry.open_source` recognises (``kind`` forces one).
        cases: Case ids to score; default those of ``split``: ``"test"`` (labelled test cases; a source without any
            is refused) or ``"train"``. When any scored case is a training case, ``settings.warning`` says so, the
            table rows read "TRAINING cases" and ``report.html`` shows the warning.
        allow_mismatched_input: Score a model whose class names or input meaning (preprocessing kind, CT window)
            differ from the data's; class count and channels must always match.
        compare_fp32: Also segment every case with torch float32 and record the agreement of the ``amp`` or
            ``backend``/``precision`` labels in ``settings.amp_check`` (:class:`~msa2net.engine.inference.AmpCheck`);
            the scores stay those of the run asked for.
        keep_largest: As :class:`~msa2net.engine.predictor.PredictOptions`; recorded in ``settings.keep_largest``.
        batch_size, tta, amp, backend, precision: As :class:`~msa2net.engine.predictor.PredictOptions`.

    Returns:
        The content of ``summary.json`` (undefined figures None; see :mod:`msa2net.reporting.summary`).
    """
    out = Path(out_dir)
    if isinstance(checkpoint, (str, os.PathLike)) and Path(checkpoint).exists():
        checkpoint = resolve_checkpoint_path(checkpoint)
    ckpt = load_model_source(checkpoint)
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    class_names = list(ckpt["class_names"])
    source = open_source(data, kind)
    _check_fits(source, class_names, prep, checkpoint, allow_mismatched_input)
    ids, training = _evaluation_cases(source, cases, split)
    opts = PredictOptions(amp=amp, keep_largest=keep_largest, backend=backend, precision=precision)
    amp = opts.amp
    if backend == "torch" and precision == "bf16":
        precision = "fp32"  # torch's bf16 is autocast, recorded as amp
    runtime = backend != "torch" or precision != "fp32"
    reference = model_from_checkpoint(ckpt, resolve_device("cpu" if runtime else device))
    model = load_backend(reference, backend, precision, folder=ckpt.get("pretrained_folder"))
    largest = Predictor(model, ckpt, opts).keep_largest
    out.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "model": ckpt["model_name"],
        "data": str(source.root),
        "kind": source.kind,
        "split": "cases" if cases else split,
        "cases": ids,
        "tta": tta,
        "empty_policy_mm": empty,
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "keep_largest": [class_names[i] for i in largest],
    }
    if allow_mismatched_input:
        settings["allow_mismatched_input"] = True
    if training:
        settings["training_cases"] = training
        settings["warning"] = (
            f"{len(training)} of the {len(ids)} evaluated cases are TRAINING cases ({', '.join(training)}): the "
            "model has seen them, so their scores measure fit, not how it does on new data"
        )
        notes = [settings["warning"], *notes]
        title = f"{title or ckpt['model_name']} (TRAINING cases)"
        logger.warning("%s", settings["warning"])
    check_name = f"{backend}-{precision}"
    amp_check = AmpCheck(class_names, amp, reference if runtime else None, check_name) if compare_fp32 else None
    settings["backend"], settings["precision"] = backend, precision
    if amp_check is not None:  # filled case by case, so complete when the summary is built
        settings["amp_check"] = amp_check.record

    model_prep = prep.unit_input()  # case images arrive mapped to [0, 1] by the source
    heading = f"msa2net evaluation: {title or ckpt['model_name']} on {source.root.name}"
    page = open_report(out / "report.html", class_names, title=heading, kind="evaluation") if html else None
    history, history_note, mark_epoch = (
        _training_history(Path(checkpoint), ckpt) if page and not isinstance(checkpoint, Mapping) else (None, "", None)
    )

    common: dict[str, Any] = {"preprocessing": model_prep, "batch_size": batch_size, "tta": tta, "progress": progress}

    def segment(case: Case) -> np.ndarray:
        if amp_check is None:
            return predict_volume(model, case.image, amp=amp, desc=case.name, **common)
        return amp_check.predict(model, case.name, case.image, case.label, desc=case.name, **common)

    predictions = ((case, _post(largest, segment(case))) for case in source.cases(ids, prep))
    with page if page is not None else contextlib.nullcontext():
        if source.pooled:
            summary = _evaluate_pooled(predictions, out, settings, class_names, postprocess, overlays_per_case, page)
        else:
            summary = _evaluate_cases(
                predictions,
                out,
                settings,
                class_names,
                empty,
                nsd_tolerance_mm,
                title,
                save_predictions,
                overlays_per_case,
                progress,
                page,
            )
        if page is not None:
            path = page.finish(
                evaluation=summary, history=history, history_note=history_note, mark_epoch=mark_epoch, notes=notes
            )
            if progress:
                print(f"{path}: {path.stat().st_size / 1e6:.1f} MB, written in {page.seconds:.1f} s")
    return summary


def _post(class_ids: tuple[int, ...], labels: np.ndarray) -> np.ndarray:
    return keep_largest_components(labels, class_ids) if class_ids else labels


def evaluate_predictions(
    predictions: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    cases: list[str] | None = None,
    split: str = "test",
    kind: str | None = None,
    empty: str | float = "nan",
    nsd_tolerance_mm: float | None = 2.0,
    overlays_per_case: int = 3,
    keep_largest: str | Sequence[str | int] | None = None,
    html: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a folder of masks made by any tool, without a model: the figures and files of :func:`evaluate`.

    ``predictions`` holds one label mask per case, named ``<case id><suffix>`` (any suffix :func:`read_image`
    reads; ``msa2net predict`` and ``evaluate --save-predictions`` write such folders). The ground truth is either
    ``data``, a dataset folder :func:`~msa2net.data.registry.open_source` recognises (its cases, ``split`` and
    ``cases`` as in :func:`evaluate`; the slice browser shows its images), or ``labels``, a folder of label files
    named ``<case id><suffix>`` (class names from ``class_names``, else ``class_N``; the browser shows the masks
    on black). Spacing comes from the ground truth. On the masks ``evaluate --save-predictions`` wrote, this gives
    the figures of that evaluation.

    Raises:
        ValueError: neither or both of ``data`` and ``labels``; a case without a mask (all are named); a mask whose
            shape differs from its label's, or with class ids beyond the classes.
    """
    if (data is None) == (labels is None):
        raise ValueError("give the ground truth as either data (a dataset folder) or labels (a folder of label files)")
    pred_dir, out = Path(predictions), Path(out_dir)
    masks = {_case_id(p): p for p in sorted(pred_dir.iterdir()) if is_image_file(p)} if pred_dir.is_dir() else {}
    if not masks:
        raise ValueError(f"{pred_dir} holds no mask files; pass the folder of predicted masks (<case id>.nii.gz)")
    if data is not None:
        source = open_source(data, kind)
        names = [str(c) for c in source.class_names]
        ids, training = _evaluation_cases(source, cases, split)
        where, truth = str(source.root), source.cases
    else:
        label_dir = Path(labels)  # type: ignore[arg-type]
        files = {_case_id(p): p for p in sorted(label_dir.iterdir()) if is_image_file(p)} if label_dir.is_dir() else {}
        if not files:
            raise ValueError(f"{label_dir} holds no label files; pass the folder of ground-truth masks")
        ids = [c for c in files if not cases or c in cases]
        names = [str(c) for c in class_names] if class_names else _class_names_of(files, masks)
        where, training, truth = str(label_dir), [], lambda ids, _prep=None: (_label_case(files[c]) for c in ids)
    missing = [c for c in ids if c not in masks]
    if missing:
        raise ValueError(
            f"{pred_dir} has no mask for {len(missing)} of the {len(ids)} cases ({', '.join(missing)}); masks are "
            "matched to cases by file name, <case id><suffix>"
        )
    largest = parse_keep_largest(keep_largest, names)
    settings: dict[str, Any] = {
        "checkpoint": None,
        "predictions": str(pred_dir),
        "model": None,
        "data": where,
        "split": "cases" if cases else (split if data is not None else "labels"),
        "cases": ids,
        "tta": False,
        "empty_policy_mm": empty,
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "keep_largest": [names[i] for i in largest],
    }
    if training:
        settings["training_cases"] = training
    out.mkdir(parents=True, exist_ok=True)
    title = f"masks in {pred_dir.name}"
    heading = f"msa2net evaluation: {title} against {Path(where).name}"
    page = open_report(out / "report.html", names, title=heading, kind="evaluation") if html else None

    def pairs() -> Iterable[tuple[Case, np.ndarray]]:
        for case in truth(ids):
            mask, _ = read_image(masks[case.name])
            mask = mask.reshape(case.label.shape) if mask.size == case.label.size else mask
            if mask.shape != case.label.shape:
                raise ValueError(
                    f"{masks[case.name]}: mask of shape {mask.shape} for case {case.name} labelled with shape "
                    f"{case.label.shape}; masks must be in the ground truth's grid"
                )
            if mask.size and (mask.min() < 0 or mask.max() >= len(names)):
                raise ValueError(f"{masks[case.name]}: class ids up to {int(mask.max())} but the classes are {names}")
            yield case, _post(largest, mask.astype(np.int64))

    with page if page is not None else contextlib.nullcontext():
        args = (out, settings, names, empty, nsd_tolerance_mm, title, False, overlays_per_case, progress, page)
        summary = _evaluate_cases(pairs(), *args)
        if page is not None:
            page.finish(evaluation=summary)
    return summary


def _case_id(path: Path) -> str:
    suffix = image_suffix(path) or ""
    return path.name[: len(path.name) - len(suffix)]


def _label_case(path: Path) -> Case:
    label, geometry = read_image(path)
    label = label[None] if label.ndim == 2 else label
    spacing = tuple(reversed(geometry.spacing)) if geometry.ndim == 3 else None
    return Case(_case_id(path), np.zeros(label.shape, np.float32), label.astype(np.int64), spacing, geometry)


def _class_names_of(files: Mapping[str, Path], masks: Mapping[str, Path]) -> list[str]:
    """``class_0 .. class_N`` for the largest id in the label and mask files."""
    top = max(int(read_image(p)[0].max(initial=0)) for p in [*files.values(), *masks.values()])
    return [f"class_{i}" for i in range(max(top, 1) + 1)]


def _training_history(
    checkpoint: Path, ckpt: Mapping[str, Any]
) -> tuple[list[dict[str, float]] | None, str, int | None]:
    """``(history, where it comes from, the checkpoint's epoch)`` for the report's curves.

    ``metrics.csv`` beside the checkpoint (the whole run) is used when its first rows are the history the checkpoint
    recorded (same epochs and training losses), else the checkpoint's own history (up to its epoch); ``None`` when
    neither exists.
    """
    own = [dict(row) for row in ckpt.get("history") or []]
    epoch = ckpt.get("epoch")
    mark = int(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None
    csv_path = checkpoint.parent / "metrics.csv"
    if own and csv_path.is_file():
        try:
            rows = read_metrics_csv(csv_path)
        except (OSError, ValueError):
            rows = []
        agrees = len(rows) >= len(own) and all(
            float(a.get("epoch", math.nan)) == float(b.get("epoch", math.nan))
            and math.isclose(float(a.get("train_loss", math.nan)), float(b.get("train_loss", math.nan)), rel_tol=1e-9)
            for a, b in zip(rows, own)
        )
        if agrees:
            return rows, f"Training history of the run: {csv_path} ({len(rows)} epochs).", mark
    if own:
        return own, f"Training history recorded in the checkpoint {checkpoint.name} ({len(own)} epochs).", mark
    return None, "", None


def _evaluate_cases(
    predictions: Iterable[tuple[Case, np.ndarray]],
    out: Path,
    settings: dict[str, Any],
    class_names: list[str],
    empty: str | float,
    nsd_tolerance_mm: float | None,
    title: str | None,
    save_predictions: bool,
    overlays_per_case: int,
    progress: bool,
    page: HtmlReport | None,
) -> dict[str, Any]:
    """Per-case scores (Synapse, dataset folders): the summary, written with ``summary.json``, CSV and tables."""
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
            _overlays(case, pred, out / "overlays", overlays_per_case, class_names)
        if page is not None:
            page.add_case(case.name, case.image, pred, label=case.label, spacing=case.spacing)
        if progress:
            dice = np.mean([r["dice"] for r in rows.values()])
            print(f"{case.name}: legacy mean Dice {dice:.4f}")
    report = build_evaluation_summary(agg, class_names, settings, empty, title)
    write_evaluation_report(out, report, agg)
    return report


def _evaluation_cases(source: Source, cases: Sequence[str] | None, split: str) -> tuple[list[str], list[str]]:
    """``(case ids to evaluate, those of them that are training cases)``.

    Raises:
        ValueError: an unknown ``split``, or ``split="test"`` on a source without labelled test cases.
    """
    if split not in EVALUATION_SPLITS:
        raise ValueError(f"split must be one of {', '.join(EVALUATION_SPLITS)}, got {split!r}")
    if split == "train" and not cases:
        train = source.train_ids()
        return list(train), list(train)
    try:
        train = source.train_ids()
    except (FileNotFoundError, ValueError):  # a prepared folder holding only the test cases
        train = []
    if cases:
        ids = source.select(cases, [*train, *source.test_ids()], "cases")
    else:
        ids = source.evaluation_ids()
        if not ids:
            raise ValueError(
                f"{source.describe()} has no labelled test cases (a dataset folder has them when imagesTs/ comes with "
                "labelsTs/), so there is no test set to score. Pass --split train (split='train') to score the "
                "training cases, which the model has seen (the result says so), or --cases to name cases"
            )
    return ids, [c for c in ids if c in train]


def _generic(names: Sequence[str]) -> bool:
    """Whether class names are placeholders (``class_0 ..``), which say nothing about the task."""
    return all(re.fullmatch(r"class_\d+", str(n)) for n in names[1:])


def _check_fits(
    source: Source, class_names: list[str], prep: Preprocessing, checkpoint: Any, allow_mismatched_input: bool
) -> None:
    """Refuse a model of another task: class count and channels always; class names and input meaning unless
    ``allow_mismatched_input``."""
    if len(class_names) != source.num_classes or prep.in_channels != source.in_channels:
        raise ValueError(
            f"checkpoint {checkpoint} segments {len(class_names)} classes from {prep.in_channels} channel(s) but "
            f"{source.describe()}; evaluate it on data of the task it was trained for"
        )
    if allow_mismatched_input:
        return
    problems = []
    if [str(c) for c in class_names] != [str(c) for c in source.class_names] and not (
        _generic(class_names) or _generic(source.class_names)
    ):
        problems.append(f"it segments {class_names} but the data are labelled {list(source.class_names)}")
    differs = prep.input_difference(source.preprocessing)
    if differs:
        problems.append(differs)
    if problems:
        raise ValueError(
            f"checkpoint {checkpoint} is not a model for {source.root}: {'; and '.join(problems)}. Evaluate it on data "
            "of the task it was trained for, or pass --allow-mismatched-input (allow_mismatched_input=True) if you "
            "are sure the data fit"
        )


def _overlays(case: Case, pred: np.ndarray, folder: Path, n: int, class_names: list[str], word: str = "slice") -> None:
    """A few slices with the most ground-truth foreground: ground truth (left) and prediction (right), titled, with
    a legend of the classes."""
    depth = case.label.shape[0]
    fg = (case.label > 0).reshape(depth, -1).sum(axis=1)
    order = [int(z) for z in np.argsort(-fg, kind="stable")[:n] if fg[z] > 0] or [depth // 2]
    for z in sorted(order):
        write_overlay_png(
            case.image[z],
            pred[z],
            folder / f"{case.name}_z{z:03d}.png",
            num_classes=len(class_names),
            reference=case.label[z],
            class_names=class_names,
            title=f"{case.name}, {word} {z} (of 0-{depth - 1})",
        )


def _evaluate_pooled(
    predictions: Iterable[tuple[Case, np.ndarray]],
    out: Path,
    settings: dict[str, Any],
    class_names: list[str],
    postprocess: bool,
    overlays: int,
    page: HtmlReport | None = None,
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
            _overlays(case, pred, out / "overlays", overlays, class_names, "image")
        if page is not None:
            page.add_case(case.name, case.image, pred, label=case.label, spacing=case.spacing, word="image")
    report = build_isic_summary(pooled, settings, n_images)
    write_json(out / "summary.json", report)
    return report
