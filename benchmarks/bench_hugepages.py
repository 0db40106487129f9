"""Preparation and evaluation of large volumes with NumPy's huge-page advice on (its default) and off.

NumPy asks the kernel for transparent huge pages (``madvise``) on every array of 4 MB or more; the environment
variable ``NUMPY_MADVISE_HUGEPAGE=0``, read when NumPy is imported, turns that off. Where a huge-page fault is slow
(virtual machines whose free memory goes back to the host, for one) a volume-sized array costs more kernel time
than its arithmetic. This runs ``bench_html_report.py`` (a Synapse-sized phantom test set: ``prepare_synapse``, then
``evaluate --predictions`` on shifted masks) in fresh child processes, with and without the variable, in
interleaved rounds that alternate which goes first, on one phantom written once (so ``phantom_and_prepare_seconds``
of the runs is the preparation alone). Prints JSON: the seconds of each run and the ratio default / off per round.

    python benchmarks/bench_hugepages.py                          # 12 cases of 100x512x512, 2 rounds, ~10 min
    python benchmarks/bench_hugepages.py --slices 4 --size 64 --rounds 1   # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPORT = Path(__file__).resolve().parent / "bench_html_report.py"
FIGURES = ("phantom_and_prepare_seconds", "evaluate_seconds")


def _run(work: Path, slices: int, size: int, advice_off: bool) -> dict[str, float]:
    for name in ("Synapse", "masks", "eval"):  # prepared anew each run; only the raw phantom is kept
        shutil.rmtree(work / name, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if advice_off:
        env["NUMPY_MADVISE_HUGEPAGE"] = "0"
    args = [sys.executable, str(REPORT), "--slices", str(slices), "--size", str(size), "--out", str(work)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_html_report.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    return {"cases": result["cases"], **{name: float(result[name]) for name in FIGURES}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        cases = _run(work, args.slices, args.size, advice_off=False)["cases"]  # writes the phantom the runs reuse
        runs: dict[str, list[dict[str, float]]] = {"default": [], "off": []}
        for round_index in range(args.rounds):
            order = ("default", "off") if round_index % 2 == 0 else ("off", "default")
            for setting in order:
                figures = _run(work, args.slices, args.size, advice_off=setting == "off")
                runs[setting].append({name: figures[name] for name in FIGURES})
    ratios = {
        name: [round(d[name] / o[name], 2) for d, o in zip(runs["default"], runs["off"])]
        for name in FIGURES
        if all(o[name] > 0 for o in runs["off"])
    }
    result = {
        "case": {"cases": cases, "slices": args.slices, "size": args.size},
        "runs": runs,
        "default_over_off": {
            name: {"median": round(statistics.median(r), 3), "min": min(r), "max": max(r), "per_round": r}
            for name, r in ratios.items()
        },
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
