"""The dataset kinds msa2net knows, and :func:`open_source`, which opens a folder as the right one.

Importing this module registers the built-in sources; they import :mod:`msa2net.data.source` only (no cycle).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .folder import FolderSource
from .isic import ISICSource
from .source import Source, registered_sources
from .synapse import SynapseSource

__all__ = ["open_source", "source_kinds", "source_option_choices", "source_option_names"]

_BUILTIN_ORDER = tuple(cls.kind for cls in (SynapseSource, ISICSource, FolderSource))


def source_kinds() -> tuple[str, ...]:
    """Registered dataset kinds: the built-in ones first, then others in registration order."""
    kinds = registered_sources()
    return tuple(sorted(kinds, key=lambda k: _BUILTIN_ORDER.index(k) if k in _BUILTIN_ORDER else len(_BUILTIN_ORDER)))


def source_option_names() -> tuple[str, ...]:
    """The kind-specific options of every registered kind (e.g. Synapse's ``labels`` and ``intensity``)."""
    kinds = registered_sources()
    return tuple(dict.fromkeys(name for kind in source_kinds() for name in kinds[kind].OPTIONS))


def source_option_choices(name: str) -> tuple[str, ...]:
    """The allowed values of the kind-specific option ``name`` over every registered kind (empty if none has it)."""
    kinds = registered_sources()
    return tuple(dict.fromkeys(value for kind in source_kinds() for value in kinds[kind].OPTIONS.get(name, ())))


def open_source(
    root: str | os.PathLike[str], kind: str | None = None, options: Mapping[str, Any] | None = None
) -> Source:
    """Open a prepared dataset folder as a :class:`Source` of ``kind`` (None: detected from its files).

    ``options`` are kind-specific (None values: the kind's default); a non-None option the kind lacks is an error.
    """
    registry = registered_sources()
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist (data.root / --data)")
    if kind is None:
        found = [name for name in source_kinds() if registry[name].detect(root)]
        if len(found) != 1:
            what = "no known dataset layout" if not found else f"the layouts of several kinds ({', '.join(found)})"
            raise ValueError(
                f"{str(root)!r} has {what}: expected a prepared Synapse folder (train_npz/ or test_vol_h5/ with "
                "lists_Synapse/), a dataset folder (dataset.json, imagesTr/, labelsTr/) or a prepared ISIC 2018 folder "
                "(train.npz, val.npz, test.npz); prepare the raw data with msa2net prepare, or set data.kind"
            )
        kind = found[0]
    if kind not in registry:
        raise ValueError(f"unknown data.kind {kind!r}; choose one of {', '.join(source_kinds())}")
    cls = registry[kind]
    given = {k: v for k, v in (options or {}).items() if v is not None}
    foreign = sorted(set(given) - set(cls.OPTIONS))
    if foreign:
        raise ValueError(
            f"data.{foreign[0]} does not apply to {kind} data ({root}); it takes "
            + (", ".join(f"data.{k}" for k in cls.OPTIONS) or "no kind-specific options")
        )
    for name, value in given.items():
        if value not in cls.OPTIONS[name]:
            raise ValueError(f"data.{name} must be one of {', '.join(cls.OPTIONS[name])}, got {value!r}")
    return cls(root, **given)  # type: ignore[call-arg]
