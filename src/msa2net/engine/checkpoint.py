"""Self-describing, atomically written, safely loaded checkpoints.

A checkpoint holds everything needed to rebuild the model and run it on new data (model name and arguments,
preprocessing, class names, the training config) and, for training checkpoints, everything needed to resume
exactly (epoch, iteration, optimiser, scheduler, scaler and every RNG state). It is read through
:func:`msa2net.models.weights_io.read_weights_file` (``torch.load(weights_only=True)``): no pickled code is
executed.

The metadata is checked against itself and the weights when a checkpoint is loaded and when a model is built from
it (:func:`check_checkpoint`): ``model_args`` keys, the class count of ``class_names`` against the weights' head,
and the input channels of ``preprocessing`` against ``model_args``.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_path
from .._version import __version__
from ..constants import SYNAPSE_CLASS_NAMES
from ..data.preprocessing import CT_PREPROCESSING
from ..models import MSA2Net, create_model
from ..models.msa2net import MSA2NetConfig
from ..models.pretrained import CONFIG_NAME, PretrainedError, is_repo_id, read_pretrained, resolve_pretrained
from ..models.weights_io import WeightsFileError, read_weights_file, unwrap_state_dict

FORMAT = "msa2net-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "model_name", "model_args", "model", "preprocessing", "class_names")
#: Keys ``model_args`` may hold: the fields of :class:`msa2net.models.msa2net.MSA2NetConfig`.
MODEL_ARGS: tuple[str, ...] = tuple(f.name for f in fields(MSA2NetConfig))
#: The weights of the output convolution, whose rows are the classes.
HEAD_WEIGHT = "decoder.stage0.head.weight"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or lacks fields; the message names the file."""


class LegacyModelWarning(UserWarning):
    """A model file of an older format that lacks a record prediction uses; the message says what to do."""


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
    """Read and validate a checkpoint: ours, an authors' ``.pth``, or a ``.safetensors`` export.

    Args:
        path: The file, a run folder (its ``best.pt``, else ``last.pt``: :func:`resolve_checkpoint_path`), or a
            published model folder (``config.json`` + ``model.safetensors``, see :func:`checkpoint_from_pretrained`).
        map_location: Device of the loaded tensors.

    Returns:
        The checkpoint dict (an authors' checkpoint, an export or a published folder converted to our form).

    Raises:
        CheckpointError: the file is missing or unreadable (only weights-only files load: no pickled code runs),
            is neither our checkpoint nor an authors' one, lacks fields, has a newer format version, or its
            metadata disagrees with itself or its weights (see :func:`check_checkpoint`). The message names the
            file.
    """
    path = resolve_checkpoint_path(path)
    if path.is_dir():
        return checkpoint_from_pretrained(path)
    if path.suffix == ".safetensors" and path.is_file():
        ckpt = load_safetensors_checkpoint(path)
        check_checkpoint(ckpt, f"checkpoint {str(path)!r}")
        return ckpt
    try:
        ckpt = read_weights_file(path, map_location)
    except WeightsFileError as exc:
        raise CheckpointError(str(exc).replace("weights file", "checkpoint", 1)) from exc
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
    check_checkpoint(ckpt, f"checkpoint {str(path)!r}")
    return ckpt


#: What a run folder resolves to, in this order: the best validated epoch, else the last one (no validation).
RUN_FOLDER_CHECKPOINTS: tuple[str, ...] = ("best.pt", "last.pt")


def resolve_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """The file (or published folder) a model path names: a run folder gives its ``best.pt``, else ``last.pt``.

    A checkpoint file and a published folder (``config.json`` inside) are returned as they are. A path that does
    not exist is returned too (the reader names it).

    Raises:
        CheckpointError: a folder that is neither a published model nor a run folder with a checkpoint.
    """
    path = Path(path)
    if not path.is_dir() or (path / CONFIG_NAME).is_file():
        return path
    if (path / "model.json").is_file() and (path / "model.safetensors").is_file():
        return path / "model.safetensors"  # a folder of the first export format: its weights carry the model
    found = next((path / name for name in RUN_FOLDER_CHECKPOINTS if (path / name).is_file()), None)
    if found is None:
        raise CheckpointError(
            f"{str(path)!r} is a folder but neither a run folder with best.pt or last.pt nor a published model (no "
            f"{CONFIG_NAME}); pass a checkpoint file, a run folder of `msa2net train`, or a folder written by "
            "`msa2net publish`"
        )
    return found


