"""Checkpoint selection: validation Dice scores a class only where the ground truth or the prediction holds it."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from msa2net.data.preprocessing import Preprocessing
from msa2net.data.source import Case, Source, Split
from msa2net.engine import train as train_module
from msa2net.engine.distributed import DistInfo
from msa2net.engine.train import TrainingData, validate


class _Cases(Source):
    """Two 1-slice validation cases; class 2 is absent from case ``b``'s ground truth."""

    kind = "validation-dice-test"

    def __init__(self, labels: dict[str, np.ndarray]) -> None:
        self.labels = labels
        self.class_names = ["background", "one", "two"]
        self.in_channels = 1
        self.preprocessing = Preprocessing(kind="unit", in_channels=1)

    @classmethod
    def detect(cls, root) -> bool:
        return False

    def train_ids(self) -> list[str]:
        return []

    def training_dataset(self, ids, transform, seed):
        raise NotImplementedError

    def cases(self, ids: Sequence[str], preprocessing: Preprocessing | None = None) -> Iterator[Case]:
        for name in ids:
            yield Case(name, np.zeros(self.labels[name].shape, np.float32), self.labels[name])


def _validate(monkeypatch, truth: dict[str, np.ndarray], predicted: dict[str, np.ndarray]):
    source = _Cases(truth)
    data = TrainingData(source, Split([], sorted(truth)), None)  # type: ignore[arg-type]
    order = iter(sorted(truth))
    monkeypatch.setattr(train_module, "predict_volume", lambda *a, **k: predicted[next(order)])
    return validate(None, data, DistInfo(), batch_size=1, amp=None)  # type: ignore[arg-type]


def test_absent_class_is_not_scored_and_hallucination_scores_zero(monkeypatch):
    a = np.array([[[1, 1, 2, 2]]])
    b = np.array([[[1, 1, 0, 0]]])  # class 2 absent
    per_class, mean = _validate(monkeypatch, {"a": a, "b": b}, {"a": a, "b": b})
    assert per_class == {"one": 1.0, "two": 1.0} and mean == 1.0  # the legacy rule would give "two" (1 + 0) / 2
    per_class, mean = _validate(monkeypatch, {"a": a, "b": b}, {"a": a, "b": np.array([[[1, 1, 2, 0]]])})
    assert per_class["two"] == pytest.approx(0.5) and mean == pytest.approx(0.75)  # (1 + 0) / 2: hallucination is 0


def test_class_absent_everywhere_is_nan_and_left_out_of_the_mean(monkeypatch):
    b = np.array([[[1, 1, 0, 0]]])
    per_class, mean = _validate(monkeypatch, {"b": b}, {"b": np.array([[[1, 0, 0, 0]]])})
    assert math.isnan(per_class["two"]) and per_class["one"] == pytest.approx(2 / 3) and mean == pytest.approx(2 / 3)
    per_class, mean = _validate(monkeypatch, {"e": np.zeros((1, 1, 4), np.int64)}, {"e": np.zeros((1, 1, 4))})
    assert all(math.isnan(v) for v in per_class.values()) and mean == 1.0  # nothing to find, nothing found
