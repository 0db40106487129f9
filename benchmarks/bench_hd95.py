"""Time msa2net.metrics.hd95 against MedPy's hd95 on a CT-sized volume with organ-sized masks.

Builds a deterministic pair of slightly offset ellipsoids (about 60 x 40 x 30 voxels) in a
(100, 512, 512) volume (the (D, H, W) layout of a Synapse test case), times both implementations
(best of 3, ``time.perf_counter``), checks that they agree, and prints one JSON object.

MedPy (GPL) is a development dependency used here only as the reference; run with::

    python benchmarks/bench_hd95.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
from medpy.metric.binary import hd95 as medpy_hd95

from msa2net.metrics import hd95

SHAPE = (100, 512, 512)  # (D, H, W)
REPEATS = 3


def ellipsoid(shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    """Boolean ellipsoid ``sum(((x - centre) / radii) ** 2) <= 1`` on the voxel grid of ``shape``."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    return inside <= 1.0


def organ_pair() -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: diameters 30 (D) x 40 (H) x 60 (W) voxels; prediction shifted and a bit smaller."""
    gt = ellipsoid(SHAPE, (50.0, 260.0, 300.0), (15.0, 20.0, 30.0))
    pred = ellipsoid(SHAPE, (52.0, 263.0, 296.0), (14.0, 21.0, 28.5))
    return pred, gt


def best_time(fn: Callable[[], float]) -> tuple[float, float]:
    """Return (best wall time in seconds over REPEATS calls, value of the last call)."""
    best, value = float("inf"), float("nan")
    for _ in range(REPEATS):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> dict[str, object]:
    pred, gt = organ_pair()
    ours_s, ours = best_time(lambda: hd95(pred, gt))
    medpy_s, reference = best_time(lambda: float(medpy_hd95(pred, gt)))
    abs_diff = abs(ours - reference)
    if abs_diff > 1e-6:
        raise RuntimeError(f"hd95 disagrees with MedPy: ours {ours}, MedPy {reference}")
    result = {
        "shape": list(SHAPE),
        "ours_s": round(ours_s, 5),
        "medpy_s": round(medpy_s, 5),
        "speedup": round(medpy_s / ours_s, 1),
        "abs_diff": abs_diff,
        "hd95": ours,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
