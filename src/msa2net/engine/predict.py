"""Segment image files with a checkpoint: read, predict, write masks that keep the input's geometry.

:func:`predict_files` is what ``msa2net predict`` calls. It loads one checkpoint (ours or the authors' ``.pth``),
expands the inputs (files, folders of files, DICOM series folders) and writes one label mask per input into
``out_dir``, plus optional overlay PNGs and a ``predictions.json`` report. An input that cannot be segmented (corrupt
file, NaN values, a colour image for a grey model, ...) is reported and skipped; the others are still processed, and
no output file is left behind for a failed input.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.io import (
    OVERLAY_COLORS,
    RASTER_SUFFIXES,
    VOLUME_SUFFIXES,
    image_suffix,
    list_inputs,
    read_image,
    write_image,
    write_overlay_png,
    write_text_atomic,
)
from ..data.orientation import axis_code, check_axis_code, reorientation
from ..data.preprocessing import Preprocessing
from ..models import MSA2Net
from .checkpoint import load_checkpoint, model_from_checkpoint
from .distributed import resolve_device
from .inference import predict_image, predict_volume

__all__ = ["MASK_SUFFIXES", "OVERLAY_SLICES", "PredictReport", "predict_files", "summarise_labels"]

logger = logging.getLogger(__name__)

#: Suffixes a volume mask may be written as (``output_format``); ``.mhd`` inputs get ``.mha`` masks (one file).
MASK_SUFFIXES: tuple[str, ...] = tuple(s for s in VOLUME_SUFFIXES if s != ".mhd")
#: Most overlay slices written per volume.
OVERLAY_SLICES: int = 5
#: Exceptions that make one input fail without stopping the others (bad data, I/O, a model/library error).
_PER_INPUT_ERRORS = (ValueError, OSError, RuntimeError, MemoryError)


@dataclass
class PredictReport:
    """What :func:`predict_files` did.

    Attributes:
        written: Every output file written (masks and overlays), in input order.
        failed: ``(input, reason)`` for each input that was skipped; ``reason`` is a sentence naming the cause.
        cases: One JSON-ready record per segmented input: input, mask, overlays, shape, spacing and ``counts``
            (voxels per class name, see :func:`summarise_labels`).
        report_path: The ``predictions.json`` file.
    """

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)
    report_path: Path | None = None

    @property
    def ok(self) -> bool:
        """True when every input was segmented."""
        return not self.failed

    def failure_lines(self) -> list[str]:
        """One stderr-friendly line per failed input: ``"<input>: <reason>"``."""
        return [f"{path}: {reason}" for path, reason in self.failed]


def summarise_labels(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """Count voxels (pixels) per class.

    Args:
        labels: Integer label map of any shape; ids ``0 .. len(class_names) - 1``.
        class_names: Name of each class id, background (id 0) included.

    Returns:
        ``{class name: voxel count}`` for every class, in id order (absent classes count 0); the counts add up to
        ``labels.size``.

    Raises:
        ValueError: ``labels`` is not integer, or holds ids outside the classes.
    """
    labels = np.asarray(labels)
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer label map, got dtype {labels.dtype}")
    n = len(class_names)
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        raise ValueError(
            f"label ids {int(labels.min())}..{int(labels.max())} found but only {n} classes are named "
            f"({', '.join(class_names)})"
        )
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=n)
    return {name: int(counts[i]) for i, name in enumerate(class_names)}


def _normalise_format(output_format: str | None) -> str | None:
    if output_format is None:
        return None
    suffix = "." + output_format.lower().lstrip(".")
    if suffix not in MASK_SUFFIXES:
        raise ValueError(f"output_format {output_format!r} is not supported; choose one of {', '.join(MASK_SUFFIXES)}")
    return suffix


def _mask_name(source: Path, output_format: str | None) -> tuple[str, str]:
    """``(stem, suffix)`` of the mask for ``source``: see :func:`predict_files` for the rules."""
    suffix = image_suffix(source) if source.is_file() else None
    if suffix is None:  # a DICOM series folder
        return source.name, output_format or ".nii.gz"
    stem = source.name[: -len(suffix)]
    if suffix in RASTER_SUFFIXES:
        return stem, ".png"
    return stem, output_format or (".mha" if suffix == ".mhd" else suffix)


def _overlay_slices(labels: np.ndarray, count: int = OVERLAY_SLICES) -> list[int]:
    """Up to ``count`` evenly spaced slice indices among those with foreground (the middle slice if none)."""
    with_fg = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    if with_fg.size == 0:
        return [labels.shape[0] // 2]
    picks = np.round(np.linspace(0, with_fg.size - 1, min(count, with_fg.size))).astype(int)
    return sorted({int(with_fg[i]) for i in picks})


def _display_image(prep: Preprocessing, image: np.ndarray) -> np.ndarray:
    """What the model sees, in [0, 1], as a grey ``(..., H, W)`` or colour ``(..., H, W, 3)`` image for overlays."""
    unit = prep.to_unit(image)
    if prep.in_channels not in (1, 3):
        unit = unit[..., 0]  # overlays draw grey or RGB; show the first channel of other layouts
    return unit


def _segment_one(
    source: Path,
    mask_path: Path,
    model: MSA2Net,
    prep: Preprocessing,
    class_names: list[str],
    *,
    batch_size: int,
    tta: bool,
    amp: str | None,
    overlays: bool,
    progress: bool,
    written: list[Path],
    slice_orientation: str | None = None,
) -> dict[str, Any]:
    """Segment one input and write its mask (and overlays); returns the input's record for the report.

    A volume whose axis code differs from ``slice_orientation`` (the training volumes' code; None: no re-indexing)
    is re-indexed to it before slicing, and its mask back, so the model sees the plane it was trained on. Each
    output path is appended to ``written`` as soon as it exists, so that the caller can remove the outputs of an
    input whose later step failed.
    """
    out_dir = mask_path.parent
    suffix = image_suffix(mask_path)
    stem = mask_path.name[: -len(suffix)] if suffix else mask_path.name
    if mask_path.resolve() == source.resolve():
        raise ValueError(f"the mask would overwrite the input itself; choose an out_dir other than {source.parent}")
    image, geometry = read_image(source)
    spatial = geometry.ndim
    if spatial not in (2, 3) or image.ndim not in (spatial, spatial + 1):
        raise ValueError(f"expected a 2D or 3D image, found array shape {image.shape} with a {spatial}D geometry")
    code = None
    if spatial == 3:
        try:
            code = axis_code(geometry)
        except ValueError as err:
            if slice_orientation:
                raise ValueError(
                    f"its layout cannot be matched to the training volumes' ({slice_orientation}): {err}; or segment "
                    "it as stored with --no-reorient (reorient=False)"
                ) from err
    move = reorientation(code, slice_orientation) if code and slice_orientation else None
    if move is not None and not move.is_identity:
        image = np.ascontiguousarray(move.apply(image))  # the model's plane; the mask is moved back below
    else:
        move = None
    if spatial == 3:
        labels = predict_volume(
            model,
            image,
            preprocessing=prep,
            batch_size=batch_size,
            tta=tta,
            amp=amp,
            progress=progress,
            desc=source.name,
        )
    else:
        image = prep.arrange_channels(image)  # e.g. a grey raster shown and segmented as RGB by an RGB model
        labels = predict_image(model, image, preprocessing=prep, tta=tta, amp=amp)
    counts = summarise_labels(labels, class_names)
    shown_labels = labels  # overlays show the plane the model segmented
    if move is not None:
        labels = np.ascontiguousarray(move.inverse().apply(labels))

    write_image(labels, None if suffix == ".png" else geometry, mask_path)
    written.append(mask_path)
    overlay_paths: list[Path] = []
    if overlays:
        shown = _display_image(prep, image)
        if spatial == 2:
            jobs = [(out_dir / f"{stem}_overlay.png", shown, labels)]
        else:
            jobs = [
                (out_dir / f"{stem}_overlay_z{z:03d}.png", shown[z], shown_labels[z])
                for z in _overlay_slices(shown_labels)
            ]
        for path, shown2d, labels2d in jobs:
            write_overlay_png(shown2d, labels2d, path, num_classes=len(class_names))
            written.append(path)
            overlay_paths.append(path)
    return {
        "input": str(source),
        "mask": str(mask_path),
        "overlays": [str(p) for p in overlay_paths],
        "shape": list(labels.shape),
        "spacing": list(geometry.spacing) if suffix != ".png" else None,
        "axis_code": code,
        "segmented_as": slice_orientation if move is not None else code,
        "counts": counts,
    }


def predict_files(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    tta: bool = False,
    amp: str | None = None,
    overlays: bool = False,
    output_format: str | None = None,
    progress: bool = True,
    reorient: bool = True,
) -> PredictReport:
    """Segment image files and DICOM series with a checkpoint; write label masks with the input's geometry.

    Volumes (NIfTI, NRRD, MetaImage, DICOM series) are segmented slice by slice along the first array axis (Z) with
    :func:`~msa2net.engine.inference.predict_volume`; 2D images (PNG, JPEG, BMP, TIFF, 2D NIfTI) with
    :func:`~msa2net.engine.inference.predict_image`. Intensities are mapped by the checkpoint's preprocessing.

    Output names in ``out_dir`` (nothing is written anywhere else):

    * ``case.nii.gz`` / ``case.nii`` / ``case.nrrd`` / ``case.mha`` -> a mask of the same name and format
      (``case.mhd`` -> ``case.mha``); ``output_format`` (``".nii.gz"``, ``".nii"``, ``".nrrd"``, ``".mha"``)
      replaces the suffix of every non-raster input.
    * DICOM series folder ``series1/`` -> ``series1.nii.gz`` (or ``output_format``).
    * Rasters ``img.png`` / ``img.jpg`` / ... -> ``img.png``, pixel value = class id (uint8; not a picture: use
      ``overlays``).

    Masks have the input's array shape (without channel axis) and, except PNG, its spacing, origin and direction.

    Orientation: a checkpoint trained on volumes records their axis code (``slice_orientation``, e.g. ``"AIR"`` for
    sagittal slices). With ``reorient`` (default), a volume stored in another layout (e.g. an axial-first ``"RAS"``
    brain) is re-indexed to that code before slicing, by permutation and flips only (no resampling), and its mask
    is moved back, so the model always segments the plane it learnt; ``predictions.json`` records the input's code
    (``axis_code``) and the layout segmented (``segmented_as``). Inputs whose headers are known to be wrong can be
    segmented as stored with ``reorient=False``. Checkpoints without the record (older ones, 2D data, the authors')
    segment every volume as stored.

    Overlays (``overlays=True``) blend the class colours on the model's view of the image: ``<stem>_overlay.png``
    for 2D inputs, ``<stem>_overlay_zNNN.png`` for up to :data:`OVERLAY_SLICES` evenly spaced slices with foreground
    (the middle slice when there is none) for volumes. ``out_dir/predictions.json`` records the run, per-input class
    voxel counts and the failures. Every file is written atomically.

    An input that cannot be segmented (unreadable or corrupt, NaN/inf values, a channel layout the model does not
    take, a name that collides with an earlier input's output, ...) is logged as a warning, listed in
    :attr:`PredictReport.failed` with the reason, and skipped; files already written for it are removed.

    Args:
        checkpoint: An msa2net checkpoint or the authors' MSA2Net ``.pth`` (path), or a loaded checkpoint dict.
        inputs: One or more files, folders of files, or DICOM series folders (see
            :func:`msa2net.data.io.list_inputs`).
        out_dir: Output folder (created).
        device: Where the model runs (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
        batch_size: Slices per forward pass.
        tta: Flip test-time augmentation.
        amp: ``None``, ``"bf16"`` or ``"fp16"`` autocast.
        overlays: Also write overlay PNGs.
        output_format: Mask suffix for non-raster inputs; None keeps the input's (``.nii.gz`` for DICOM).
        progress: Show progress bars.
        reorient: Re-index volumes to the checkpoint's ``slice_orientation`` (see above).

    Returns:
        The :class:`PredictReport`; ``report.ok`` is False when any input failed.

    Raises:
        CheckpointError: the checkpoint is missing, unreadable, or lacks fields (the message names them).
        FileNotFoundError: an input path does not exist.
        ValueError: an input has an unsupported suffix or a folder holds no images; an unknown ``output_format``,
            ``amp`` or ``batch_size``; ``overlays`` for a model with more classes than overlay colours.
    """
    suffix_override = _normalise_format(output_format)
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    sources = list_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
    ckpt = dict(checkpoint) if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    class_names = list(ckpt["class_names"])
    if overlays and len(class_names) > len(OVERLAY_COLORS):
        raise ValueError(
            f"overlays draw at most {len(OVERLAY_COLORS)} classes; this model has {len(class_names)}. "
            "Run without overlays and view the masks in a viewer such as ITK-SNAP or 3D Slicer"
        )
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    trained_code = ckpt.get("slice_orientation")
    slice_orientation = check_axis_code(trained_code) if (reorient and trained_code) else None
    device = resolve_device(device) if isinstance(device, str) else device
    model = model_from_checkpoint(ckpt, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    report = PredictReport()
    claimed: dict[Path, Path] = {}  # mask path -> the input whose mask it is
    bar = tqdm(sources, desc="predict", unit="input", disable=not progress)
    for source in bar:
        written: list[Path] = []
        try:
            stem, suffix = _mask_name(source, suffix_override)
            mask_path = out / f"{stem}{suffix}"
            key = mask_path.resolve()
            if key in claimed:
                raise ValueError(
                    f"its mask name {mask_path.name} is already used by {claimed[key]}; rename one of the inputs or "
                    "segment them into different folders"
                )
            case = _segment_one(
                source,
                mask_path,
                model,
                prep,
                class_names,
                batch_size=batch_size,
                tta=tta,
                amp=amp,
                overlays=overlays,
                progress=progress,
                written=written,
                slice_orientation=slice_orientation,
            )
        except BaseException as err:
            for path in written:  # also on Ctrl-C: an input's outputs are all there or none are
                path.unlink(missing_ok=True)
            if not isinstance(err, _PER_INPUT_ERRORS):
                raise
            reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            report.failed.append((source, reason))
            logger.warning("skipped %s: %s", source, reason)
            continue
        claimed[key] = source
        report.written.extend(written)
        report.cases.append(case)
    bar.close()

    record = {
        "checkpoint": None if isinstance(checkpoint, Mapping) else str(checkpoint),
        "model_name": ckpt["model_name"],
        "model_args": ckpt["model_args"],
        "class_names": class_names,
        "preprocessing": prep.to_dict(),
        "device": str(device),
        "tta": tta,
        "amp": amp,
        "slice_orientation": slice_orientation,
        "cases": report.cases,
        "failed": [{"input": str(path), "reason": reason} for path, reason in report.failed],
    }
    report.report_path = write_text_atomic(out / "predictions.json", json.dumps(record, indent=2) + "\n")
    return report
