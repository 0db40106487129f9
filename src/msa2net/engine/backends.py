"""Inference runtimes behind one interface: PyTorch (default), ONNX Runtime and OpenVINO, at fp32, bf16 or int8.

:func:`load_backend` returns a module that :func:`~msa2net.engine.inference.predict_volume` drives like the eager
model (``img_size``, ``num_classes``, ``forward`` on model-space slices). A converted graph is taken from the
published folder when ``msa2net export`` wrote one there (``model.onnx``, ``openvino/model.xml``,
``openvino/model-int8.xml``), else converted once and cached under ``$MSA2NET_CACHE`` (default
``~/.cache/msa2net``), keyed by the weights, the model arguments and the runtime's version, so a second run does not
convert again. ONNX Runtime and OpenVINO are optional extras (``pip install 'msa2net[openvino]'``,
``'msa2net[onnx]'``); asking for one that is not installed says which command installs it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_path
from ..constants import BACKENDS, PRECISIONS
from ..models import MSA2Net
from .export import ONNX_OPSET, convert_openvino, export_onnx, save_openvino
from .inference import RuntimeModel

__all__ = ["BACKENDS", "PRECISIONS", "BackendError", "cache_dir", "load_backend"]

_SUPPORTED = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16", "int8")}
_EXTRAS = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8 layers run int8; the rest stays f32


class BackendError(RuntimeError):
    """A backend that is not installed, a precision it does not offer, or a graph it cannot load."""


def cache_dir() -> Path:
    """Where converted graphs are cached: ``$MSA2NET_CACHE``, else ``~/.cache/msa2net``."""
    return Path(os.environ.get("MSA2NET_CACHE") or Path.home() / ".cache" / "msa2net")


def _fingerprint(model: MSA2Net, runtime_version: str) -> str:
    digest = hashlib.sha256(json.dumps([model.config.to_dict(), runtime_version], sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _import(backend: str) -> Any:
    module, extra = _EXTRAS[backend]
    try:
        return __import__(module)
    except ImportError as err:
        raise BackendError(
            f"the {backend} backend needs the {module} package, which is not installed: pip install "
            f"'msa2net[{extra}]' (or pip install {module})"
        ) from err


def load_backend(
    model: MSA2Net, backend: str = "torch", precision: str = "fp32", *, folder: str | os.PathLike[str] | None = None
) -> torch.nn.Module:
    """``model`` on ``backend`` at ``precision``: the eager model itself for ``torch`` (bf16 is autocast, chosen by
    ``amp``), else a :class:`RuntimeModel` of its converted graph (from ``folder`` when it holds one, else the cache).

    Raises:
        BackendError: an unknown backend or precision, one the backend does not offer (ONNX Runtime: fp32; torch:
            fp32 and bf16 autocast; int8: OpenVINO, from ``msa2net export --int8``), bf16 on a CPU without it, or a
            backend that is not installed.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in _SUPPORTED[backend]:
        raise BackendError(
            f"the {backend} backend offers precision {', '.join(_SUPPORTED[backend])}, not {precision!r}"
            + ("; int8 runs on OpenVINO after msa2net export --int8 --calibration DATA" if precision == "int8" else "")
        )
    if backend == "torch":
        return model
    folder = Path(folder) if folder is not None else None
    model = model.to("cpu").eval()
    if backend == "onnxruntime":
        ort = _import("onnxruntime")
        path = folder / "model.onnx" if folder is not None and (folder / "model.onnx").is_file() else None
        if path is None:
            path = cache_dir() / _fingerprint(model, f"onnx-opset{ONNX_OPSET}") / "model.onnx"
            if not path.is_file():
                with atomic_path(path) as tmp:
                    export_onnx(model, tmp)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return RuntimeModel(lambda x: session.run(None, {name: x})[0], model, f"onnxruntime-{precision}")
    ov = _import("openvino")
    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise BackendError("this CPU has no bf16 support (AVX512-BF16 or AMX); use precision fp32 or int8")
    xml = "model-int8.xml" if precision == "int8" else "model.xml"
    path = folder / "openvino" / xml if folder is not None else None
    if path is None or not path.is_file():
        if precision == "int8":
            raise BackendError(
                f"no int8 model in {folder or 'this checkpoint'}: quantise and check it once with msa2net export "
                "--checkpoint MODEL -o FOLDER --int8 --calibration TRAINING_DATA, then predict with --model FOLDER"
            )
        path = cache_dir() / _fingerprint(model, f"openvino-{ov.__version__}") / "model.xml"
        if not path.is_file():
            save_openvino(convert_openvino(model), path)
    compiled = core.compile_model(
        core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision]}
    )
    return RuntimeModel(lambda x: compiled(x)[0], model, f"openvino-{precision}")
