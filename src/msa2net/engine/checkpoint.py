"""Self-describing, atomically written, safely loaded checkpoints.

A checkpoint holds everything needed to rebuild the model and run it on new data (model name and arguments,
preprocessing, class names, the training config) and, for training checkpoints, everything needed to resume
exactly (epoch, iteration, optimiser, scheduler, scaler and every RNG state). It is read with
``torch.load(weights_only=True)``: no pickled code is executed. ``export_safetensors`` writes weights only.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._atomic import atomic_path
from ..data.preprocessing import CT_PREPROCESSING
from ..metrics import SYNAPSE_CLASSES
from ..models import MSA2Net, create_model

FORMAT = "msa2net-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "model_name", "model_args", "model", "preprocessing", "class_names")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or lacks fields; the message names the file."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file in the same folder (fsynced), renamed over ``path``.

    A kill at any moment leaves either the previous file or the new one, never a partial file.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def rng_state() -> dict[str, Any]:
    """Every global RNG state (Python, NumPy legacy, torch CPU and CUDA) in weights-only-loadable form."""
    np_state = np.random.get_state()  # noqa: NPY002 (third-party code may use the legacy global RNG)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def make_checkpoint(
    model: MSA2Net,
    model_name: str,
    preprocessing: Mapping[str, Any],
    class_names: list[str] | tuple[str, ...],
    config: Mapping[str, Any] | None = None,
    **training_state: Any,
) -> dict[str, Any]:
    """Assemble a checkpoint dict; ``training_state`` adds epoch, iteration, optimizer, scheduler, ... and
    ``slice_orientation`` (the axis code of the training volumes, which prediction re-indexes new volumes to)."""
    model = getattr(model, "module", model)  # DDP
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {model.num_classes}-class model")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "msa2net_version": __version__,
        "model_name": model_name,
        "model_args": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "preprocessing": dict(preprocessing),
        "class_names": list(class_names),
        "config": dict(config or {}),
        **training_state,
    }


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write atomically (see :func:`atomic_torch_save`)."""
    atomic_torch_save(dict(checkpoint), path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint (weights-only unpickling; no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: {exc}. It may be truncated or not a torch file; msa2net "
            "only loads weights-only checkpoints (no pickled code)."
        ) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{str(path)!r} is not an msa2net checkpoint (found {type(ckpt).__name__})")
    if ckpt.get("format") != FORMAT:
        if _looks_official(ckpt):
            return _from_official(ckpt, path)
        raise CheckpointError(
            f"{str(path)!r} is neither an msa2net checkpoint (no 'format': '{FORMAT}' field) nor an authors' "
            "MSA2Net checkpoint (no decoder_0.* keys)"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {str(path)!r} lacks the fields {missing}; it cannot be used for inference. Re-export it "
            "with msa2net (a training run's best.pt or last.pt has them)."
        )
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {ckpt['format_version']}; this msa2net reads up to "
            f"{FORMAT_VERSION}: upgrade msa2net"
        )
    return ckpt


def _looks_official(obj: Mapping[str, Any]) -> bool:
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    return any(str(k).removeprefix("module.").startswith("decoder_0.") for k in obj)


def _from_official(obj: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """An authors' checkpoint in our checkpoint form: the released code's Synapse setting (1 channel, 224x224)."""
    from ..models.official import OfficialCheckpointError, convert_official_state_dict, read_official_state_dict

    try:
        state = read_official_state_dict(obj)
        converted, _, unknown, variant = convert_official_state_dict(state)
    except OfficialCheckpointError as exc:
        raise CheckpointError(f"{str(path)!r}: {exc}") from exc
    if unknown:
        raise CheckpointError(f"{str(path)!r}: official keys that fit no MSA2Net module: {sorted(unknown)[:10]}")
    head = converted.get("decoder.stage0.head.weight")
    if head is None:
        raise CheckpointError(f"{str(path)!r}: the official checkpoint lacks decoder_0.last_layer.weight")
    num_classes = int(head.shape[0])
    names = ["background", *SYNAPSE_CLASSES] if num_classes == 9 else [f"class_{i}" for i in range(num_classes)]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": f"msa2net_{variant}",
        "model_args": {
            "variant": variant,
            "num_classes": num_classes,
            "in_channels": 1,
            "img_size": [224, 224],
            "encoder": "maxvit_rmlp_small_rw_224",
        },
        "model": converted,
        # the authors' Synapse input: HU windowed to [-125, 275] -> [0, 1] -> [-1, 1]
        "preprocessing": CT_PREPROCESSING.to_dict(),
        "class_names": names,
        "config": {"source": "official", "path": str(path)},
    }


def model_from_checkpoint(ckpt: Mapping[str, Any], device: str | torch.device = "cpu") -> MSA2Net:
    """Rebuild the model a checkpoint describes and load its weights strictly; eval mode."""
    args = dict(ckpt["model_args"])
    args["img_size"] = tuple(args["img_size"])
    model = create_model(ckpt["model_name"], **args)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit {ckpt['model_name']} {args}: {exc}") from exc
    return model.to(device).eval()


def export_safetensors(ckpt: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Weights-only export; model name, arguments, preprocessing and classes go into the metadata (JSON)."""
    import json

    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        "format": FORMAT,
        "model_name": ckpt["model_name"],
        "model_args": json.dumps(ckpt["model_args"]),
        "preprocessing": json.dumps(ckpt["preprocessing"]),
        "class_names": json.dumps(list(ckpt["class_names"])),
        "msa2net_version": __version__,
    }
    tensors = {k: v.contiguous() for k, v in ckpt["model"].items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_safetensors_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a weights-only ``.safetensors`` export back into checkpoint form (inference fields only)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{str(path)!r} is not an msa2net safetensors export (metadata lacks format)")
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": meta["model_name"],
        "model_args": json.loads(meta["model_args"]),
        "model": state,
        "preprocessing": json.loads(meta["preprocessing"]),
        "class_names": json.loads(meta["class_names"]),
        "config": {},
    }
