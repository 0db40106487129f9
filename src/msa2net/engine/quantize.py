"""int8 models for OpenVINO: NNCF post-training quantisation calibrated on the model's own training data, kept
only when its labels agree with torch float32 (the gate).

:func:`quantize_int8` tries what to keep in float from the most int8 to the least (:data:`KEEP_FLOAT`: nothing
beyond NNCF's transformer rules, which keep softmax and normalisation float; the segmentation head; the whole
decoder), measures each candidate's agreement with torch float32 on labelled check cases, and returns the first that
passes :data:`GATE`. The agreement figures travel in ``config.json`` (``exports.openvino.int8``) and the card; a
folder whose int8 model has none is refused by ``msa2net export``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.preprocessing import Preprocessing
from ..data.registry import open_source
from ..models import MSA2Net
from .inference import AmpCheck, RuntimeModel, model_input

__all__ = ["GATE", "KEEP_FLOAT", "calibration_slices", "quantize_int8"]

#: What stays float, tried in this order (NNCF ignored scopes by op name pattern).
KEEP_FLOAT: dict[str, list[str]] = {
    "transformer-rules": [],
    "head": [r".*decoder\.stage0\.head.*"],
    "decoder": [r".*decoder\..*"],
}
#: The agreement an int8 model needs with torch float32 on the check cases.
GATE: dict[str, float] = {"min_identical_fraction": 0.995, "max_dice_drop": 0.005}


class QuantizationError(RuntimeError):
    """No int8 candidate passed the agreement gate, or the calibration data do not fit the model."""


def calibration_slices(
    data: str | Path, model: MSA2Net, prep: Preprocessing, count: int = 300, kind: str | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Up to ``count`` model-ready slices ``(1, C, h, w)`` spread evenly over the training cases of ``data`` (a
    dataset folder :func:`~msa2net.data.registry.open_source` recognises), and the ids of its labelled check cases
    (the test cases, else the training cases)."""
    source = open_source(data, kind)
    if source.in_channels != model.config.in_channels:
        raise QuantizationError(f"{source.describe()}, but the model takes {model.config.in_channels} channel(s)")
    train = list(source.train_ids())
    per_case = max(1, -(-count // max(1, len(train))))
    slices: list[np.ndarray] = []
    for case in source.cases(train, prep):
        picks = np.unique(np.linspace(0, len(case.image) - 1, min(per_case, len(case.image))).round().astype(int))
        slices += [model_input(case.image[z], prep, model.img_size)[None] for z in picks]
    step = max(1, len(slices) // count)
    return slices[::step][:count], list(source.evaluation_ids() or train)


def quantize_int8(
    model: MSA2Net,
    graph: Any,
    ckpt: Mapping[str, Any],
    data: str | Path,
    *,
    count: int = 300,
    kind: str | None = None,
    keep_float: Sequence[str] = tuple(KEEP_FLOAT),
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """``(int8 OpenVINO graph, its record)``: ``graph`` (the model's float OpenVINO graph) quantised with the first
    candidate of ``keep_float`` that passes :data:`GATE`.

    The record holds the calibration (data, slices), what stayed float, the gate, and per candidate tried the
    agreement with torch float32 on the check cases (share of identical voxels, Dice change per class).

    Raises:
        QuantizationError: no candidate passes (the message gives every candidate's figures).
    """
    import nncf
    import openvino as ov

    full = Preprocessing.from_dict(ckpt["preprocessing"])
    prep = full.unit_input()
    slices, check_ids = calibration_slices(data, model, full, count, kind)
    source = open_source(data, kind)
    cases = list(source.cases(check_ids, full))
    tried: dict[str, Any] = {}
    for name in keep_float:
        scope = nncf.IgnoredScope(patterns=KEEP_FLOAT[name], validate=False) if KEEP_FLOAT[name] else None
        with contextlib.redirect_stdout(sys.stderr):  # NNCF draws its progress bars on stdout, which carries results
            candidate = nncf.quantize(
                graph,
                nncf.Dataset(slices),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(slices),
                ignored_scope=scope,
            )
        compiled = ov.Core().compile_model(candidate, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        runtime = RuntimeModel(lambda x, c=compiled: c(x)[0], model, "openvino-int8")
        check = AmpCheck(ckpt["class_names"], None, reference=model, name=f"openvino-int8 ({name})")
        with torch.inference_mode():
            for case in cases:
                check.predict(runtime, case.name, case.image, case.label, preprocessing=prep, progress=progress)
        figures = {k: check.record[k] for k in ("n_cases", "identical_fraction", "per_class_dice_change")}
        worst = min(figures["per_class_dice_change"].values(), default=0.0)
        passed = figures["identical_fraction"] >= GATE["min_identical_fraction"] and -worst <= GATE["max_dice_drop"]
        tried[name] = {**figures, "passed": passed}
        if passed:
            return candidate, {
                "file": "openvino/model-int8.xml",
                "calibration": {"data": str(data), "slices": len(slices), "cases": len(source.train_ids())},
                "check_cases": check_ids,
                "kept_float": name,
                "gate": dict(GATE),
                "agreement": figures,
                "tried": tried,
            }
    raise QuantizationError(
        "no int8 model agrees with torch float32 well enough (gate: "
        f"{GATE['min_identical_fraction']:.1%} identical voxels, Dice drop <= {GATE['max_dice_drop']}): "
        + "; ".join(
            f"{name}: {t['identical_fraction']:.4%} identical, Dice change "
            + ", ".join(f"{c} {v:+.4f}" for c, v in t["per_class_dice_change"].items())
            for name, t in tried.items()
        )
        + ". Use OpenVINO fp32 or bf16 (--precision), which need no calibration"
    )
