"""Segment image files (``msa2net predict``): :func:`predict_files` writes masks that keep the input's geometry,
and the other outputs a user asks for, from the :class:`~msa2net.engine.predictor.Prediction` of each input."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._atomic import atomic_path
from .._json import write_json
from .._progress import progress_enabled
from .._version import __version__
from ..constants import OUTPUT_TYPES
from ..data.dicom_seg import code_key, load_segment_codes, write_dicom_seg
from ..data.io import RASTER_SUFFIXES, VOLUME_SUFFIXES, image_suffix, list_inputs, write_image
from ..reporting.html import open_report
from ..reporting.overlays import OVERLAY_COLORS, write_overlay_png
from .distributed import cleanup, setup
from .predictor import Prediction, PredictOptions, Predictor

__all__ = [
    "MASK_SUFFIXES",
    "OUTPUT_TYPES",
    "OutputOptions",
    "OVERLAY_SLICES",
    "PREVIEW_MIN_SIZE",
    "PREVIEW_SLICES",
    "PredictReport",
    "class_file_names",
    "class_volumes",
    "predict_files",
    "summarise_labels",
]

logger = logging.getLogger(__name__)

#: Suffixes a volume mask may be written as (``output_format``); ``.mhd`` inputs get ``.mha`` masks (one file).
MASK_SUFFIXES: tuple[str, ...] = tuple(s for s in VOLUME_SUFFIXES if s != ".mhd")
#: Most overlay slices written per volume.
OVERLAY_SLICES: int = 5
#: Most slices side by side in a volume's preview PNG.
PREVIEW_SLICES: int = 3
#: Previews of smaller images are enlarged by a whole factor to at least this height in pixels.
PREVIEW_MIN_SIZE: int = 192
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
        html_path: The ``report.html`` file (None when not written).
    """

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)
    report_path: Path | None = None
    html_path: Path | None = None

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


def class_volumes(
    labels: np.ndarray, class_names: Sequence[str], spacing: Sequence[float] | None
) -> dict[str, dict[str, Any]]:
    """Size of every foreground class of a label map.

    Args:
        labels: ``(D, H, W)`` volume or ``(H, W)`` image of class ids.
        class_names: Names by class id, background (id 0) first; background is not reported.
        spacing: Voxel (pixel) size in mm, one value per axis of ``labels`` in any order (only the product is
            used); None when unknown (2D rasters).

    Returns:
        ``{name: {"id", "voxels", "volume_ml"}}`` for volumes (``voxels * prod(spacing) / 1000``), and
        ``{name: {"id", "pixels", "area_mm2"}}`` for images (``pixels * prod(spacing)``, None without spacing).

    Raises:
        ValueError: ``spacing`` has a different number of values than ``labels`` has axes; see
            :func:`summarise_labels`.
    """
    counts = summarise_labels(labels, class_names)
    if spacing is not None and len(spacing) != np.ndim(labels):
        raise ValueError(f"spacing {tuple(spacing)} does not fit labels of shape {np.shape(labels)}")
    cell = math.prod(float(s) for s in spacing) if spacing is not None else None
    count_key, size_key, per = ("voxels", "volume_ml", 1000.0) if np.ndim(labels) == 3 else ("pixels", "area_mm2", 1.0)
    return {
        name: {"id": i, count_key: counts[name], size_key: None if cell is None else counts[name] * cell / per}
        for i, name in enumerate(class_names[1:], start=1)
    }


def class_file_names(class_names: Sequence[str]) -> list[str]:
    """File-name-safe, unique stems for the foreground classes (ids 1..): ``liver``, ``right_kidney``, ...

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``; an empty result becomes
    ``class_<id>``; a stem already taken gets ``_<id>`` appended.
    """
    stems: list[str] = []
    for i, name in enumerate(class_names[1:], start=1):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or f"class_{i}"
        if stem.lower() in {s.lower() for s in stems}:
            stem = f"{stem}_{i}"
        stems.append(stem)
    return stems


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


