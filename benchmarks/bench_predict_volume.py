"""Slices per second of ``predict_volume``: batched versus one slice at a time (same labels required).

python benchmarks/bench_predict_volume.py [--model msa2net_paper] [--slices 8] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import msa2net


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="msa2net_paper")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--amp", choices=["bf16"], default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = msa2net.create_model(args.model, num_classes=9, in_channels=1).eval()
    volume = np.random.default_rng(0).random((args.slices, 512, 512), dtype=np.float32)
    msa2net.predict_volume(model, volume[:1], batch_size=1, amp=args.amp)  # warm-up
    result: dict = {
        "model": args.model,
        "volume": list(volume.shape),
        "amp": args.amp,
        "threads": torch.get_num_threads(),
    }
    labels = {}
    for name, batch in (("one_slice", 1), ("batched", args.batch)):
        start = time.perf_counter()
        labels[name] = msa2net.predict_volume(model, volume, batch_size=batch, amp=args.amp)
        seconds = time.perf_counter() - start
        result[name] = {"batch_size": batch, "seconds": seconds, "slices_per_s": args.slices / seconds}
    result["identical_labels"] = bool(np.array_equal(labels["one_slice"], labels["batched"]))
    result["speedup"] = result["batched"]["slices_per_s"] / result["one_slice"]["slices_per_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
