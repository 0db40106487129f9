"""Export a model for other runtimes: TorchScript and ONNX graphs added to its published folder.

The folder is the one model artifact (:mod:`msa2net.models.pretrained`: ``config.json``, ``model.safetensors``, the
card); :func:`export_model` writes it with the graphs inside, and ``config.json`` records them under ``exports``.

ONNX goes through the legacy TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset 17, dynamic
batch axis). With torch 2.14 and timm's MaxViT it works and matches eager to about 1e-5. The torch.export-based
("dynamo") exporter fails on this model (decomposing a view of a non-contiguous window-attention tensor), with or
without a dynamic batch, so it is not used: when the legacy exporter fails, the export fails with an
:class:`ExportError` that says so.

The exported graphs take model-space input (B, in_channels, H, W) float32, already normalised: apply the
preprocessing recorded in ``config.json`` (``to_unit``, resize to H x W, ``(x - mean) / std``) before calling them,
and softmax/argmax over axis 1 of the logits after. Volumes are cut into slices along their first array axis after
re-indexing them to ``slice_orientation`` when ``config.json`` records one (see :mod:`msa2net.data.orientation`).
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constants import EXPORT_FORMATS
from ..models import MSA2Net
from ..models.pretrained import CONFIG_NAME, WEIGHTS_NAME
from ..models.weights_io import error_line
from .checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint_path
from .publish import publish

__all__ = ["FORMATS", "ONNX_OPSET", "ExportError", "ExportResult", "export_model"]

FORMATS = EXPORT_FORMATS
#: ONNX opset of the legacy exporter.
ONNX_OPSET: int = 17
#: Batch size of the parity check; not 1, so the dynamic batch axis is exercised.
CHECK_BATCH: int = 2
_FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx", "safetensors": WEIGHTS_NAME, "config": CONFIG_NAME}


class ExportError(RuntimeError):
    """An export failed or its outputs differ from the eager model; the message names the format."""


class ExportResult(dict[str, Path]):
    """``{"torchscript" | "onnx" | "safetensors" | "config": written path}``, plus what the check measured.

    Attributes:
        differences: Per graph format, the max absolute logit difference to eager on the check input (empty when
            ``check=False``).
        tolerance: The allowed difference, ``atol * max(1, max|eager logits|)`` (None when ``check=False``).
        onnx_exporter: ``"legacy"`` when ONNX was exported (the only exporter used), else None.
    """

    def __init__(
        self,
        paths: Mapping[str, Path],
        differences: Mapping[str, float],
        tolerance: float | None,
        onnx_exporter: str | None,
    ) -> None:
        super().__init__(paths)
        self.differences = dict(differences)
        self.tolerance = tolerance
        self.onnx_exporter = onnx_exporter


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the warnings that tracing and loading this model always raise and that say nothing about this export.

    TracerWarnings come from Python shape arithmetic in the input check and timm's window partitioning (shapes are
    fixed at build time except the batch, which stays symbolic; the batch-2 check proves it); the deprecation notices
    are about the ``torch.jit``/legacy ONNX APIs themselves.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.[\w.]+` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        yield


def _export_onnx(model: MSA2Net, example: torch.Tensor, path: Path) -> str:
    """Write ``path`` with the legacy exporter; returns ``"legacy"``.

    Raises:
        ExportError: the exporter failed (the message gives its error and what to do instead).
    """
    try:
        with _quiet_tracing():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )
    except Exception as err:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"ONNX export failed (legacy TorchScript-based exporter, dynamo=False, opset {ONNX_OPSET}): "
            f"{type(err).__name__}: {error_line(err)}. The dynamo exporter does not support this model (timm's "
            "MaxViT window attention). Export TorchScript only (formats=('torchscript',)) or use a torch version "
            "whose legacy ONNX exporter works"
        ) from err
    return "legacy"


def _check_input(model: MSA2Net) -> torch.Tensor:
    """The fixed parity-check input: (CHECK_BATCH, C, H, W) standard normal, seed 0 (model space is ~[-1, 1])."""
    h, w = model.img_size
    generator = torch.Generator().manual_seed(0)
    return torch.randn(CHECK_BATCH, model.config.in_channels, h, w, generator=generator)


def _torchscript_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    with _quiet_tracing():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(x).numpy()


def _onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: x.numpy()})[0])


def _openvino_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(x.numpy())[0])


_RUNNERS = {"torchscript": _torchscript_logits, "onnx": _onnx_logits, "openvino": _openvino_logits}


def export_model(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    formats: str | Sequence[str] = FORMATS,
    *,
    check: bool = True,
    atol: float = 1e-4,
    batch: int = 1,
    overwrite: bool = False,
    openvino: bool = False,
    int8_calibration: str | os.PathLike[str] | None = None,
    calibration_count: int = 300,
) -> ExportResult:
    """Write a model's published folder with TorchScript and/or ONNX graphs inside, checked against eager PyTorch.

    ``out_dir`` gets what ``msa2net publish`` writes (``config.json``, ``model.safetensors``, ``README.md``) plus
    ``model.ts`` (``torch.jit.trace``) and ``model.onnx`` (dynamic batch axis; input ``image``, output ``logits``);
    ``config.json`` records them under ``exports`` (files, ONNX exporter and opset, input/output shapes, the check).
    The folder loads wherever a model is taken (``--model``, :class:`~msa2net.engine.predictor.Predictor`). It is
    built beside ``out_dir`` and renamed into place only once every format is written and checked: a failed export
    leaves the previous folder (if any) untouched and no partial files. Exporting a published folder into itself
    adds the graphs and keeps its provenance and evaluation.

    Graph input is (B, in_channels, H, W) float32 in model space (see the module docstring), H x W fixed to the
    model's ``img_size``, B free. Output is (B, num_classes, H, W) float32 logits. Runs on the CPU.

    Args:
        checkpoint: A checkpoint, run folder, published folder or the authors' ``.pth`` (path), or a loaded
            checkpoint dict.
        out_dir: The folder to write (new, empty, the published folder given as ``checkpoint``, or ``overwrite``).
        formats: One or more of :data:`FORMATS`.
        check: Run eager, TorchScript and onnxruntime (CPUExecutionProvider) on a fixed random input of batch
            :data:`CHECK_BATCH` and compare the logits.
        atol: Allowed max absolute difference, scaled by ``max(1, max|eager logits|)``.
        batch: Batch size of the example input used for tracing/export.
        overwrite: Replace a non-empty ``out_dir``.
        openvino: Also write the OpenVINO graph ``openvino/model.xml`` (checked like the others), which the openvino
            backend then loads without converting.
        int8_calibration: Also write ``openvino/model-int8.xml``, quantised by NNCF on ``calibration_count`` slices
            of this dataset's training cases and kept only if it passes the agreement gate on its labelled cases
            (:func:`msa2net.engine.quantize.quantize_int8`); implies ``openvino``.

    Returns:
        An :class:`ExportResult`: the written paths by kind (``"torchscript"``, ``"onnx"``, ``"safetensors"``,
        ``"config"``) and the measured differences.

    Raises:
        CheckpointError: the checkpoint cannot be read or lacks fields.
        PretrainedError: ``out_dir`` is another non-empty folder and ``overwrite`` is off.
        ValueError: unknown formats, ``atol`` not positive or ``batch`` < 1.
        ExportError: an exporter failed, or a format's logits differ from eager by more than the tolerance (the
            message names the format, the difference and the tolerance).
    """
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"unknown export formats {unknown or list(formats)}; choose from {', '.join(FORMATS)}")
    if not atol > 0:
        raise ValueError(f"atol must be positive, got {atol}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    formats = [f for f in FORMATS if f in formats]
    source = checkpoint if isinstance(checkpoint, Mapping) else resolve_checkpoint_path(checkpoint)
    ckpt = dict(source) if isinstance(source, Mapping) else load_checkpoint(source)
    model = model_from_checkpoint(ckpt, "cpu")
    (h, w), channels = model.img_size, model.config.in_channels
    example = torch.zeros(batch, channels, h, w)

    out = Path(out_dir)
    in_place = isinstance(source, Path) and source.is_dir() and out.exists() and source.resolve() == out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".export-{uuid.uuid4().hex[:12]}-{out.name}"
    staging.mkdir()
    try:
        staged = {name: staging / _FILE_NAMES[name] for name in formats}
        onnx_exporter = None
        if "torchscript" in formats:
            try:
                with _quiet_tracing():
                    traced = torch.jit.trace(model, example, check_trace=False)  # parity is checked at another batch
                traced.save(str(staged["torchscript"]))
            except Exception as err:
                raise ExportError(f"TorchScript export failed: {type(err).__name__}: {error_line(err)}") from err
        if "onnx" in formats:
            onnx_exporter = _export_onnx(model, example, staged["onnx"])
        openvino_record: dict[str, Any] | None = None
        if openvino or int8_calibration is not None:
            import openvino as ov

            graph = convert_openvino(model)
            save_openvino(graph, staging / "openvino" / "model.xml")
            staged["openvino"] = staging / "openvino" / "model.xml"
            openvino_record = {"version": ov.__version__, "fp32": "openvino/model.xml"}
            if int8_calibration is not None:
                from .quantize import quantize_int8

                int8, openvino_record["int8"] = quantize_int8(
                    model, graph, ckpt, int8_calibration, count=calibration_count
                )
                save_openvino(int8, staging / "openvino" / "model-int8.xml")

        differences: dict[str, float] = {}
        tolerance = None
        if check:
            x = _check_input(model)
            with torch.inference_mode():
                eager = model(x).numpy()
            tolerance = float(atol * max(1.0, float(np.abs(eager).max())))
            for name in [*formats, *(["openvino"] if openvino_record else [])]:
                logits = _RUNNERS[name](staged[name], x)
                if logits.shape != eager.shape:
                    raise ExportError(
                        f"{name} export gives logits of shape {logits.shape} for input {tuple(x.shape)}; eager gives "
                        f"{eager.shape}"
                    )
                differences[name] = float(np.abs(logits.astype(np.float64) - eager).max())
                if not differences[name] <= tolerance:  # NaN fails too
                    raise ExportError(
                        f"{name} export differs from the eager model: max |logit difference| {differences[name]:.3g} "
                        f"> tolerance {tolerance:.3g} (atol {atol:g} x max(1, max|logits| "
                        f"{float(np.abs(eager).max()):.3g})) on a batch of {CHECK_BATCH}; the export is not "
                        "trustworthy. Re-export with another torch version, or raise atol if the difference is "
                        "acceptable"
                    )

        record = {
            "torch_version": torch.__version__,
            "files": {name: _FILE_NAMES[name] for name in formats},
            "input": {"name": "image", "shape": ["batch", channels, h, w], "dtype": "float32", "layout": "NCHW"},
            "output": {"name": "logits", "shape": ["batch", model.num_classes, h, w], "dtype": "float32"},
            "onnx": None if onnx_exporter is None else {"exporter": onnx_exporter, "opset": _onnx_opset(staged)},
            "check": None
            if not check
            else {"batch": CHECK_BATCH, "atol": atol, "tolerance": tolerance, "max_abs_diff": differences},
        }
        if openvino_record is not None:
            record["openvino"] = openvino_record
        files = {_FILE_NAMES[name]: path for name, path in staged.items() if name in _FILE_NAMES}
        files.update({f"openvino/{p.name}": p for p in sorted((staging / "openvino").glob("model*"))})
        given = checkpoint if isinstance(checkpoint, Mapping) else Path(checkpoint)  # a run folder: its evaluation
        publish(given, out, overwrite=overwrite or in_place, exports=record, extra_files=files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    paths = {name: out / _FILE_NAMES[name] for name in [*formats, "safetensors", "config"]}
    if openvino_record is not None:
        paths["openvino"] = out / "openvino" / "model.xml"
        if "int8" in openvino_record:
            paths["openvino-int8"] = out / "openvino" / "model-int8.xml"
    return ExportResult(paths, differences, tolerance, onnx_exporter)


def _onnx_opset(staged: Mapping[str, Path]) -> int | None:
    import onnx

    model = onnx.load(str(staged["onnx"]), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def export_onnx(model: MSA2Net, path: str | os.PathLike[str]) -> None:
    """Write ``model`` as ONNX (dynamic batch, as :func:`export_model`) to ``path``, unchecked."""
    _export_onnx(model, torch.zeros(1, model.config.in_channels, *model.img_size), Path(path))


def convert_openvino(model: MSA2Net) -> Any:
    """``model`` as an OpenVINO graph (``openvino.convert_model`` of the eager model; dynamic batch, fixed
    channels and size)."""
    import openvino as ov

    (h, w), channels = model.img_size, model.config.in_channels
    with _quiet_tracing(), torch.no_grad():
        graph = ov.convert_model(model.eval(), example_input=torch.zeros(1, channels, h, w))
    graph.reshape([-1, channels, h, w])
    return graph


def save_openvino(graph: Any, path: Path) -> None:
    """Write an OpenVINO model (``.xml`` + ``.bin``) so that a reader never sees half of it: both are written
    beside, the ``.bin`` renamed first, the ``.xml`` (what readers look for) last."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    ov.save_model(graph, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
    os.replace(tmp, path)
