"""The one reader of weight files: msa2net checkpoints, the authors' checkpoints and ImageNet encoder weights.

Torch files are read with ``torch.load(weights_only=True)``, so no pickled code ever runs: tensors, numbers,
strings and plain containers load, anything else is refused. ``.safetensors`` files hold tensors only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "STATE_DICT_WRAPPERS",
    "WeightsFileError",
    "error_line",
    "key_mismatch_report",
    "read_weights_file",
    "unwrap_state_dict",
]

#: Keys under which training scripts commonly nest the state dict, tried in this order.
STATE_DICT_WRAPPERS: tuple[str, ...] = ("state_dict", "model", "state_dict_ema")

_DATA_PARALLEL_PREFIX = "module."


class WeightsFileError(ValueError):
    """A weights file that is missing, unreadable or holds no state dict; the message names the file."""


def read_weights_file(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a ``.safetensors`` file, or any other suffix as a weights-only torch file.

    Args:
        path: The file.
        map_location: Device the tensors of a torch file are loaded onto.

    Returns:
        The dict the file holds: a state dict, or a checkpoint dict wrapping one (see :func:`unwrap_state_dict`).

    Raises:
        WeightsFileError: the file does not exist, cannot be read as a weights-only torch file or safetensors
            file (truncated, another format, or pickled objects other than tensors and plain containers), or
            does not hold a dict. The message names the file.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsFileError(f"weights file {str(file)!r} does not exist")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(file), device=str(map_location))
        else:
            obj = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for bad files
        raise WeightsFileError(
            f"cannot read weights file {str(file)!r}: {type(exc).__name__}: {error_line(exc)}. It may be truncated "
            "or not a torch/safetensors file; msa2net only loads weights-only files (tensors and plain containers, "
            "no pickled code)."
        ) from exc
    if not isinstance(obj, dict):
        raise WeightsFileError(f"weights file {str(file)!r} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def unwrap_state_dict(obj: Mapping[str, Any], where: str = "the given state dict") -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint dict, with DataParallel's ``module.`` prefix removed.

    Args:
        obj: A state dict, or a dict holding one under the first of :data:`STATE_DICT_WRAPPERS` present.
        where: What ``obj`` came from (a file name), for error messages.

    Returns:
        A new ``{key: tensor}`` dict; ``module.`` is stripped when every key carries it.

    Raises:
        WeightsFileError: no state dict, an empty one, or entries that are not tensors (the first few named).
    """
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f"{where} holds a {type(obj).__name__}, not a state dict")
    obj = next((obj[w] for w in STATE_DICT_WRAPPERS if isinstance(obj.get(w), Mapping)), obj)
    if not obj:
        raise WeightsFileError(f"{where} holds no state dict (an empty dict)")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith(_DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(_DATA_PARALLEL_PREFIX) :]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsFileError(f"{where} is not a state dict of tensors: non-tensor entries {bad[:5]}")
    return state


def key_mismatch_report(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    extra_unexpected: Sequence[str] = (),
    given_name: str = "file",
    limit: int = 20,
) -> str | None:
    """Every difference between a module's state dict and the tensors offered for it, for an error message.

    Args:
        expected: The module's own ``state_dict()``.
        given: The tensors to load.
        extra_unexpected: Further keys to report as unexpected (e.g. keys a converter could not map).
        given_name: What ``given`` is called in the message (``"file"``, ``"checkpoint"``).
        limit: Keys shown per kind of difference; the rest are counted.

    Returns:
        None when every key is present with its shape and nothing is left over; else the listing of missing,
        unexpected and mis-shaped keys, one block per kind.
    """
    missing = sorted(k for k in expected if k not in given)
    unexpected = sorted([*extra_unexpected, *(k for k in given if k not in expected)])
    shaped = sorted(
        f"{k}: {given_name} {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in given
        if k in expected and given[k].shape != expected[k].shape
    )
    lines = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shaped)):
        if keys:
            shown = "\n    ".join(keys[:limit]) + (
                f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
            )
            lines.append(f"  {title} ({len(keys)}):\n    {shown}")
    return "\n".join(lines) or None


def error_line(err: BaseException) -> str:
    """The first line of an error's text without its closing period: messages quote it inside their own sentence."""
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".") if text else ""
