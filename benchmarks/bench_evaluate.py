"""Evaluation speed against the authors' procedure, in one run: ratios, their spread and identical-figures checks.

Compares msa2net with an independent slice-by-slice reimplementation of the authors' ``test_single_volume`` scored
with MedPy (:mod:`legacy_reference`), on one phantom CT case (``make_synapse_phantom`` + ``prepare_synapse``, the
layout ``evaluate`` reads), in interleaved rounds (A, B, A, B, ...) so that a busy machine slows both alike:

* ``predict``: ``predict_volume`` at the ``evaluate`` default of 16 slices per step, one slice per step, and the
  authors' loop; labels must be identical to the authors'.
* ``metrics``: the full metric set of ``evaluate`` (``legacy_case_scores``: legacy Dice/HD95, HD95 in mm, NSD at
  2 mm; default threads and one thread) against MedPy's ``dc``/``hd95`` per class (the authors' set), on realistic
  masks (the label map perturbed: organs grown or shrunk, shifted, a few false-positive blobs) and noisy ones (an
  untrained model's output: every class everywhere, classes drawn independently on the model's grid and resized
  back with nearest neighbour). Legacy Dice and HD95 must be identical to MedPy's.
* ``evaluate``: one whole case end to end. Noisy: the ``evaluate`` engine (model, metrics, report files) on the
  case with an untrained model, against the authors' loop + MedPy. Realistic: an untrained model cannot predict
  organs, so per round the model time of ``predict`` plus the metrics time of ``metrics`` on realistic masks, for
  each side (the two phases are sequential in both procedures).

Ratios are ``reference time / our time`` (above 1: ours faster); each is the median over rounds of the per-round
ratio, with the min and max over rounds as the spread; ``*_cpu_time`` ratios use the CPU seconds of this process
(all threads) instead of wall time: on a machine shared with other work they measure the work done. Prints one JSON
object (and writes it with ``--out``)::

    python benchmarks/bench_evaluate.py                       # 100 x 512 x 512, msa2net_paper, 3 rounds
    python benchmarks/bench_evaluate.py --slices 6 --size 96 --model msa2net_test --img-size 64 --rounds 2
"""

from __future__ import annotations

import argparse
import atexit
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

import legacy_reference  # noqa: E402

import msa2net  # noqa: E402
from msa2net.data.phantom import make_synapse_phantom  # noqa: E402
from msa2net.data.preprocessing import Preprocessing  # noqa: E402
from msa2net.data.registry import open_source  # noqa: E402
from msa2net.data.source import Case  # noqa: E402
from msa2net.data.synapse_prepare import prepare_synapse  # noqa: E402
from msa2net.engine import inference  # noqa: E402
from msa2net.metrics import legacy_case_scores, overlap  # noqa: E402

PARTS = ("predict", "metrics", "evaluate")
NUM_CLASSES = 9
NSD_TOLERANCE_MM = 2.0


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def phantom_case(root: Path, slices: int, size: int, seed: int) -> tuple[Path, Case]:
    """Prepared Synapse folder holding the phantom test case 0001, and that case as ``evaluate`` loads it."""
    make_synapse_phantom(root / "raw", cases=["0001"], seed=seed, slices=(slices, slices), size=size)
    prepared = root / "prepared"
    prepare_synapse(root / "raw", prepared, progress=False)
    source = open_source(prepared)
    return prepared, next(iter(source.cases(source.evaluation_ids())))


