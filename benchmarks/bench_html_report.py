"""Size of report.html and the time ``evaluate`` spends writing it, on a Synapse-sized CT phantom test set.

python benchmarks/bench_html_report.py [--slices 100] [--size 512] [--predictions shifted|speckled|model]

Writes the 12 official test cases of the phantom (``--slices`` slices of ``--size`` pixels each), prepares them as
the Synapse data and scores predictions of them. Predictions: ``shifted`` (default) is the ground truth moved 2 px
sideways with the pancreas missed on every third slice (errors as a trained model makes them, without minutes of
inference), written as mask files and scored by ``evaluate --predictions``; ``speckled`` adds 2 % of pixels with
random classes (label maps that compress badly: a worst case for the size) and writes the page alone, without
``evaluate`` (whose surface distances take very long on speckle); ``model`` runs ``evaluate`` with an untrained
small model. Prints JSON.
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
from msa2net.data.io import write_image
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
    open_report = evaluate_module.open_report

    def recorded(*a: Any, **k: Any) -> HtmlReport | None:  # the page evaluate writes, for its timer and cases
        page = open_report(*a, **k)
        pages.append(page)
        return page

    evaluate_module.open_report = recorded  # type: ignore[assignment]
    rng = np.random.default_rng(0)

    def fake_prediction(label: np.ndarray) -> np.ndarray:
        pred = np.roll(label.astype(np.uint8), 2, axis=2)
        pred[::3][pred[::3] == 8] = 0
        if predictions == "speckled":
            speckle = rng.random(pred.shape) < 0.02
            pred[speckle] = rng.integers(0, len(CLASS_NAMES), int(speckle.sum()))
        return pred

    test_files = sorted((root / "Synapse" / "test_vol_h5").glob("*.npy.h5"))
    report = root / "eval" / "report.html"
    evaluate_s: float | None = None
    if predictions == "speckled":
        started = time.perf_counter()
        with HtmlReport(report, CLASS_NAMES, title="speckled predictions") as page:
            for path in test_files:
                with h5py.File(path, "r") as f:
                    image, label = np.asarray(f["image"]), np.asarray(f["label"]).astype(np.int64)
                page.add_case(path.name[: -len(".npy.h5")], image, fake_prediction(label), label=label)
            page.finish()
        pages.append(page)
    elif predictions == "shifted":  # masks scored as any tool's, without inference
        for path in test_files:
            with h5py.File(path, "r") as f:
                write_image(fake_prediction(np.asarray(f["label"])), None, root / "masks" / f"{path.name[:-7]}.nii.gz")
        started = time.perf_counter()
        evaluate_module.evaluate_predictions(root / "masks", root / "eval", data=root / "Synapse", progress=False)
        evaluate_s = round(time.perf_counter() - started, 1)
    else:
        started = time.perf_counter()
        evaluate_module.evaluate(root / "model.pt", root / "Synapse", root / "eval", device="cpu", progress=False)
        evaluate_s = round(time.perf_counter() - started, 1)
    if len(pages) != 1 or pages[0] is None:
        raise SystemExit(f"expected evaluate to write one report.html through open_report, got {pages}")
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
