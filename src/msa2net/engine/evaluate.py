"""Evaluation of a checkpoint on a labelled test set: the paper's legacy protocol and honest millimetre figures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.io import Geometry, write_image
from ..data.preprocessing import Preprocessing
from ..metrics import legacy_case_scores as case_metrics
from ..report import (
    MetricAggregator,
    PooledBinaryMetrics,
    build_evaluation_summary,
    build_isic_summary,
    write_evaluation_report,
    write_isic_report,
    write_overlay_png,
)
from .checkpoint import load_checkpoint, model_from_checkpoint
from .distributed import resolve_device
from .inference import predict_volume


@dataclass
class EvalCase:
    case: str
    image: np.ndarray  # as the preprocessing expects: (D, H, W[, C])
    label: np.ndarray  # (D, H, W)
    spacing_zyx: tuple[float, ...] | None
    geometry: Geometry | None


def detect_kind(root: Path) -> str:
    """``synapse`` (test_vol_h5), ``folder`` (dataset.json) or ``isic2018`` (test.npz)."""
    if (root / "test_vol_h5").is_dir():
        return "synapse"
    if (root / "dataset.json").is_file():
        return "folder"
    if (root / "test.npz").is_file():
        return "isic2018"
    raise ValueError(
        f"{str(root)!r} is not an evaluation set: expected a prepared Synapse folder (test_vol_h5/), a dataset folder "
        "(dataset.json, imagesTr/, labelsTr/) or a prepared ISIC 2018 folder (test.npz)"
    )


def _cases(root: Path, kind: str, prep: Preprocessing, cases: list[str] | None) -> tuple[Iterator[EvalCase], Any]:
    if kind == "synapse":
        from ..data.synapse import SynapseVolumeDataset

        ds = SynapseVolumeDataset(root, cases=cases)
        # prepared volumes are already windowed to [0, 1]: only the model-space normalisation remains
        unit = Preprocessing(kind="unit", in_channels=prep.in_channels, mean=prep.mean, std=prep.std)

        def gen() -> Iterator[EvalCase]:
            for item in ds:
                sp = item["spacing"]
                geom = None
                if sp is not None:
                    geom = Geometry(
                        spacing=tuple(reversed(sp)), origin=(0.0,) * 3, direction=Geometry.identity(3).direction
                    )
                yield EvalCase(item["case"], item["image"], item["label"], sp, geom)

        return gen(), unit
    if kind == "folder":
        from ..data.folder import FolderVolumeDataset, validate_folder

        report = validate_folder(root)
        ds = FolderVolumeDataset(root, cases=cases or report.cases, preprocessing=prep)
        unit = Preprocessing(kind="unit", in_channels=prep.in_channels, mean=prep.mean, std=prep.std)

        def gen() -> Iterator[EvalCase]:
            for item in ds:
                image, label, geom = item["image_unit"], item["label"], item["geometry"]
                sp = tuple(item["spacing_zyx"])
                if report.dims == 2:  # one-slice volume; pixel spacing of rasters is nominal (1, 1)
                    image, label, sp = image[None], label[None], (1.0, *sp[-2:])
                yield EvalCase(item["case"], image, label, sp, geom)

        return gen(), unit
    raise ValueError(f"unknown evaluation kind {kind!r}")


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
) -> dict[str, Any]:
    """Evaluate a checkpoint (ours or the authors') and write the report into ``out_dir``.

    Synapse and dataset folders: per case and class, the legacy protocol's Dice and HD95 (voxels, the paper's
    empty-mask rules) and the honest figures: HD95 in millimetres with the case's spacing under the ``empty``
    policy (``"nan"``: a missed or hallucinated organ is a failure, counted, not a 0) and normalised surface Dice
    at ``nsd_tolerance_mm``. Writes ``summary.json``, ``per_case.csv``, ``table.md``, optional NIfTI predictions
    (``predictions/``, in the source geometry where known) and overlay PNGs (``overlays/``).

    ISIC 2018: pixels pooled over the test split (DSC, IoU, sensitivity, specificity, accuracy), optionally
    after the opening + hole-filling post-process of that protocol.

    Returns:
        The summary dict written to ``summary.json``.
    """
    root, out = Path(data), Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, resolve_device(device))
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    class_names = list(ckpt["class_names"])
    kind = detect_kind(root)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "checkpoint": str(checkpoint),
        "model": ckpt["model_name"],
        "data": str(root),
        "kind": kind,
        "tta": tta,
        "empty_policy_mm": empty,
        "nsd_tolerance_mm": nsd_tolerance_mm,
    }
    if kind == "isic2018":
        return _evaluate_isic(model, root, out, prep, settings, batch_size, tta, amp, postprocess)

    iterator, model_prep = _cases(root, kind, prep, cases)
    fg = class_names[1:]
    agg = MetricAggregator(fg)
    for case in iterator:
        pred = predict_volume(
            model,
            case.image,
            preprocessing=model_prep,
            batch_size=batch_size,
            tta=tta,
            amp=amp,
            progress=progress,
            desc=case.case,
        )
        spacing = case.spacing_zyx
        rows = case_metrics(
            pred,
            case.label,
            len(class_names),
            spacing=spacing,
            empty=empty,
            nsd_tolerance_mm=nsd_tolerance_mm,
            class_names=fg,
        )
        agg.add_case(case.case, rows)
        if save_predictions:
            geom = case.geometry or Geometry.identity(3)
            arr = pred if pred.shape[0] > 1 or geom.ndim == 3 else pred[0]
            write_image(arr, geom, out / "predictions" / f"{case.case}.nii.gz")
        if overlays_per_case:
            _overlays(case, pred, out / "overlays", overlays_per_case, len(class_names))
        if progress:
            dice = np.mean([r["dice"] for r in rows.values()])
            print(f"{case.case}: legacy mean Dice {dice:.4f}")
    report = build_evaluation_summary(agg, class_names, settings, empty, title)
    write_evaluation_report(out, report, agg)
    return report


def _overlays(case: EvalCase, pred: np.ndarray, folder: Path, n: int, num_classes: int) -> None:
    """A few slices with the most ground-truth foreground: ground truth (left) and prediction (right)."""
    fg = (case.label > 0).reshape(case.label.shape[0], -1).sum(axis=1)
    order = [int(z) for z in np.argsort(-fg, kind="stable")[:n] if fg[z] > 0] or [case.label.shape[0] // 2]
    for z in sorted(order):
        image = case.image[z]
        write_overlay_png(
            image, pred[z], folder / f"{case.case}_z{z:03d}.png", num_classes=num_classes, reference=case.label[z]
        )


@torch.inference_mode()
def _evaluate_isic(model, root, out, prep, settings, batch_size, tta, amp, postprocess) -> dict[str, Any]:
    from ..data.isic import ISICDataset

    ds = ISICDataset(root, "test")
    pooled = PooledBinaryMetrics(postprocess=postprocess)
    images, labels = ds.images, ds.masks
    pred = predict_volume(model, images, preprocessing=prep, batch_size=batch_size, tta=tta, amp=amp)
    for p, g in zip(pred, labels):
        pooled.update(p == 1, g == 1)
    report = build_isic_summary(pooled, settings, len(ds))
    write_isic_report(out, report, images, pred, labels, ds.names)
    return report