def realistic_prediction(label: np.ndarray, seed: int) -> np.ndarray:
    """A trained model's kind of error: each organ grown or shrunk by a voxel or two in-plane, the map shifted by
    a few voxels, and four small false-positive blobs of random classes far from their organs."""
    rng = np.random.default_rng(seed)
    pred = np.zeros_like(label)
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)
    for c in range(1, NUM_CLASSES):
        mask = label == c
        if not mask.any():
            continue
        steps = int(rng.integers(1, 3))
        if rng.random() < 0.5:
            mask = ndimage.binary_dilation(mask, plane, iterations=steps)
        else:
            mask = ndimage.binary_erosion(mask, plane, iterations=steps)
        pred[mask & (pred == 0)] = c
    shift = (0, int(rng.integers(-3, 4)), int(rng.integers(-3, 4)))
    pred = ndimage.shift(pred, shift, order=0, mode="constant", cval=0)
    depth, height, width = label.shape
    for _ in range(4):
        z, y, x = (int(rng.integers(0, n)) for n in (depth, height, width))
        pred[z : z + 2, y : y + max(height // 64, 2), x : x + max(width // 64, 2)] = int(rng.integers(1, NUM_CLASSES))
    return pred


def noisy_prediction(shape: tuple[int, ...], img_size: int, seed: int) -> np.ndarray:
    """An untrained model's output: classes drawn independently on the model's grid, resized back (order 0)."""
    depth, height, width = shape
    grid = np.random.default_rng(seed).integers(0, NUM_CLASSES, size=(depth, img_size, img_size))
    return ndimage.zoom(grid, (1, height / img_size, width / img_size), order=0)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


#: CPU seconds of this process (all its threads) per variant and round, next to the wall times: on a machine
#: shared with other work, CPU time measures the work done, wall time the latency a user sees.
CPU_TIMES: dict[str, list[float]] = {}


def interleaved(
    variants: dict[str, Callable[[], Any]], rounds: int, log: Callable[[str], None], tag: str = ""
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run every variant once per round, in order, ``rounds`` times: wall times and the last result of each.

    CPU times go to :data:`CPU_TIMES` under ``tag + name``.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, Any] = {}
    for r in range(rounds):
        for name, fn in variants.items():
            start, cpu = time.perf_counter(), time.process_time()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
            CPU_TIMES.setdefault(tag + name, []).append(time.process_time() - cpu)
            log(f"round {r + 1}/{rounds} {name}: {times[name][-1]:.2f} s wall, {CPU_TIMES[tag + name][-1]:.2f} s CPU")
    return times, results


def ratio(reference: list[float], ours: list[float]) -> dict[str, Any]:
    """``reference / ours`` per round: median, min, max, and the per-round values."""
    values = [a / b for a, b in zip(reference, ours)]
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "per_round": [round(v, 3) for v in values],
    }


def summary(times: list[float], cpu: list[float] | None = None) -> dict[str, Any]:
    out = {"median_s": round(statistics.median(times), 3), "per_round_s": [round(t, 3) for t in times]}
    if cpu:
        out["median_cpu_s"] = round(statistics.median(cpu), 3)
    return out


def legacy_check(ours: dict[str, dict[str, float]], theirs: list[tuple[float, float]]) -> dict[str, Any]:
    """Whether our legacy Dice/HD95 per class equal the reference's: exact matches and the largest difference."""
    pairs = [((row["dice"], row["hd95"]), ref) for row, ref in zip(ours.values(), theirs)]
    worst = max(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a, b in pairs)
    return {
        "classes": len(pairs),
        "bit_identical": sum(a == (float(b[0]), float(b[1])) for a, b in pairs),
        "max_abs_diff": worst,
        "identical": worst <= 1e-9,
    }


# ----------------------------------------------------------------------------------------------
# Parts
# ----------------------------------------------------------------------------------------------


def bench_predict(
    model: msa2net.MSA2Net, case: Case, prep: Preprocessing, args: argparse.Namespace, log: Callable[[str], None]
) -> dict:

    def ours(batch: int) -> Callable[[], np.ndarray]:
        return lambda: inference.predict_volume(model, case.image, preprocessing=prep, batch_size=batch)

    variants = {
        "authors_one_slice": lambda: legacy_reference.legacy_single_volume_labels(model, case.image, model.img_size),
        "ours_batched": ours(args.batch),
        "ours_one_slice": ours(1),
    }
    times, labels = interleaved(variants, args.rounds, log, "predict/")
    cpu = {name: CPU_TIMES["predict/" + name] for name in times}
    reference = labels["authors_one_slice"]
    out = {
        "batch_size": args.batch,
        "times": {name: summary(t, cpu[name]) for name, t in times.items()},
        "speedup_vs_authors": ratio(times["authors_one_slice"], times["ours_batched"]),
        "speedup_vs_authors_cpu_time": ratio(cpu["authors_one_slice"], cpu["ours_batched"]),
        "batched_vs_one_slice": ratio(times["ours_one_slice"], times["ours_batched"]),
        "batched_vs_one_slice_cpu_time": ratio(cpu["ours_one_slice"], cpu["ours_batched"]),
        "identical_labels": {name: bool(np.array_equal(value, reference)) for name, value in labels.items()},
        "_model_times": {"authors": times["authors_one_slice"], "ours": times["ours_batched"]},
    }
    return out


def bench_metrics(
    case: Case, predictions: dict[str, np.ndarray], args: argparse.Namespace, log: Callable[[str], None]
) -> dict:
    out: dict[str, Any] = {}
    default_threads = overlap.MAX_THREADS
    for kind, pred in predictions.items():

        def ours(threads: int, pred: np.ndarray = pred) -> Callable[[], Any]:
            def run() -> Any:
                overlap.MAX_THREADS = threads  # the product picks usable cores, at most 4; the benchmark varies it
                try:
                    return legacy_case_scores(
                        pred,
                        case.label,
                        NUM_CLASSES,
                        spacing=case.spacing,
                        empty="nan",
                        nsd_tolerance_mm=NSD_TOLERANCE_MM,
                    )
                finally:
                    overlap.MAX_THREADS = default_threads

            return run

        variants = {
            "authors_medpy": lambda pred=pred: legacy_reference.legacy_case_metrics_medpy(
                pred, case.label, NUM_CLASSES
            ),
            "ours_full_set": ours(args.workers or default_threads),
            "ours_full_set_one_thread": ours(1),
        }
        log(f"metrics on {kind} masks")
        times, results = interleaved(variants, args.rounds, log, f"metrics/{kind}/")
        cpu = {name: CPU_TIMES[f"metrics/{kind}/" + name] for name in times}
        out[kind] = {
            "times": {name: summary(t, cpu[name]) for name, t in times.items()},
            "speedup_vs_medpy": ratio(times["authors_medpy"], times["ours_full_set"]),
            "one_thread_speedup_vs_medpy": ratio(times["authors_medpy"], times["ours_full_set_one_thread"]),
            "speedup_vs_medpy_cpu_time": ratio(cpu["authors_medpy"], cpu["ours_full_set"]),
            "legacy_vs_medpy": legacy_check(results["ours_full_set"], results["authors_medpy"]),
            "threads_identical": json.dumps(results["ours_full_set"])
            == json.dumps(results["ours_full_set_one_thread"]),
            "foreground_share": round(float(np.mean(pred > 0)), 4),
            "_times": times,
        }
    return out


def bench_evaluate(
    model: msa2net.MSA2Net, prepared: Path, case: Case, args: argparse.Namespace, log: Callable[[str], None]
) -> dict:
    from msa2net.data.synapse import CLASS_NAMES
    from msa2net.engine.checkpoint import make_checkpoint, save_checkpoint
    from msa2net.engine.evaluate import evaluate

    folder = Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # scratch: gone when the script ends
    checkpoint = folder / "untrained.pt"
    prep = open_source(prepared).preprocessing
    save_checkpoint(make_checkpoint(model, args.model_name, prep.to_dict(), list(CLASS_NAMES)), checkpoint)

    def ours() -> dict[str, dict[str, float]]:
        evaluate(checkpoint, prepared, folder / "eval", device="cpu", progress=False, batch_size=args.batch)
        rows = json.loads((folder / "eval" / "summary.json").read_text())["cases"]
        return {r["class_name"]: {"dice": r["dice"], "hd95": r["hd95"]} for r in rows}

    def authors() -> list[tuple[float, float]]:
        labels = legacy_reference.legacy_single_volume_labels(model, case.image, model.img_size)
        return legacy_reference.legacy_case_metrics_medpy(labels, case.label, NUM_CLASSES)

    times, results = interleaved({"authors": authors, "ours_evaluate": ours}, args.rounds, log, "evaluate/")
    cpu = {name: CPU_TIMES["evaluate/" + name] for name in times}
    return {
        "times": {name: summary(t, cpu[name]) for name, t in times.items()},
        "speedup_vs_authors": ratio(times["authors"], times["ours_evaluate"]),
        "speedup_vs_authors_cpu_time": ratio(cpu["authors"], cpu["ours_evaluate"]),
        "legacy_vs_authors": legacy_check(results["ours_evaluate"], results["authors"]),
    }


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=100, help="slices of the phantom case (default 100)")
    parser.add_argument("--size", type=int, default=512, help="in-plane size of the case (default 512)")
    parser.add_argument("--model", dest="model_name", default="msa2net_paper", help="registered model name")
    parser.add_argument("--img-size", type=int, default=224, help="model input size (default 224)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--batch", type=int, default=16, help="slices per step of ours (evaluate's default, 16)")
    parser.add_argument("--workers", type=int, default=None, help="most metric threads (default: usable cores, max 4)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads for both sides (default: torch's own)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {PARTS}")

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[bench_evaluate] {message}", file=sys.stderr, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench_evaluate_data_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # scratch: gone when the script ends
    prepared, case = phantom_case(root, args.slices, args.size, args.seed)
    torch.manual_seed(args.seed)
    model = msa2net.create_model(args.model_name, num_classes=NUM_CLASSES, in_channels=1, img_size=args.img_size)
    model.eval()
    inference.predict_volume(model, case.image[:1], batch_size=1)  # warm-up
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "case": {"shape": list(case.image.shape), "spacing_mm": list(case.spacing or ()), "classes": NUM_CLASSES},
        "model": args.model_name,
        "img_size": args.img_size,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "msa2net": msa2net.__version__},
        "ratios": "reference time / our time per round: median, min, max (above 1: ours faster)",
    }
    predict = None
    if "predict" in parts:
        log("predict_volume")
        predict = bench_predict(model, case, open_source(prepared).preprocessing.unit_input(), args, log)
        result["predict"] = {k: v for k, v in predict.items() if not k.startswith("_")}
    metrics = None
    if "metrics" in parts:
        masks = {
            "realistic": realistic_prediction(case.label, args.seed),
            "noisy": noisy_prediction(case.label.shape, args.img_size, args.seed),
        }
        metrics = bench_metrics(case, masks, args, log)
        result["metrics"] = {kind: {k: v for k, v in m.items() if not k.startswith("_")} for kind, m in metrics.items()}
    if "evaluate" in parts:
        log("evaluate, noisy (untrained model)")
        end_to_end: dict[str, Any] = {"noisy_untrained_model": bench_evaluate(model, prepared, case, args, log)}
        if predict is not None and metrics is not None:
            model_times = predict["_model_times"]
            metric_times = metrics["realistic"]["_times"]
            authors = [a + b for a, b in zip(model_times["authors"], metric_times["authors_medpy"])]
            ours = [a + b for a, b in zip(model_times["ours"], metric_times["ours_full_set"])]
            pairs = (("predict/authors_one_slice", "metrics/realistic/authors_medpy"),)
            pairs += (("predict/ours_batched", "metrics/realistic/ours_full_set"),)
            authors_cpu, ours_cpu = ([a + b for a, b in zip(CPU_TIMES[x], CPU_TIMES[y])] for x, y in pairs)
            end_to_end["realistic_model_plus_metrics"] = {
                "times": {"authors": summary(authors, authors_cpu), "ours": summary(ours, ours_cpu)},
                "speedup_vs_authors": ratio(authors, ours),
                "speedup_vs_authors_cpu_time": ratio(authors_cpu, ours_cpu),
            }
        result["evaluate"] = end_to_end
    result["total_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
