"""Size of report.html and the time ``evaluate`` spends writing it, on a Synapse-sized CT phantom test set.

python benchmarks/bench_html_report.py [--slices 100] [--size 512] [--predictions shifted|speckled|model]

Writes the 12 official test cases of the phantom (``--slices`` slices of ``--size`` pixels each), prepares them as
the Synapse data and runs ``evaluate`` with an untrained small model. Predictions: ``shifted`` (default) replaces
the model's output by the ground truth moved 2 px sideways with the pancreas missed on every third slice (errors as
a trained model makes them, without minutes of inference); ``speckled`` adds 2 % of pixels with random classes (label
maps that compress badly: a worst case for the size) and writes the page alone, without ``evaluate`` (whose surface
distances take very long on speckle); ``model`` keeps the untrained model's output. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

import msa2net
from msa2net.data.phantom import make_synapse_phantom
from msa2net.data.preprocessing import Preprocessing
from msa2net.data.synapse import CLASS_NAMES, TEST_CASES
from msa2net.data.synapse_prepare import prepare_synapse
from msa2net.engine import evaluate as evaluate_module
from msa2net.engine.checkpoint import make_checkpoint, save_checkpoint
from msa2net.reporting.html import HtmlReport


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--predictions", choices=["shifted", "speckled", "model"], default="shifted")
    parser.add_argument("--out", help="working folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out or scratch)
        print(json.dumps(run(root, args.slices, args.size, args.predictions), indent=2))


def run(root: Path, slices: int, size: int, predictions: str) -> dict[str, Any]:
    started = time.perf_counter()
    if not (root / "raw").is_dir():  # a folder of an earlier run (--out) is reused: same options, same phantom
        make_synapse_phantom(root / "raw", cases=TEST_CASES, seed=0, slices=(slices, slices), size=size)
    prepare_synapse(root / "raw", root / "Synapse", progress=False)
    prepared_s = time.perf_counter() - started
    torch.manual_seed(0)
    model = msa2net.create_model("msa2net_test", num_classes=len(CLASS_NAMES), img_size=64)
    ckpt = make_checkpoint(model, "msa2net_test", Preprocessing(kind="unit").to_dict(), list(CLASS_NAMES))
    save_checkpoint(ckpt, root / "model.pt")

    pages: list[HtmlReport] = []

    class Timed(HtmlReport):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            pages.append(self)

    evaluate_module.HtmlReport = Timed  # type: ignore[misc]
    rng = np.random.default_rng(0)

    def fake_predict(model: Any, image: np.ndarray, *, desc: str, **kwargs: Any) -> np.ndarray:
        with h5py.File(root / "Synapse" / "test_vol_h5" / f"{desc}.npy.h5", "r") as f:
            label = np.asarray(f["label"]).astype(np.uint8)
        pred = np.roll(label, 2, axis=2)
        pred[::3][pred[::3] == 8] = 0
        if predictions == "speckled":
            speckle = rng.random(pred.shape) < 0.02
            pred[speckle] = rng.integers(0, len(CLASS_NAMES), int(speckle.sum()))
        return pred

    if predictions != "model":
        evaluate_module.predict_volume = fake_predict  # type: ignore[assignment]
    started = time.perf_counter()
    report = root / "eval" / "report.html"
    evaluate_s: float | None = None
    if predictions == "speckled":
        with Timed(report, CLASS_NAMES, title="speckled predictions") as page:
            for path in sorted((root / "Synapse" / "test_vol_h5").glob("*.npy.h5")):
                with h5py.File(path, "r") as f:
                    image, label = np.asarray(f["image"]), np.asarray(f["label"]).astype(np.int64)
                name = path.name[: -len(".npy.h5")]
                page.add_case(name, image, fake_predict(None, image, desc=name), label=label)
            page.finish()
    else:
        evaluate_module.evaluate(root / "model.pt", root / "Synapse", root / "eval", device="cpu", progress=False)
        evaluate_s = round(time.perf_counter() - started, 1)
    (page,) = pages
    shown = sum(len(c["shown"]) for c in page.cases)
    return {
        "cases": len(page.cases),
        "slices": sum(c["depth"] for c in page.cases),
        "slices_shown": shown,
        "size": f"{size}x{size}",
        "predictions": predictions,
        "report_mb": round(report.stat().st_size / 1e6, 2),
        "kb_per_shown_slice": round(report.stat().st_size / 1e3 / shown, 1),
        "report_seconds": round(page.seconds, 2),
        "evaluate_seconds": evaluate_s,
        "phantom_and_prepare_seconds": round(prepared_s, 1),
    }


if __name__ == "__main__":
    main()