def _write_preview(shown: np.ndarray, labels: np.ndarray, spatial: int, class_names: list[str], path: Path) -> None:
    """One PNG: the overlay of a 2D image, or of up to :data:`PREVIEW_SLICES` slices with foreground side by side,
    with the class legend below; images under :data:`PREVIEW_MIN_SIZE` pixels high are enlarged (nearest neighbour)
    by a whole factor."""
    if spatial == 2:
        image, label_map = shown.astype(np.float32), labels
    else:
        gap_shape = (shown.shape[1], 3, *shown.shape[3:])
        images: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        for z in _overlay_slices(labels, PREVIEW_SLICES):
            if images:
                images.append(np.full(gap_shape, np.nan, dtype=np.float32))  # drawn black
                maps.append(np.zeros(gap_shape[:2], dtype=labels.dtype))
            images.append(shown[z].astype(np.float32))
            maps.append(labels[z])
        image, label_map = np.concatenate(images, axis=1), np.concatenate(maps, axis=1)
    factor = max(1, math.ceil(PREVIEW_MIN_SIZE / max(1, label_map.shape[0])))
    if factor > 1:
        image = image.repeat(factor, axis=0).repeat(factor, axis=1)
        label_map = label_map.repeat(factor, axis=0).repeat(factor, axis=1)
    write_overlay_png(image, label_map, path, num_classes=len(class_names), class_names=class_names)


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
    split: bool = False,
    preview: bool = False,
    volumes: bool = False,
    max_pixels: int | None = None,
    allow_mismatched_input: bool = False,
    reorient: bool = True,
    html: bool = True,
    output_types: str | Sequence[str] = ("nifti",),
    statistics: bool = False,
    keep_largest: str | Sequence[str | int] | None = None,
    segment_codes: str | os.PathLike[str] | None = None,
    backend: str = "torch",
    precision: str = "fp32",
) -> PredictReport:
    """Segment image files and DICOM series with one :class:`~msa2net.engine.predictor.Predictor`; write masks.

    Each input's outputs go to ``out_dir`` only, all written or none (atomically; a failed input's files are
    removed). An input that cannot be segmented (unreadable, truncated, over ``max_pixels``, NaN/inf, a channel
    layout or value range the model does not take, an output name an earlier input took) is logged, listed in
    :attr:`PredictReport.failed` and skipped. Under ``torchrun`` process ``RANK`` segments inputs ``RANK::WORLD_SIZE``;
    rank 0 writes ``predictions.json`` for all, each process ``report-rank<N>.html``.

    Output names, per input ``<stem>``:

    * mask (``output_types`` ``"nifti"``): ``case.nii.gz`` / ``.nii`` / ``.nrrd`` / ``.mha`` keep name and format
      (``.mhd`` -> ``.mha``), a DICOM series folder ``series1/`` gives ``series1.nii.gz``; ``output_format``
      replaces the suffix of non-raster inputs. Rasters give ``img.png`` with pixel value = class id (uint8).
      Masks have the input's array shape and, except PNG, its spacing, origin and direction.
    * ``"probabilities"``: ``<stem>_probabilities.npz``: ``probabilities`` ((C, *mask shape) float16, before
      ``keep_largest``), ``class_names`` and the SimpleITK ``spacing``, ``origin``, ``direction``.
    * ``"dicom-seg"``: ``<stem>.seg.dcm`` for a DICOM series input (:mod:`msa2net.data.dicom_seg`).
    * ``split``: ``<stem>/<class>.<suffix>``, binary uint8 masks named by :func:`class_file_names`.
    * ``preview``: ``<stem>_preview.png``, up to :data:`PREVIEW_SLICES` slices with foreground and a legend.
    * ``overlays``: ``<stem>_overlay.png`` (2D) or ``<stem>_overlay_zNNN.png`` for up to :data:`OVERLAY_SLICES`
      slices with foreground (the middle slice if none), drawn in the plane the model segmented.
    * ``volumes``: ``<stem>_volumes.json`` (:func:`class_volumes`); ``statistics``: ``<stem>_statistics.json``
      (:meth:`~msa2net.engine.predictor.Prediction.statistics`).
    * ``out_dir/predictions.json`` (the run, each input's counts, sizes, ``axis_code``, ``segmented_as``, the
      failures) and, with ``html``, ``report.html`` (skipped with a warning beyond the overlay colours).

    Args:
        checkpoint: A model source :func:`~msa2net.engine.checkpoint.load_model_source` takes (checkpoint, run
            folder, published folder, hub repo id, the authors' ``.pth``) or a loaded checkpoint dict.
        inputs: Files, folders of files, or DICOM series folders (:func:`msa2net.data.io.list_inputs`).
        out_dir: Output folder (created).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``.
        batch_size, tta, amp, allow_mismatched_input, reorient, max_pixels, keep_largest, progress, backend,
            precision: The :class:`~msa2net.engine.predictor.PredictOptions`.
        overlays, split, preview, volumes, statistics, output_format, output_types: What to write (see above).
        html: Also write ``report.html``.
        segment_codes: A JSON table of DICOM SEG codes (:func:`msa2net.data.dicom_seg.load_segment_codes`).

    Returns:
        The :class:`PredictReport`; ``report.ok`` is False when any input failed.

    Raises:
        CheckpointError: the model source is missing, unreadable or incomplete (the message names it).
        HubUnavailableError: a repo id not cached while the hub cannot be reached (within seconds).
        FileNotFoundError: the only input path does not exist (one of several is reported and skipped).
        ValueError: no usable input; an unknown ``output_format``, ``output_types``, ``amp`` or ``batch_size``;
            ``overlays``/``preview`` beyond the overlay colours; a bad ``max_pixels``; ``out_dir`` is a file; a
            ``segment_codes`` table without the dicom-seg output, unreadable or naming a class the model lacks.
    """
    outputs = OutputOptions(
        types=_output_types(output_types),
        suffix=_normalise_format(output_format),
        overlays=overlays,
        split=split,
        preview=preview,
        volumes=volumes,
        statistics=statistics,
        segment_codes=None if segment_codes is None else load_segment_codes(segment_codes),
    )
    options = PredictOptions(
        batch_size=batch_size,
        tta=tta,
        amp=amp,
        reorient=reorient,
        allow_mismatched_input=allow_mismatched_input,
        max_pixels=max_pixels,
        keep_largest=keep_largest,
        progress=progress,
        backend=backend,
        precision=precision,
    )
    if segment_codes is not None and "dicom-seg" not in outputs.types:
        raise ValueError(
            "a segment code table is used by the dicom-seg output only; add dicom-seg to the output types "
            "(--output-type)"
        )
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder; give a folder (it is created if missing)")
    sources, unusable = _expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
    joined = torch.distributed.is_available() and torch.distributed.is_initialized()
    info = setup(device if isinstance(device, str) else str(device))
    predictor = Predictor.from_pretrained(checkpoint, device=info.device, options=options)
    class_names = predictor.class_names
    if (overlays or preview) and len(class_names) > len(OVERLAY_COLORS):
        raise ValueError(
            f"overlays and previews draw at most {len(OVERLAY_COLORS)} classes; this model has {len(class_names)}. "
            "Run without overlays/preview and view the masks in a viewer such as ITK-SNAP or 3D Slicer"
        )
    unknown = sorted(set(outputs.segment_codes or ()) - {code_key(name) for name in class_names})
    if unknown:  # an entry that matches no class would be dropped without a word
        raise ValueError(
            f"{segment_codes}: the segment code table names {unknown}, which this model does not segment (its "
            f"classes: {class_names}); correct those names or remove their entries"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = PredictReport(failed=unusable if info.is_main else [])
    for path, reason in report.failed:
        logger.warning("skipped %s: %s", path, reason)
    page = None
    if html:
        name = f"report-rank{info.rank}.html" if info.enabled else "report.html"
        page = open_report(out / name, class_names, title=f"msa2net predict: {predictor.model_name}", kind="prediction")
    with page if page is not None else contextlib.nullcontext():
        _predict_all(sources[info.rank :: info.world_size], out, predictor, outputs, report, page)
        cases, failed = report.cases, report.failed
        if info.enabled:  # every process's records, in input order, for rank 0's predictions.json
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, (report.cases, report.failed))
            order = {str(path): i for i, path in enumerate(sources)}
            cases = sorted((c for part, _ in gathered for c in part), key=lambda c: order[c["input"]])
            failed = [f for _, part in gathered for f in part]
        record = {
            "checkpoint": None if isinstance(checkpoint, Mapping) else str(checkpoint),
            "published_model": "pretrained" in predictor.ckpt,
            "model_name": predictor.model_name,
            "model_args": predictor.ckpt["model_args"],
            "class_names": class_names,
            "preprocessing": predictor.preprocessing.to_dict(),
            "device": str(info.device),
            "processes": info.world_size,
            "tta": options.tta,
            "amp": options.amp,
            "backend": options.backend,
            "precision": options.precision,
            "max_pixels": options.max_pixels,
            "allow_mismatched_input": options.allow_mismatched_input,
            "slice_orientation": predictor.slice_orientation,
            "output_types": list(outputs.types),
            "keep_largest": [class_names[i] for i in predictor.keep_largest],
            "cases": cases,
            "failed": [{"input": str(path), "reason": reason} for path, reason in failed],
        }
        if info.is_main:
            report.report_path = write_json(out / "predictions.json", record)
        if page is not None:
            report.html_path = page.finish(predictions={**record, "cases": report.cases})
    if info.enabled and not joined:
        cleanup()  # the group this call joined; a caller's own group stays
    return report


