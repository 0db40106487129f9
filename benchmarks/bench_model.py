"""Model speed and memory on this machine: forward latency (fp32 / bf16 autocast) and training throughput.

Prints one JSON object. Each training measurement runs in a fresh subprocess so that its peak resident memory
(ru_maxrss) is its own.

    python benchmarks/bench_model.py [--model msa2net_paper] [--repeats 5] [--train-steps 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch


def forward_latency(name: str, dtype: str, repeats: int) -> dict:
    import msa2net

    model = msa2net.create_model(name, num_classes=9, in_channels=1).eval()
    x = torch.randn(1, 1, 224, 224)
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        model(x)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def train_step_child(name: str, dtype: str, steps: int, batch: int) -> dict:
    """Runs in a subprocess: SGD steps of the Synapse recipe's loss at batch ``batch``, 224x224."""
    import msa2net
    from msa2net.losses import build_loss

    torch.manual_seed(0)
    model = msa2net.create_model(name, num_classes=9, in_channels=1).train()
    loss_fn = build_loss("boundary_dou", 9)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 1, 224, 224)
    y = torch.randint(0, 9, (batch, 224, 224))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # first step is warm-up
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step = statistics.median(times)
    return {
        "batch": batch,
        "median_step_s": step,
        "images_per_s": batch / step,
        "peak_rss_mib": peak / 1024,
        "peak_rss_above_model_mib": (peak - rss_before) / 1024,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="msa2net_paper")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("DTYPE", "STEPS"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_step_child(args.model, args.child[0], int(args.child[1]), args.batch)))
        return
    result = {
        "model": args.model,
        "input": [1, 1, 224, 224],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "forward": {dt: forward_latency(args.model, dt, args.repeats) for dt in ("fp32", "bf16")},
        "train": {},
    }
    for dt in ("fp32", "bf16"):
        cmd = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--child", dt]
        out = subprocess.run([*cmd, str(args.train_steps)], check=True, capture_output=True, text=True).stdout
        result["train"][dt] = json.loads(out.strip().splitlines()[-1])
    fwd = result["forward"]
    result["forward_bf16_speedup"] = fwd["fp32"]["median_s"] / fwd["bf16"]["median_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
