"""Real data end to end: AAL lobes on the Colin27 T1 MRI (Debian's mricron-data), trained on CPU; JSON on stdout.

python benchmarks/bench_aal.py [--out aal_out] [--device cpu] [--set train.epochs=...]

Steps: ``prepare aal`` (left hemisphere trains, right hemisphere tests, sagittal slices) -> ``train`` with the
``aal`` preset -> ``evaluate`` on the right hemisphere (legacy Dice and HD95 in mm per lobe) -> the same under
bf16 autocast, compared with float32 (``evaluate --amp bf16 --amp-check``: share of identical labels, Dice change
per lobe) -> predict the test hemisphere and paste the mask back onto ``aal.nii.gz``'s full grid by geometry alone
(label 0 outside the test hemisphere), and predict the whole head ``ch2.nii.gz`` as stored (axial-first;
prediction re-indexes it to the sagittal plane the model learnt). Needs ``apt-get install mricron-data``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from msa2net.config import load_config
from msa2net.data.aal import CLASS_NAMES, LABEL_FILE, TEST_CASE, find_raw_dir, lobe_lookup, prepare_aal, read_regions
from msa2net.engine.evaluate import evaluate
from msa2net.engine.predict import predict_files
from msa2net.engine.train import train


def _paste_onto(mask: Path, reference: Path, out: Path) -> sitk.Image:
    """Resample ``mask`` onto ``reference``'s grid by geometry alone (identity transform, nearest neighbour; 0
    outside the mask's extent) and write it to ``out``."""
    pasted = sitk.Resample(
        sitk.ReadImage(str(mask)), sitk.ReadImage(str(reference)), sitk.Transform(), sitk.sitkNearestNeighbor, 0
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(pasted, str(out), True)
    return pasted


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    )


def _lobe_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    out = {}
    for c, name in enumerate(CLASS_NAMES[1:], start=1):
        p, t = pred == c, truth == c
        out[name] = float(2 * np.count_nonzero(p & t) / max(1, np.count_nonzero(p) + np.count_nonzero(t)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="aal_out", help="output folder (default aal_out)")
    parser.add_argument("--raw", default=None, help="folder of ch2.nii.gz, aal.nii.gz, aal.nii.txt (default: package)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the aal preset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args()
    started = time.perf_counter()
    out = Path(args.out)
    raw = find_raw_dir(args.raw)  # fails at once, with the install hint, without the package
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}  # process CPU time: what the work costs whatever else shares the cores
    cpu_mark = [time.process_time()]

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 1)
        cpu_seconds[name] = round(time.process_time() - cpu_mark[0], 1)
        cpu_mark[0] = time.process_time()
        return now

    t = time.perf_counter()
    prepared = prepare_aal(out / "data", raw, overwrite=True)
    t = lap("prepare", t)
    cfg = load_config(
        "aal", [f"data.root={out / 'data'}", f"out_dir={out / 'run'}", f"train.device={args.device}", *args.set]
    )
    cfg.train.progress = not args.no_progress
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        result = train(cfg, overwrite=True)  # the benchmark owns its --out folder: a rerun replaces it
    t = lap("train", t)
    checkpoint = Path(result["best"])
    summary = evaluate(
        checkpoint, out / "data", out / "eval", device=args.device, progress=False, title="MSA2Net (AAL)"
    )
    t = lap("evaluate", t)
    # bf16 inference against float32 on the same test hemisphere: share of identical labels, Dice change per lobe
    bf16 = evaluate(
        checkpoint,
        out / "data",
        out / "eval_bf16",
        device=args.device,
        amp="bf16",
        compare_fp32=True,
        overlays_per_case=0,
        html=False,
        progress=False,
    )
    t = lap("evaluate_bf16_check", t)

    # the test hemisphere predicted as a user would (its file), then pasted back onto the atlas grid
    test_image = out / "data" / "imagesTs" / f"{TEST_CASE}_0000.nii.gz"
    report = predict_files(checkpoint, test_image, out / "predict_test", device=args.device, progress=False)
    atlas_path = raw / LABEL_FILE
    pasted = _paste_onto(out / "predict_test" / f"{TEST_CASE}_0000.nii.gz", atlas_path, out / "aal_right_pred.nii.gz")
    t = lap("predict_test_and_paste", t)
    # the whole head as stored (axial-first): re-indexed to the trained plane by predict
    head = predict_files(checkpoint, raw / "ch2.nii.gz", out / "predict_head", device=args.device, progress=False)
    t = lap("predict_whole_head", t)
    if not (report.ok and head.ok):
        raise RuntimeError("prediction failed: " + "; ".join(report.failure_lines() + head.failure_lines()))

    atlas = sitk.ReadImage(str(atlas_path))
    truth = lobe_lookup(read_regions(raw / "aal.nii.txt"))[sitk.GetArrayFromImage(atlas)]
    right = np.array([atlas.TransformIndexToPhysicalPoint((i, 0, 0))[0] < 0 for i in range(atlas.GetSize()[0])])
    pasted_array = sitk.GetArrayFromImage(pasted)
    head_mask = sitk.ReadImage(str(out / "predict_head" / "ch2.nii.gz"))
    head_array = sitk.GetArrayFromImage(head_mask)
    fg = CLASS_NAMES[1:]
    per_lobe = {
        name: {
            "dice": summary["legacy"]["per_class_dice"][name],
            "hd95_mm": summary["mm"]["per_class_hd95_mm"][name],
            "hd95_voxels_legacy": summary["legacy"]["per_class_hd95_voxels"][name],
            "test_voxels": prepared["voxels"]["test"][name],
        }
        for name in fg
    }
    pasted_dice = _lobe_dice(pasted_array[..., right], truth[..., right])
    head_dice = _lobe_dice(head_array[..., right], truth[..., right])
    outcome: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "model": cfg.model.name,
        "img_size": cfg.model.img_size,
        "settings": {k: getattr(cfg.train, k) for k in ("epochs", "batch_size", "loss", "optimizer", "lr", "amp")},
        "augment": cfg.data.augment,
        "iterations": result["iterations"],
        "train_cases": prepared["train_cases"],
        "test_cases": prepared["test_cases"],
        "per_lobe": per_lobe,
        "mean_dice": summary["legacy"]["mean_dice"],
        "mean_hd95_mm": summary["mm"]["mean_hd95_mm"],
        "bf16_agreement": {k: v for k, v in bf16["settings"]["amp_check"].items() if k not in ("per_case", "reference")}
        | {"mean_dice_bf16": bf16["legacy"]["mean_dice"]},
        "pasted_prediction": {
            "path": str(out / "aal_right_pred.nii.gz"),
            "same_grid_as_aal": _same_grid(pasted, atlas),
            "zero_outside_test_hemisphere": bool(not pasted_array[..., ~right].any()),
            "mean_dice_right_hemisphere": float(np.mean(list(pasted_dice.values()))),
        },
        "whole_head_prediction": {
            "path": str(out / "predict_head" / "ch2.nii.gz"),
            "segmented_as": head.cases[0]["segmented_as"],
            "input_axis_code": head.cases[0]["axis_code"],
            "same_grid_as_input": _same_grid(head_mask, sitk.ReadImage(str(raw / "ch2.nii.gz"))),
            "mean_dice_right_hemisphere": float(np.mean(list(head_dice.values()))),
            "per_lobe_dice_right_hemisphere": head_dice,
        },
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_end": list(os.getloadavg()),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    (out / "bench_aal.json").write_text(json.dumps(outcome, indent=2) + "\n")
    print(json.dumps(outcome, indent=2))


if __name__ == "__main__":
    main()