def _output_types(types: str | Sequence[str]) -> tuple[str, ...]:
    chosen = (types,) if isinstance(types, str) else tuple(types)
    unknown = [t for t in chosen if t not in OUTPUT_TYPES]
    if unknown or not chosen:
        raise ValueError(f"unknown output types {unknown or list(chosen)}; choose from {', '.join(OUTPUT_TYPES)}")
    return tuple(t for t in OUTPUT_TYPES if t in chosen)


@dataclass(frozen=True)
class OutputOptions:
    """What :func:`predict_files` writes per input (see there)."""

    types: tuple[str, ...] = ("nifti",)
    suffix: str | None = None
    overlays: bool = False
    split: bool = False
    preview: bool = False
    volumes: bool = False
    statistics: bool = False
    segment_codes: Mapping[str, Any] | None = None

    def names(self, out: Path, stem: str, suffix: str) -> dict[str, Path]:
        """Every file or folder the options write for an input whose mask is ``<stem><suffix>``."""
        names = {
            "mask": ("nifti" in self.types, f"{stem}{suffix}"),
            "probabilities": ("probabilities" in self.types, f"{stem}_probabilities.npz"),
            "dicom-seg": ("dicom-seg" in self.types, f"{stem}.seg.dcm"),
            "split": (self.split, stem),
            "preview": (self.preview, f"{stem}_preview.png"),
            "volumes": (self.volumes, f"{stem}_volumes.json"),
            "statistics": (self.statistics, f"{stem}_statistics.json"),
        }
        return {key: out / name for key, (on, name) in names.items() if on}


