"""`msa2net <command>`: parses arguments (:mod:`.parser`) and runs the command (:mod:`.commands`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .parser import build_parser

__all__ = ["BUSY_LOAD", "build_parser", "busy_cores", "main"]

#: Commands whose work is torch compute on the CPU (train steps, forward passes).
_COMPUTE_COMMANDS = frozenset({"train", "evaluate", "predict", "demo", "export"})
#: Cores' worth of CPU time other processes use, just before msa2net starts, from which the CPU counts as shared.
BUSY_LOAD = 0.75


def busy_cores(window: float = 0.2) -> float:
    """Cores' worth of CPU time in use on this process's cores now, sampled over ``window`` seconds (psutil).

    The load average would not do: it lags by about a minute, so a run started right after another msa2net run
    (its own ``train`` before ``evaluate``) counted the finished one as a busy neighbour.
    """
    import psutil

    per_cpu = psutil.cpu_percent(interval=window, percpu=True)
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(len(per_cpu))
    return sum(per_cpu[c] for c in cores if c < len(per_cpu)) / 100.0


def _wait_policy_for_shared_cpus(command: str) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when other processes already keep the CPU busy; returns a note saying so.

    OpenMP threads that finish early spin while they wait (the default, active policy): the fastest alone, but the
    spinning takes the cores from every other process (``benchmarks/bench_contention.py`` measures both; README,
    "A CPU shared with other work"). So the policy is chosen here, before torch is imported (OpenMP reads it once, at
    load): PASSIVE when other processes already use :data:`BUSY_LOAD` cores or more, else OpenMP's default. An
    ``OMP_WAIT_POLICY`` the user set is kept, and nothing is done once torch is loaded (e.g. inside Python).
    """
    if command not in _COMPUTE_COMMANDS or "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return None
    try:
        load = busy_cores()
    except OSError:  # psutil cannot read the CPU times here
        return None
    if load < BUSY_LOAD:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return (
        f"note: other processes keep the CPU busy ({load:.1f} cores' worth in use), so msa2net runs with "
        "OMP_WAIT_POLICY=PASSIVE (waiting threads sleep instead of spinning, which shares the cores far better). "
        "Set OMP_WAIT_POLICY yourself to choose (ACTIVE spins), or give each process fewer threads "
        "(OMP_NUM_THREADS=1)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    note = _wait_policy_for_shared_cpus(args.command)
    if note:
        print(note, file=sys.stderr)
    try:
        from .commands import COMMANDS  # here, not on top: argument errors answer before anything loads

        return int(COMMANDS[args.command](args) or 0)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"msa2net {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"msa2net {args.command}: interrupted", file=sys.stderr)
        return 130
