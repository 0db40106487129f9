"""Training speed when another CPU-heavy process shares the cores, with and without OMP_WAIT_POLICY=PASSIVE.

Each measurement is a fresh child process that sets (or leaves unset) ``OMP_WAIT_POLICY`` in ``os.environ`` before it
imports torch, as ``msa2net``'s command line does, builds ``--model`` with random weights and times ``--steps``
training steps (SGD, cross-entropy, batch ``--batch`` at ``--size``) after one warm-up step. Four settings are
measured in interleaved rounds (the order rotates every round): one process alone and two at once, each with
OpenMP's default (active) wait policy and with ``PASSIVE``. Prints JSON: seconds per step per setting (median, min,
max over every step of every process of every round) and the ratios the command line's choice rests on.

    python benchmarks/bench_contention.py                       # msa2net_paper, batch 2 at 224, 3 rounds
    python benchmarks/bench_contention.py --model msa2net_test --size 64 --rounds 1 --steps 2   # seconds

Run it on an otherwise idle machine: other load changes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {  # name -> (processes at once, OMP_WAIT_POLICY or None for OpenMP's default)
    "alone_default": (1, None),
    "alone_passive": (1, "PASSIVE"),
    "pair_default": (2, None),
    "pair_passive": (2, "PASSIVE"),
}


def child(args: argparse.Namespace) -> None:
    """Time training steps in this process (the policy is set before torch is imported)."""
    if args.policy:
        os.environ["OMP_WAIT_POLICY"] = args.policy
    else:
        os.environ.pop("OMP_WAIT_POLICY", None)
    import torch

    import msa2net

    torch.manual_seed(0)
    model = msa2net.create_model(args.model, num_classes=9, img_size=args.size).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    image = torch.randn(args.batch, 1, args.size, args.size)
    label = torch.randint(0, 9, (args.batch, args.size, args.size))
    times = []
    for step in range(args.steps + 1):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(image), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up the allocator and kernels
            times.append(time.perf_counter() - started)
    print(json.dumps({"seconds_per_step": times, "threads": torch.get_num_threads()}))


def measure(args: argparse.Namespace, processes: int, policy: str | None) -> dict[str, object]:
    command = [sys.executable, __file__, "--child", "--model", args.model, "--size", str(args.size)]
    command += ["--batch", str(args.batch), "--steps", str(args.steps), "--policy", policy or ""]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    running = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(processes)]
    results = []
    for proc in running:
        out, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"child exited with {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {"steps": [t for r in results for t in r["seconds_per_step"]], "threads": results[0]["threads"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="msa2net_paper")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    names = list(SETTINGS)
    steps: dict[str, list[float]] = {name: [] for name in names}
    per_round: dict[str, list[float]] = {name: [] for name in names}
    threads = None
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            result = measure(args, *SETTINGS[name])
            steps[name] += result["steps"]  # type: ignore[arg-type]
            per_round[name].append(statistics.median(result["steps"]))  # type: ignore[arg-type]
            threads = result["threads"]
            print(f"round {round_index + 1} {name}: {per_round[name][-1]:.3f} s/step", file=sys.stderr)

    def summary(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    def ratio(a: str, b: str) -> dict[str, float]:
        values = [x / y for x, y in zip(per_round[a], per_round[b])]
        return summary(values)

    print(
        json.dumps(
            {
                "model": args.model,
                "size": args.size,
                "batch": args.batch,
                "steps_per_process": args.steps,
                "rounds": args.rounds,
                "cpus": len(os.sched_getaffinity(0)),
                "torch_threads_per_process": threads,
                "seconds_per_step": {name: summary(values) for name, values in steps.items()},
                "per_round_median_seconds_per_step": per_round,
                "ratios_per_round": {
                    "pair_default_vs_alone_default": ratio("pair_default", "alone_default"),
                    "pair_passive_vs_alone_default": ratio("pair_passive", "alone_default"),
                    "pair_default_vs_pair_passive": ratio("pair_default", "pair_passive"),
                    "alone_passive_vs_alone_default": ratio("alone_passive", "alone_default"),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