def check_checkpoint(ckpt: Mapping[str, Any], where: str = "checkpoint") -> None:
    """Check a checkpoint's metadata against itself and its weights, before any model is built.

    Checks: every ``model_args`` key is one of :data:`MODEL_ARGS`; the number of ``class_names`` equals the
    number of classes of the weights (the rows of :data:`HEAD_WEIGHT`) and ``model_args["num_classes"]`` when
    given; ``preprocessing["in_channels"]`` equals ``model_args["in_channels"]`` (default
    ``MSA2NetConfig.in_channels``). Absent fields are not checked here (:func:`load_checkpoint` requires them).

    Args:
        ckpt: A checkpoint dict.
        where: What it came from (e.g. ``"checkpoint 'best.pt'"``), the start of every message.

    Raises:
        CheckpointError: the first disagreement found, naming the key or both counts.
    """
    args = ckpt.get("model_args")
    if args is not None:
        if not isinstance(args, Mapping):
            raise CheckpointError(f"{where}: model_args must be a mapping, found {type(args).__name__}")
        unknown = sorted(str(k) for k in args if k not in MODEL_ARGS)
        if unknown:
            raise CheckpointError(
                f"{where}: model_args has unknown keys {unknown}; valid keys are {list(MODEL_ARGS)}. Was it written "
                "by another msa2net version?"
            )
    args = dict(args or {})
    weights = ckpt.get("model")
    head = weights.get(HEAD_WEIGHT) if isinstance(weights, Mapping) else None
    weight_classes = int(head.shape[0]) if isinstance(head, torch.Tensor) and head.ndim > 0 else None
    names = ckpt.get("class_names")
    if names is not None and weight_classes is not None and len(names) != weight_classes:
        raise CheckpointError(
            f"{where}: class_names lists {len(names)} classes but the weights have {weight_classes} "
            f"({HEAD_WEIGHT} has {weight_classes} rows); class_names must name every output class, background "
            "included"
        )
    if "num_classes" in args and weight_classes is not None and int(args["num_classes"]) != weight_classes:
        raise CheckpointError(
            f"{where}: model_args.num_classes is {args['num_classes']} but the weights have {weight_classes} "
            f"classes ({HEAD_WEIGHT} has {weight_classes} rows)"
        )
    prep = ckpt.get("preprocessing")
    if isinstance(prep, Mapping) and "in_channels" in prep:
        model_channels = int(args.get("in_channels", MSA2NetConfig.in_channels))
        if int(prep["in_channels"]) != model_channels:
            raise CheckpointError(
                f"{where}: preprocessing.in_channels is {prep['in_channels']} but model_args.in_channels is "
                f"{model_channels}; the preprocessing must produce the model's input channels"
            )


def _looks_official(obj: Mapping[str, Any]) -> bool:
    try:
        state = unwrap_state_dict(obj)
    except WeightsFileError:
        return False
    return any(k.startswith("decoder_0.") for k in state)


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
    head = converted.get(HEAD_WEIGHT)
    if head is None:
        raise CheckpointError(f"{str(path)!r}: the official checkpoint lacks decoder_0.last_layer.weight")
    num_classes = int(head.shape[0])
    synapse = num_classes == len(SYNAPSE_CLASS_NAMES)
    names = list(SYNAPSE_CLASS_NAMES) if synapse else [f"class_{i}" for i in range(num_classes)]
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
    """Rebuild the model a checkpoint describes and load its weights strictly; eval mode.

    Raises:
        CheckpointError: the metadata disagrees with itself or the weights (:func:`check_checkpoint`), or the
            weights do not fit the model the metadata describes.
    """
    check_checkpoint(ckpt, f"checkpoint of {ckpt.get('model_name')!r}")
    args = dict(ckpt["model_args"])
    if "img_size" in args:
        args["img_size"] = tuple(args["img_size"])
    model = create_model(ckpt["model_name"], **args)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit {ckpt['model_name']} {args}: {exc}") from exc
    return model.to(device).eval()


