"""One seam between data and engine: every dataset kind reaches training and evaluation as a :class:`Source`.

A source tells the engine its classes, channels, raw-file :class:`Preprocessing` (what checkpoints store), whether
scores pool pixels, the case split, slice orientation, model-card record, training dataset and whole :class:`Case`
records. Images handed out are in the unit representation (:meth:`Preprocessing.to_unit` output). A new kind is a
subclass registered with :func:`register_source`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import VALIDATION_MODES, DatasetRecord
from .io import Geometry
from .preprocessing import Preprocessing

__all__ = [
    "VALIDATION_MODES",
    "Case",
    "EpochSeededDataset",
    "Source",
    "Split",
    "register_source",
    "registered_sources",
    "split_cases",
]


@dataclass
class Case:
    """One labelled case: unit ``float32`` image ``(D, H, W[, C])``, ``int64`` label ``(D, H, W)``, spacing
    ``(z, y, x)`` mm and the source file's geometry (None when unknown)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float] | None = None
    geometry: Geometry | None = None


@dataclass
class Split:
    """Which case ids train and which validate, with notes the user should see."""

    train: list[str]
    val: list[str]
    notes: list[str] = field(default_factory=list)


class EpochSeededDataset(Dataset):
    """Base of every training dataset: item ``i`` of epoch ``e`` draws from ``default_rng([seed, e, i])``.

    The epoch lives in a shared-memory tensor, so :meth:`set_epoch` reaches DataLoader workers, persistent included.
    """

    def __init__(self, seed: int = 0) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The current epoch (0 until :meth:`set_epoch` is called)."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the random streams of ``epoch`` (a non-negative integer)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch}")
        self._epoch.fill_(int(epoch))

    def rng(self, index: int) -> np.random.Generator:
        """The random stream of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])


def split_cases(cases: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Hold out ``round(n * val_fraction)`` whole cases (1 to ``n - 1``), shuffled by ``seed``; sorted train, val."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(cases)
    if len(set(ordered)) != len(ordered):
        duplicates = sorted({c for c in ordered if ordered.count(c) > 1})
        raise ValueError(f"duplicate case ids {duplicates}; each case must appear once")
    if val_fraction == 0.0:
        return ordered, []
    if len(ordered) < 2:
        raise ValueError(
            f"cannot hold out a validation case from {len(ordered)} training case(s); add cases, or set "
            "data.validation=none (or data.val_fraction=0)"
        )
    n_val = min(max(1, round(len(ordered) * val_fraction)), len(ordered) - 1)
    order = np.random.default_rng(seed).permutation(len(ordered))
    val = sorted(ordered[i] for i in order[:n_val])
    train = sorted(ordered[i] for i in order[n_val:])
    return train, val


class Source(ABC):
    """A prepared dataset of one kind, as the engine sees it (see the module docstring).

    Subclasses set :attr:`kind`, :attr:`OPTIONS` (kind-specific options and their choices, first the default),
    and in ``__init__`` :attr:`root`, :attr:`class_names`, :attr:`in_channels` and :attr:`preprocessing`.
    """

    #: Name used in configs (``data.kind``) and reports.
    kind: ClassVar[str]
    #: Kind-specific options: name -> allowed values, the first being the default.
    OPTIONS: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: True when scores pool the pixels of all cases (ISIC), False for per-case scores averaged over cases.
    pooled: ClassVar[bool] = False

    root: Path
    class_names: list[str]
    in_channels: int
    preprocessing: Preprocessing

    @classmethod
    @abstractmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` looks like a dataset of this kind (cheap: file names only)."""

    @abstractmethod
    def train_ids(self) -> list[str]:
        """Ids of the labelled cases available for training (and held-out validation)."""

    def test_ids(self) -> list[str]:
        """Ids of the labelled test cases that evaluation uses by default (empty when the kind has none)."""
        return []

    def evaluation_ids(self) -> list[str]:
        """The cases ``evaluate`` scores when none are named: :meth:`test_ids`."""
        return self.test_ids()

    def slice_orientation(self) -> str | None:
        """The axis code shared by the training volumes (the plane the model learns; prediction re-indexes inputs
        to it), or None for 2D data, untrustworthy geometry or mixed layouts."""
        return None

    def normalize_id(self, case: str) -> str:
        """A user-given case id in this source's spelling (e.g. ``"0005"`` -> ``"case0005"``)."""
        return str(case)

    @abstractmethod
    def training_dataset(
        self, ids: Sequence[str], transform: Callable[..., tuple[torch.Tensor, torch.Tensor]], seed: int
    ) -> EpochSeededDataset:
        """Slice-wise training samples of ``ids``: items ``{"image", "label", "name"}`` from
        ``transform(unit_slice, label_slice, rng)``."""

    @abstractmethod
    def cases(self, ids: Sequence[str], preprocessing: Preprocessing | None = None) -> Iterator[Case]:
        """Whole labelled cases, loaded one at a time, with raw files mapped by ``preprocessing.to_unit``
        (default :attr:`preprocessing`; prepared kinds whose files are stored already mapped ignore it)."""

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    def describe(self) -> str:
        """One line for logs."""
        return f"{self.kind} data at {self.root} ({self.num_classes} classes, {self.in_channels} channel(s))"

    def dataset_record(self) -> DatasetRecord:
        """What a model card says about this dataset (kind, folder name, classes); kinds that know more override it."""

        return {"kind": self.kind, "name": self.root.resolve().name, "class_names": list(self.class_names)}

    def select(self, ids: Sequence[str], available: Sequence[str], what: str) -> list[str]:
        """``ids`` in this source's spelling, sorted and unique, each checked to be one of ``available``
        (``what`` names them in the error, e.g. ``"data.val_cases"``)."""
        chosen = [self.normalize_id(c) for c in ids]
        unknown = sorted(set(chosen) - set(available))
        if unknown:
            shown = ", ".join(list(available)[:8]) + (" ..." if len(available) > 8 else "")
            raise ValueError(f"{what} {unknown} are not cases of {self.root}; available: {shown}")
        return sorted(set(chosen))

    def split(
        self,
        validation: str = "held_out",
        *,
        val_fraction: float = 0.2,
        val_cases: Sequence[str] | None = None,
        train_cases: Sequence[str] | None = None,
        seed: int = 0,
    ) -> Split:
        """Training and validation case ids: ``"held_out"`` (``val_cases``, else :func:`split_cases`), ``"test"``
        (validate on :meth:`test_ids`, with a note that they are then no clean test) or ``"none"``."""

        if validation not in VALIDATION_MODES:
            raise ValueError(f"data.validation must be one of {', '.join(VALIDATION_MODES)}, got {validation!r}")
        available = self.train_ids()
        train = self.select(train_cases, available, "data.train_cases") if train_cases else list(available)
        if validation == "none":
            return Split(train, [])
        if validation == "test":
            test = self.test_ids()
            if not test:
                raise ValueError(
                    f"data.validation=test: {self.describe()} has no labelled test cases; use held_out or none"
                )
            note = "validation on the TEST cases (the authors' practice): their scores are not a clean test"
            return Split(train, test, [note])
        if val_cases:
            val = self.select(val_cases, available, "data.val_cases")
            return Split([c for c in train if c not in val], val)
        return Split(*split_cases(train, val_fraction, seed))


_REGISTRY: dict[str, type[Source]] = {}


def register_source(cls: type[Source]) -> type[Source]:
    """Class decorator: make a :class:`Source` subclass known to :func:`msa2net.data.registry.open_source` under
    ``cls.kind``."""
    if not getattr(cls, "kind", None):
        raise ValueError(f"{cls.__name__} must set the class attribute 'kind'")
    _REGISTRY[cls.kind] = cls
    return cls


def registered_sources() -> dict[str, type[Source]]:
    """The kinds registered so far, by name (:mod:`msa2net.data.registry` registers the built-in ones)."""
    return dict(_REGISTRY)