def _expand_inputs(items: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(inputs found, (path, reason) of each given path that gives none)``: a missing path, an unsupported file or
    a folder without images is reported and skipped like any other bad input, unless no input is left.

    Raises:
        FileNotFoundError, ValueError: no given path gives an input (the first error, naming every path).
    """
    found: dict[Path, Path] = {}
    unusable: list[tuple[Path, str]] = []
    errors: list[Exception] = []
    for item in items:
        try:
            for path in list_inputs([item]):
                found.setdefault(path.resolve(), path)
        except (FileNotFoundError, ValueError) as err:
            unusable.append((Path(item), str(err)))
            errors.append(err)
    if not found:
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise type(errors[0])("no input to segment: " + "; ".join(reason for _, reason in unusable))
        raise ValueError("no input to segment: pass image files, DICOM series folders or folders of them")
    return list(found.values()), unusable


def _predict_all(
    sources: list[Path], out: Path, predictor: Predictor, outputs: OutputOptions, report: PredictReport, page: Any
) -> None:
    """Segment every input into ``report`` (and ``page``); an input's outputs are all written or none."""
    claimed: dict[Path, Path] = {}  # output path -> the input whose output it is
    bar = tqdm(sources, desc="predict", unit="input", disable=not progress_enabled(predictor.options.progress))
    for source in bar:
        written: list[Path] = []
        created_split_dir: Path | None = None  # removed again if the input fails
        try:
            stem, suffix = _mask_name(source, outputs.suffix)
            paths = outputs.names(out, stem, suffix)
            keys = [p.resolve() for p in paths.values()]
            taken = [k for k in keys if k in claimed]
            if taken:
                raise ValueError(
                    f"its output name {taken[0].name} is already used by {claimed[taken[0]]}; rename one of the inputs "
                    "or segment them into different folders"
                )
            if source.resolve() in keys:
                raise ValueError(
                    f"the mask would overwrite the input itself; choose an out_dir other than {source.parent}"
                )
            if "dicom-seg" in paths and not source.is_dir():
                raise ValueError(
                    "dicom-seg output needs a DICOM series input (a folder of the series' files): a DICOM SEG "
                    f"references the instances it segments, and {source.name} is not DICOM; ask for nifti instead"
                )
            if "split" in paths and not paths["split"].exists():
                created_split_dir = paths["split"]
            prediction = predictor.predict(source, probabilities="probabilities" in paths)
            case = _write_outputs(prediction, source, out / stem, paths, suffix, predictor, outputs, written, page)
        except BaseException as err:
            for path in written:  # also on Ctrl-C: an input's outputs are all there or none are
                path.unlink(missing_ok=True)
            if created_split_dir is not None:
                with contextlib.suppress(OSError):
                    created_split_dir.rmdir()  # only if empty
            if not isinstance(err, _PER_INPUT_ERRORS):
                raise
            reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            report.failed.append((source, reason))
            logger.warning("skipped %s: %s", source, reason)
            continue
        claimed.update(dict.fromkeys(keys, source))
        report.written.extend(written)
        report.cases.append(case)
    bar.close()


def _write_outputs(
    prediction: Prediction,
    source: Path,
    stem: Path,
    paths: dict[str, Path],
    suffix: str,
    predictor: Predictor,
    outputs: OutputOptions,
    written: list[Path],
    page: Any,
) -> dict[str, Any]:
    """Write one input's outputs (each path appended to ``written`` once it exists; ``stem``: the output folder and
    the mask's name without suffix, for overlays); returns its record."""
    labels, class_names, geometry = prediction.labels, prediction.class_names, prediction.geometry
    spatial = labels.ndim
    keep_geometry = None if suffix == ".png" else geometry
    spacing = tuple(reversed(geometry.spacing)) if prediction.physical else None
    sizes = class_volumes(labels, class_names, spacing)
    if "mask" in paths:
        write_image(labels, keep_geometry, paths["mask"])
        written.append(paths["mask"])
    if "probabilities" in paths:
        probs = prediction.probabilities
        with atomic_path(paths["probabilities"]) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, probabilities=probs, class_names=np.array(class_names), **geometry.to_dict())
        written.append(paths["probabilities"])
    segments = None
    if "dicom-seg" in paths:
        segments = write_dicom_seg(
            labels,
            source,
            paths["dicom-seg"],
            class_names,
            colors=OVERLAY_COLORS,
            algorithm={"name": "msa2net", "version": __version__, "source": predictor.model_name},
            codes=outputs.segment_codes,
        )
        if segments:
            written.append(paths["dicom-seg"])
    split_paths: list[Path] = []
    if "split" in paths:
        split_dir = paths["split"]
        if split_dir.resolve() == source.resolve():
            raise ValueError(
                f"the per-class masks would go into the input folder itself ({split_dir}); choose an out_dir other "
                f"than {source.parent}"
            )
        split_dir.mkdir(parents=True, exist_ok=True)
        for class_id, file_stem in enumerate(class_file_names(class_names), start=1):
            path = split_dir / f"{file_stem}{suffix}"
            write_image((labels == class_id).astype(np.uint8), keep_geometry, path)
            written.append(path)
            split_paths.append(path)
    prep = predictor.preprocessing
    shown_labels = prediction.in_model_plane(labels)  # overlays show the plane the model segmented
    shown = None  # what the model sees, in [0, 1]: grey (..., H, W) or colour (..., H, W, 3); only if drawn
    if "preview" in paths or outputs.overlays or page is not None:
        shown = prep.to_unit(prediction.in_model_plane(prediction.image))
        if prep.in_channels not in (1, 3):
            shown = shown[..., 0]  # overlays draw grey or RGB; show the first channel of other layouts
    if "preview" in paths:
        _write_preview(shown, shown_labels, spatial, class_names, paths["preview"])
        written.append(paths["preview"])
    if "volumes" in paths:
        volumes = {
            "input": str(source),
            "mask": str(paths.get("mask")),
            "shape": list(labels.shape),
            "spacing_mm": None if spacing is None else list(geometry.spacing),  # x, y(, z) as in the file
            "unit": ("ml" if spatial == 3 else "mm2") if spacing is not None else "pixels",
            ("voxel_volume_mm3" if spatial == 3 else "pixel_area_mm2"): None if spacing is None else math.prod(spacing),
            "classes": sizes,
        }
        write_json(paths["volumes"], volumes)
        written.append(paths["volumes"])
    if "statistics" in paths:
        stats = {"input": str(source), "keep_largest": [class_names[i] for i in prediction.keep_largest]}
        write_json(paths["statistics"], {**stats, "classes": prediction.statistics()})
        written.append(paths["statistics"])
    overlay_paths: list[Path] = []
    if outputs.overlays:
        if spatial == 2:
            jobs = [(Path(f"{stem}_overlay.png"), shown, labels, source.name)]
        else:
            jobs = [
                (
                    Path(f"{stem}_overlay_z{z:03d}.png"),
                    shown[z],
                    shown_labels[z],
                    f"{source.name}, slice {z} (of 0-{shown_labels.shape[0] - 1})",
                )
                for z in _overlay_slices(shown_labels)
            ]
        for path, shown2d, labels2d, title in jobs:
            write_overlay_png(
                shown2d, labels2d, path, num_classes=len(class_names), class_names=class_names, title=title
            )
            written.append(path)
            overlay_paths.append(path)
    if page is not None:
        if spatial == 2:
            page.add_case(source.name, shown[None], labels[None], word="image")
        else:
            page.add_case(source.name, shown, shown_labels, spacing=tuple(reversed(geometry.spacing)))
    return dict(
        input=str(source),
        mask=str(paths["mask"]) if "mask" in paths else None,
        overlays=[str(p) for p in overlay_paths],
        shape=list(labels.shape),
        spacing=list(geometry.spacing) if suffix != ".png" else None,
        axis_code=prediction.axis_code,
        segmented_as=prediction.segmented_as,
        counts=summarise_labels(labels, class_names),
        sizes=sizes,
        split=[str(p) for p in split_paths],
        preview=str(paths["preview"]) if "preview" in paths else None,
        volumes=str(paths["volumes"]) if "volumes" in paths else None,
        statistics=str(paths["statistics"]) if "statistics" in paths else None,
        probabilities=str(paths["probabilities"]) if "probabilities" in paths else None,
        dicom_seg=str(paths["dicom-seg"]) if segments else None,
        dicom_seg_segments=segments,
    )