def load_safetensors_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.safetensors`` file of the first export format (the model described in its metadata; exports are
    published folders now) into checkpoint form (inference fields only)."""
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
        "slice_orientation": json.loads(meta.get("slice_orientation", "null")),
    }


def checkpoint_from_pretrained(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> dict[str, Any]:
    """A published model (folder or hub repo id, see :mod:`msa2net.models.pretrained`) in checkpoint form.

    The result has the inference fields of a checkpoint (model name and arguments, weights, preprocessing, class
    names), ``config`` = the run config recorded in the folder's provenance (empty when none), and ``pretrained`` =
    the folder's whole ``config.json``.

    Raises:
        CheckpointError: not a complete msa2net folder, no preprocessing recorded, or metadata that disagrees with
            the weights (:func:`check_checkpoint`).
        HubUnavailableError: a repo id whose files are not cached while the hub cannot be reached (within seconds;
            the message says what to download and where to put it).
    """
    folder = resolve_pretrained(source, revision=revision, cache_dir=cache_dir, token=token)
    try:
        config, state = read_pretrained(folder)
    except PretrainedError as exc:
        raise CheckpointError(str(exc)) from exc
    where = f"published model {str(source)!r}"
    if not config.get("preprocessing"):
        raise CheckpointError(
            f"{where} records no preprocessing, so raw images cannot be mapped to the model's input; save it with "
            "preprocessing=Preprocessing(...).to_dict() (msa2net publish records the training data's)"
        )
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "msa2net_version": config.get("msa2net_version"),
        "model_name": config.get("model_name") or f"msa2net_{config['model_args'].get('variant', 'paper')}",
        "model_args": dict(config["model_args"]),
        "model": state,
        "preprocessing": dict(config["preprocessing"]),
        "class_names": list(config["class_names"]),
        "config": dict((config.get("provenance") or {}).get("run_config") or {}),
        "slice_orientation": config.get("slice_orientation"),
        "pretrained": config,
        "pretrained_folder": str(folder),  # where exported graphs may wait (see msa2net.engine.backends)
    }
    check_checkpoint(ckpt, where)
    if "slice_orientation" not in config:
        warnings.warn(
            f"{where} was published by msa2net {config.get('msa2net_version') or '< 0.1'} (config.json format_version "
            f"{config.get('format_version')}), which did not record the plane the model was trained in: volumes are "
            "sliced along their first array axis as stored. If the model was trained on volumes of another layout "
            "(e.g. the aal preset's sagittal slices), its masks of such volumes are wrong: publish it again from its "
            "training checkpoint (msa2net publish --checkpoint RUN_FOLDER -o FOLDER), which records it.",
            LegacyModelWarning,
            stacklevel=2,
        )
    return ckpt


def load_model_source(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Any model source in checkpoint form: a checkpoint dict, a checkpoint file (ours, the authors' ``.pth``, a
    ``.safetensors`` export), a published model folder, or a hub repo id ``owner/name`` of one.

    A path that exists is read from disk; a path that does not is taken as a repo id when it has that form (and no
    weights-file suffix), else reported missing.

    Raises:
        CheckpointError: a missing or unreadable file or folder (see :func:`load_checkpoint`).
        HubUnavailableError: a repo id whose files are not cached while the hub cannot be reached.
    """
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.exists() and is_repo_id(str(source)):
        return checkpoint_from_pretrained(str(source))
    return load_checkpoint(path)
