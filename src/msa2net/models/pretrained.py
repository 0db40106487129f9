"""Trained models in the Hugging Face hub layout: a folder with ``config.json``, ``model.safetensors`` and a model
card ``README.md``.

``config.json`` says how to rebuild the network (``model_name``, ``model_args``: the fields of
:class:`~msa2net.models.msa2net.MSA2NetConfig`) and how to use it (``preprocessing``, ``class_names``), and records
where the weights come from (``provenance``: source checkpoint, epoch, best validation metric, the run's config,
msa2net version), when known, the evaluation figures the card shows (``evaluation``) and the training data's record
(``dataset``: name, description, classes; absent in folders published before it travelled). ``model.safetensors`` holds
the state dict, tensors only: loading never runs pickled code. The card is generated from ``config.json`` alone by
the builder the top package installs (:data:`msa2net._hooks.model_card_builder`, which is
:func:`msa2net.reporting.card.build_model_card`), or passed in as text; this floor holds no reporting code.

A folder is written atomically: into a hidden temporary folder beside the target, renamed into place when complete.

Hub access (:func:`resolve_pretrained`, :func:`push_folder_to_hub`) fails within seconds when the hub cannot be
reached: ``HF_HUB_OFFLINE`` is honoured, and a TCP probe of the endpoint (``HF_ENDPOINT``, default
https://huggingface.co) with a short timeout runs before ``huggingface_hub`` is asked for anything, so its retries
never start. Files already in the hub cache are used without any network access.

This module knows nothing of training checkpoints; :mod:`msa2net.engine.publish` turns a checkpoint into a folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import _hooks
from .._atomic import _default_file_mode, atomic_folder
from .._json import json_safe
from .hub import HubUnreachable, check_hub, hub_endpoint
from .weights_io import WeightsFileError, error_line, read_weights_file

if TYPE_CHECKING:
    from .msa2net import MSA2Net

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "HubUnavailableError",
    "PretrainedError",
    "build_pretrained_config",
    "file_sha256",
    "hub_endpoint",
    "is_repo_id",
    "push_folder_to_hub",
    "read_pretrained",
    "resolve_pretrained",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: ``config.json`` ``format`` field of msa2net folders, and the newest ``format_version`` this code reads. Version 2
#: added ``slice_orientation`` (required from then on; version 1 folders did not record it).
FORMAT = "msa2net-pretrained"
FORMAT_VERSION = 2
LIBRARY_NAME = "msa2net"

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class PretrainedError(ValueError):
    """A pretrained folder that is missing, incomplete or inconsistent; the message names the folder and the fix."""


class HubUnavailableError(PretrainedError):
    """The Hugging Face hub cannot be reached (offline, ``HF_HUB_OFFLINE``, or a refused connection); the message says
    what to download and where to put it."""


# ---------------------------------------------------------------------------------------------- hub helpers


def is_repo_id(text: str) -> bool:
    """Whether ``text`` has the form of a hub model repo id, ``owner/name``, and not of a weights file name.

    A path such as ``runs/best.pt`` has the form too, but names a file: repo ids ending in a weights suffix
    (``.pt``, ``.pth``, ``.bin``, ``.safetensors``, ``.ckpt``) are not taken as repo ids.
    """
    return bool(_REPO_ID_RE.match(text)) and not text.lower().endswith(_WEIGHT_SUFFIXES)


def _download_instructions(repo_id: str, endpoint: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"On a machine with internet, download the repository: `hf download {repo_id}{rev} --local-dir "
        f"{repo_id.split('/')[-1]}` (`huggingface-cli download` with huggingface_hub < 0.34), or fetch {CONFIG_NAME} "
        f"and {WEIGHTS_NAME} from {endpoint}/{repo_id}/tree/{revision or 'main'} into one folder. Copy that folder "
        "to this machine and pass its path instead of the repo id (--model PATH, or MSA2Net.from_pretrained(PATH))."
    )


def _check_hub_reachable(repo_id: str, action: str, revision: str | None = None) -> str:
    """The endpoint, after checking it can be reached within :data:`msa2net.models.hub.HUB_PROBE_TIMEOUT_S` seconds.

    Raises:
        HubUnavailableError: ``HF_HUB_OFFLINE`` is set or no TCP connection to the endpoint opened in time.
    """
    try:
        return check_hub()
    except HubUnreachable as why:
        raise HubUnavailableError(
            f"cannot {action} {repo_id!r}: the Hugging Face hub at {hub_endpoint()} cannot be reached ({why}). "
            + (_download_instructions(repo_id, hub_endpoint(), revision) if action == "download" else "")
        ) from None


# ---------------------------------------------------------------------------------------------- config.json


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in 4 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def build_pretrained_config(
    model: MSA2Net,
    *,
    model_name: str | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    license: str = "mit",
    slice_orientation: str | None = None,
    dataset: Mapping[str, Any] | None = None,
    postprocessing: Mapping[str, Any] | None = None,
    exports: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content for ``model``: the one description of a model wherever it travels.

    Args:
        model: The network.
        model_name: Registered name to rebuild it with; default the registered preset of the model's variant and
            encoder (:meth:`~msa2net.models.msa2net.MSA2Net.preset_name`).
        preprocessing: A :meth:`msa2net.data.preprocessing.Preprocessing.to_dict` mapping (needed to segment image
            files; may be None for a bare network).
        class_names: One name per output class, background first; default ``class_0 .. class_{n-1}``.
        provenance: Where the weights come from (source checkpoint, epoch, best validation metric, run config, ...);
            stored as given.
        evaluation: An evaluation summary (``summary.json`` of ``msa2net evaluate``) without per-case rows; stored
            as given, shown by the model card.
        license: The weights' licence, a hub licence id (``mit``, ``apache-2.0``, ``cc-by-nc-4.0``, ``other``, ...).
        slice_orientation: The axis code of the volumes the model was trained on (e.g. ``"AIR"``: sagittal slices;
            see :mod:`msa2net.data.orientation`), which prediction re-indexes new volumes to; None for 2D data or
            when unknown (volumes are then sliced as stored).
        dataset: What the model card says about the training data (:meth:`msa2net.data.source.Source.dataset_record`:
            kind, name, description, class and channel names, ...); stored as given.
        postprocessing: What prediction applies to the labels by default, ``{"keep_largest": [class names]}``.
        exports: The exported graphs in the folder (``msa2net export``): per format its file, and the exporter,
            input/output and parity check records.

    Returns:
        A JSON-ready dict (see the module docstring for its keys).

    Raises:
        PretrainedError: the number of class names differs from the model's classes, or the preprocessing's
            ``in_channels`` from the model's.
    """
    from .._version import __version__

    names = [f"class_{i}" for i in range(model.num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != model.num_classes:
        raise PretrainedError(
            f"{len(names)} class names given for a {model.num_classes}-class model; name every output class, "
            "background first"
        )
    prep = dict(preprocessing) if preprocessing is not None else None
    if prep is not None and int(prep.get("in_channels", model.config.in_channels)) != model.config.in_channels:
        raise PretrainedError(
            f"preprocessing.in_channels is {prep['in_channels']} but the model takes {model.config.in_channels} "
            "channels; the preprocessing must produce the model's input"
        )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_name": LIBRARY_NAME,
        "msa2net_version": __version__,
        "model_name": model_name or model.preset_name(),
        "model_args": model.config.to_dict(),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "preprocessing": prep,
        "class_names": names,
        "slice_orientation": None if slice_orientation is None else str(slice_orientation),
        "license": str(license),
        "provenance": dict(provenance or {}),
        "evaluation": dict(evaluation) if evaluation is not None else None,
        "dataset": dict(dataset) if dataset is not None else None,
        "postprocessing": dict(postprocessing or {}),
        "exports": dict(exports or {}),
    }


def _check_config(config: Any, where: str, valid_args: Collection[str] | None = None) -> dict[str, Any]:
    """``config.json`` content checked for what :func:`read_pretrained` needs, and ``model_args`` against
    ``valid_args`` (the fields of the model's config) when given; returns it as a dict."""

    if not isinstance(config, Mapping):
        raise PretrainedError(f"{where} holds a {type(config).__name__}, not a JSON object")
    if config.get("format") != FORMAT:
        raise PretrainedError(
            f'{where} is not an msa2net model config: expected "format": "{FORMAT}", found '
            f"{config.get('format')!r}. Is this folder a model of another library? msa2net folders are written by "
            "`msa2net publish` or MSA2Net.save_pretrained."
        )
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PretrainedError(
            f"{where} has format_version {version!r}; this msa2net reads versions up to {FORMAT_VERSION}: upgrade "
            "msa2net (pip install -U msa2net)"
        )
    required = ("model_args", "class_names") + (("slice_orientation",) if version >= 2 else ())
    missing = [k for k in required if k not in config]
    if missing:
        raise PretrainedError(f"{where} lacks the fields {missing}; re-publish the model with msa2net")
    args = config["model_args"]
    valid = set(valid_args) if valid_args is not None else set(args) if isinstance(args, Mapping) else set()
    if not isinstance(args, Mapping) or set(args) - valid:
        unknown = sorted(set(args) - valid) if isinstance(args, Mapping) else args
        raise PretrainedError(
            f"{where}: model_args must be a mapping of {sorted(valid)}, found unknown keys {unknown}. Was it written "
            "by a newer msa2net? Upgrade msa2net."
        )
    return dict(config)


# ---------------------------------------------------------------------------------------------- write


def save_pretrained(
    model: MSA2Net,
    save_directory: str | os.PathLike[str],
    *,
    config: Mapping[str, Any] | None = None,
    card: bool | str = True,
    repo_id: str | None = None,
    overwrite: bool = False,
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> Path:
    """Write ``model`` as a hub-layout folder: ``config.json``, ``model.safetensors`` and (``card``) ``README.md``.

    The folder is built in a hidden temporary folder beside ``save_directory`` and renamed into place when every file
    is written: an interrupted save leaves the previous folder (or none), never a partial one.

    Args:
        model: The network; its state dict is written as is (float32 stays float32).
        save_directory: Target folder. It may not exist yet, or be empty; a non-empty one needs ``overwrite``.
        config: The ``config.json`` content (:func:`build_pretrained_config`); default one built from the model
            alone (generic class names, no preprocessing).
        card: True: the card of the installed builder (:data:`msa2net._hooks.model_card_builder`, which the top
            package sets to :func:`msa2net.reporting.card.build_model_card`); a string: that text; False: no card.
        repo_id: The hub repo the folder is meant for, shown in the card's usage examples.
        overwrite: Replace a non-empty ``save_directory``.
        extra_files: ``{name in the folder: file}`` moved into the folder with the rest (exported graphs).

    Returns:
        The folder.

    Raises:
        PretrainedError: ``save_directory`` is a file, or a non-empty folder without ``overwrite``; the config does
            not describe this model; ``card=True`` while no card builder is installed.
    """
    from safetensors.torch import save_file

    builder = _hooks.model_card_builder
    if card is True and builder is None:
        raise PretrainedError("no model card builder is installed; pass the card text (card=...) or card=False")
    target = Path(save_directory)
    cfg = _check_config(
        config if config is not None else build_pretrained_config(model),
        "the given config",
        [f.name for f in dataclasses.fields(model.config)],
    )
    if dict(cfg["model_args"]) != model.config.to_dict():
        raise PretrainedError(
            f"config model_args {dict(cfg['model_args'])} do not describe this model ({model.config.to_dict()}); "
            "build the config with build_pretrained_config(model, ...)"
        )
    with atomic_folder(target, overwrite=overwrite, error=PretrainedError) as staging:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        # one metadata key: safetensors stores several in hash order, and the bytes would vary between saves
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        text = json.dumps(json_safe(cfg), indent=2, allow_nan=False)  # NaN figures become null
        (staging / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
        # safetensors writes through a private temporary file (mode 0600); give it the mode of the other files
        os.chmod(staging / WEIGHTS_NAME, _default_file_mode())
        if card is not False:
            text = builder(cfg, repo_id=repo_id) if card is True else str(card)  # type: ignore[misc]
            (staging / CARD_NAME).write_text(text, encoding="utf-8")
        for name, path in (extra_files or {}).items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(os.fspath(path), staging / name)
    return target


# ---------------------------------------------------------------------------------------------- read


def resolve_pretrained(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local folder holding ``config.json`` and ``model.safetensors`` for a folder path or a hub repo id.

    An existing path is used as is (nothing else is needed). Otherwise ``source`` must be a repo id ``owner/name``:
    files already in the hub cache are used without network; else, unless ``local_files_only``, the hub is probed
    and the two files are downloaded into the cache.

    Raises:
        PretrainedError: the path is not a pretrained folder, or ``source`` is neither an existing path nor a repo
            id, or the repo has no such files.
        HubUnavailableError: the files are not cached and the hub cannot be reached (within seconds; the message
            says what to download and where to put it), or ``local_files_only`` and they are not cached.
    """
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise PretrainedError(
                f"{path} is a file; a pretrained model is a folder holding {CONFIG_NAME} and {WEIGHTS_NAME} (use "
                "--checkpoint for a checkpoint file)"
            )
        return path
    text = str(source)
    if not is_repo_id(text):
        raise PretrainedError(
            f"{text!r} is neither an existing folder nor a hub repo id of the form owner/name; check the path"
        )
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = [try_to_load_from_cache(text, name, cache_dir=cache_dir, revision=revision) for name in _NEEDED]
    if all(isinstance(c, str) for c in cached):
        return Path(cached[0]).parent  # type: ignore[arg-type]
    if local_files_only:
        raise HubUnavailableError(
            f"{text!r} is not a local folder and its files are not in the hub cache (local_files_only). "
            + _download_instructions(text, hub_endpoint(), revision)
        )
    endpoint = _check_hub_reachable(text, "download", revision)
    files = []
    for name in _NEEDED:
        try:
            files.append(
                hf_hub_download(
                    text,
                    name,
                    revision=revision,
                    cache_dir=cache_dir,
                    token=token,
                    endpoint=endpoint,
                    library_name=LIBRARY_NAME,
                )
            )
        except Exception as exc:  # network and HTTP errors of several libraries
            raise PretrainedError(
                f"downloading {name} of {text!r} from {endpoint} failed: {type(exc).__name__}: {error_line(exc)}. "
                f"Check the repo id (and --revision/token for private repos); msa2net repos hold {CONFIG_NAME} and "
                f"{WEIGHTS_NAME}."
            ) from exc
    return Path(files[0]).parent


_NEEDED = (CONFIG_NAME, WEIGHTS_NAME)


def read_pretrained(
    folder: str | os.PathLike[str], valid_args: Collection[str] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, state dict)`` of a local pretrained folder, checked for format and completeness, and its
    ``model_args`` against ``valid_args`` (the model config's fields) when given.

    Raises:
        PretrainedError: a file is missing or unreadable, ``config.json`` is not an msa2net config (or too new), or
            the weights are not a state dict of tensors.
    """
    folder = Path(folder)
    missing = [name for name in _NEEDED if not (folder / name).is_file()]
    if missing:
        raise PretrainedError(
            f"{folder} is not a complete msa2net model folder: {', '.join(missing)} missing (a folder written by "
            f"`msa2net publish` holds {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME}); copy the whole folder"
        )
    where = str(folder / CONFIG_NAME)
    try:
        raw = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PretrainedError(f"cannot read {where}: {exc}; copy the folder again") from exc
    config = _check_config(raw, where, valid_args)
    try:
        state = read_weights_file(folder / WEIGHTS_NAME)
    except WeightsFileError as exc:
        raise PretrainedError(str(exc)) from exc
    return config, state


# ---------------------------------------------------------------------------------------------- push


def push_folder_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str = "Upload msa2net model",
    revision: str | None = None,
) -> str:
    """Upload a pretrained folder to a hub model repo (created if needed); returns the commit URL.

    Raises:
        PretrainedError: ``folder`` is not a complete pretrained folder, or ``repo_id`` is not ``owner/name``.
        HubUnavailableError: the hub cannot be reached (within seconds); the folder is left as it is.
        RuntimeError: the hub refused the upload (permissions, token), with its message.
    """
    read_pretrained(folder)  # refuse to upload an incomplete or foreign folder
    if not is_repo_id(repo_id):
        raise PretrainedError(f"repo id {repo_id!r} must have the form owner/name")
    try:
        endpoint = _check_hub_reachable(repo_id, "upload to", revision)
    except HubUnavailableError as exc:
        raise HubUnavailableError(
            f"{exc}The model folder {folder} is complete: upload it later with `hf upload {repo_id} {folder} .` "
            "(`huggingface-cli upload` with huggingface_hub < 0.34) or rerun with --push."
        ) from None
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            repo_type="model",
            revision=revision,
        )
    except Exception as exc:  # HTTP errors of several kinds
        raise RuntimeError(
            f"uploading {folder} to {endpoint}/{repo_id} failed: {type(exc).__name__}: {exc}. Log in with "
            "`hf auth login` (or set HF_TOKEN) with a token that may write to the repo."
        ) from exc
    return str(getattr(info, "commit_url", info))
