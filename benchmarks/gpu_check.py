"""GPU readiness in one script (under 8 minutes on one GPU): prints one JSON object.

Parts (each recorded, with its error if it fails; the exit code is 1 when any part failed):

* ``logits``: CUDA against CPU logits of both variants (``msa2net_paper``, ``msa2net_released``), the same random
  weights and input, float32 with TF32 off: max absolute and relative difference, share of identical argmax labels.
* ``train``: training throughput of the paper variant at the authors' batch of 20 at 224x224 (Boundary DoU loss,
  SGD as the Synapse recipe) in float32, bf16 autocast, fp16 autocast with the gradient scaler, and channels_last
  (float32 and bf16): images/s over timed steps after warm-up steps (``torch.cuda.synchronize()`` around the
  timing), and peak memory (``torch.cuda.max_memory_allocated``, reset before each configuration).
* ``predict``: ``predict_volume`` slices/s on a 512x512 volume (float32 and bf16) and its peak memory.
* ``collective``: a one-process ``torchrun`` job that joins an NCCL process group and all-reduces a tensor.
* ``torchrun_resume``: ``msa2net.cli train`` under ``torchrun`` (one process) on a tiny phantom for one iteration,
  then ``--resume`` to the second. (``msa2net.engine.distributed.setup`` joins a process group only when
  ``WORLD_SIZE > 1``, so this one-process run does not itself use NCCL: ``collective`` does.)

``--cpu-smoke`` runs every part tiny on the CPU (``msa2net_test`` at 64x64, batch 2, one warm-up and one timed
step, gloo instead of NCCL, a 4-slice volume) so that the script cannot rot without a GPU; the test suite runs it.

    python benchmarks/gpu_check.py                  # on a CUDA machine
    python benchmarks/gpu_check.py --cpu-smoke      # anywhere, in seconds
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PARTS = ("logits", "train", "predict", "collective", "torchrun_resume")


@dataclass(frozen=True)
class Settings:
    """Sizes of one run: the full GPU check or the CPU smoke run."""

    device: str
    variants: tuple[tuple[str, dict[str, Any]], ...]
    img_size: int
    logits_batch: int
    train_model: tuple[str, dict[str, Any]]
    train_batch: int
    warmup_steps: int
    timed_steps: int
    train_modes: tuple[str, ...]
    volume: tuple[int, int, int]
    predict_batch: int
    backend: str
    subprocess_timeout_s: int


FULL = Settings(
    device="cuda",
    variants=(("msa2net_paper", {}), ("msa2net_released", {})),
    img_size=224,
    logits_batch=2,
    train_model=("msa2net_paper", {}),
    train_batch=20,
    warmup_steps=3,
    timed_steps=10,
    train_modes=("fp32", "bf16", "fp16_scaler", "fp32_channels_last", "bf16_channels_last"),
    volume=(64, 512, 512),
    predict_batch=16,
    backend="nccl",
    subprocess_timeout_s=150,
)

SMOKE = Settings(
    device="cpu",
    variants=(("msa2net_test", {"variant": "paper"}), ("msa2net_test", {"variant": "released"})),
    img_size=64,
    logits_batch=1,
    train_model=("msa2net_test", {}),
    train_batch=2,
    warmup_steps=1,
    timed_steps=1,
    train_modes=("fp32", "bf16", "fp16_scaler", "fp32_channels_last", "bf16_channels_last"),
    volume=(4, 64, 64),
    predict_batch=2,
    backend="gloo",
    subprocess_timeout_s=240,
)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """Peak memory allocated by tensors on ``device`` since the last reset, in MiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def build(name: str, overrides: dict[str, Any], img_size: int) -> torch.nn.Module:
    import msa2net

    return msa2net.create_model(name, num_classes=9, in_channels=1, img_size=img_size, **overrides)


# ----------------------------------------------------------------------------------------------
# Parts
# ----------------------------------------------------------------------------------------------


def check_logits(settings: Settings, device: torch.device) -> dict[str, Any]:
    """Same weights and input on the CPU and on ``device``: how far apart the float32 logits are."""
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out: dict[str, Any] = {"tf32": False}
    try:
        for name, overrides in settings.variants:
            torch.manual_seed(0)
            model = build(name, overrides, settings.img_size).eval()
            x = torch.randn(settings.logits_batch, 1, settings.img_size, settings.img_size)
            with torch.inference_mode():
                cpu = model(x)
                model.to(device)
                other = model(x.to(device))
                synchronize(device)
                other = other.float().cpu()
            diff = (other - cpu).abs()
            key = name if not overrides else f"{name}_{overrides.get('variant', '')}"
            out[key] = {
                "max_abs_diff": float(diff.max()),
                "max_rel_diff": float(diff.max() / cpu.abs().max().clamp_min(1e-12)),
                "mean_abs_diff": float(diff.mean()),
                "identical_argmax": float((other.argmax(1) == cpu.argmax(1)).float().mean()),
            }
            del model
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return out


def check_train(settings: Settings, device: torch.device) -> dict[str, Any]:
    """Images/s and peak memory of SGD steps of the Synapse recipe, per precision and memory format."""
    name, _ = settings.train_model
    out: dict[str, Any] = {
        "model": name,
        "batch": settings.train_batch,
        "input": [settings.train_batch, 1, settings.img_size, settings.img_size],
        "warmup_steps": settings.warmup_steps,
        "timed_steps": settings.timed_steps,
    }
    for mode in settings.train_modes:
        out[mode] = train_throughput(settings, device, mode)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def train_throughput(settings: Settings, device: torch.device, mode: str) -> dict[str, Any]:
    """One configuration: ``fp32``, ``bf16``, ``fp16_scaler``, optionally suffixed ``_channels_last``."""
    from msa2net.losses import build_loss

    name, overrides = settings.train_model
    torch.manual_seed(0)
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float16 if mode.startswith("fp16") else None
    memory_format = torch.channels_last if mode.endswith("channels_last") else torch.contiguous_format
    model = build(name, overrides, settings.img_size).to(device).train()
    model.to(memory_format=memory_format)
    loss_fn = build_loss("boundary_dou", 9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=mode.startswith("fp16"))
    size = settings.img_size
    x = torch.randn(settings.train_batch, 1, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 9, (settings.train_batch, size, size), device=device)

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    reset_peak(device)
    for _ in range(settings.warmup_steps):
        step()
    synchronize(device)
    start = time.perf_counter()
    losses = [step() for _ in range(settings.timed_steps)]
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": round(settings.train_batch * settings.timed_steps / seconds, 2),
        "step_s": round(seconds / settings.timed_steps, 4),
        "peak_memory_mib": peak_mib(device),
        "finite_losses": bool(np.all(np.isfinite(losses))),
    }


def check_predict(settings: Settings, device: torch.device) -> dict[str, Any]:
    """Slices/s of ``predict_volume`` on ``device`` (float32 and bf16), after a warm-up batch."""
    from msa2net.engine.inference import predict_volume

    name, overrides = settings.train_model
    torch.manual_seed(0)
    model = build(name, overrides, settings.img_size).to(device).eval()
    volume = np.random.default_rng(0).random(settings.volume, dtype=np.float32)
    out: dict[str, Any] = {"volume": list(settings.volume), "batch_size": settings.predict_batch}
    labels = {}
    for amp in (None, "bf16"):
        predict_volume(model, volume[: settings.predict_batch], batch_size=settings.predict_batch, amp=amp)
        reset_peak(device)
        synchronize(device)
        start = time.perf_counter()
        labels[amp] = predict_volume(model, volume, batch_size=settings.predict_batch, amp=amp)
        synchronize(device)
        seconds = time.perf_counter() - start
        out[amp or "fp32"] = {
            "slices_per_s": round(settings.volume[0] / seconds, 2),
            "peak_memory_mib": peak_mib(device),
        }
    out["bf16_identical_labels"] = float(np.mean(labels[None] == labels["bf16"]))
    return out


def torchrun(args: list[str], timeout: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=1 ARGS``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def last_json(text: str) -> dict[str, Any]:
    """The last top-level JSON object printed in ``text`` (indented or on one line)."""
    start = text.rfind("\n{")
    start = 0 if start < 0 and text.startswith("{") else start + 1
    return json.loads(text[start : text.rindex("}") + 1])


def check_collective(settings: Settings, device: torch.device) -> dict[str, Any]:
    """A one-process torchrun job joins a ``settings.backend`` group and all-reduces a tensor on ``device``."""
    done = torchrun(
        [str(Path(__file__).resolve()), "--collective-child", settings.backend, "--device", str(device)],
        settings.subprocess_timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited with {done.returncode}: {done.stderr[-2000:]}")
    return last_json(done.stdout)


def collective_child(backend: str, device_name: str) -> None:
    """Runs under torchrun: join the group, all-reduce, print JSON."""
    import torch.distributed as dist

    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    try:
        value = torch.full((4,), float(dist.get_rank() + 1), device=device)
        dist.all_reduce(value)
        synchronize(device)
        dist.barrier()
        print(
            json.dumps(
                {
                    "backend": dist.get_backend(),
                    "world_size": dist.get_world_size(),
                    "all_reduce": value.cpu().tolist(),
                    "ok": bool(torch.all(value.cpu() == dist.get_world_size() * (dist.get_world_size() + 1) / 2)),
                }
            )
        )
    finally:
        dist.destroy_process_group()


def check_torchrun_resume(settings: Settings, device: torch.device) -> dict[str, Any]:
    """``msa2net.cli train`` under torchrun for 1 iteration, then ``--resume`` to iteration 2."""
    from msa2net.data.phantom import make_synapse_phantom
    from msa2net.data.synapse_prepare import prepare_synapse

    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # scratch: gone when the script ends
    make_synapse_phantom(root / "raw", cases=("0001", "0002", "0005", "0006"), seed=3, slices=(4, 5), size=64)
    prepare_synapse(root / "raw", root / "data", progress=False)
    run = root / "run"
    common = [
        "-m",
        "msa2net.cli",
        "train",
        "demo",
        "--data",
        str(root / "data"),
        "--out",
        str(run),
        "--device",
        device.type,
        "--set",
        "model.img_size=[64,64]",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.epochs=4",
        "--set",
        "data.validation=none",
        "--set",
        "data.num_workers=0",
        "--set",
        "train.progress=false",
    ]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    out: dict[str, Any] = {}
    resume = ["-m", "msa2net.cli", "train", "--resume", str(run / "last.pt"), "--device", device.type]
    for label, args in (
        ("first", [*common, "--set", "train.max_iterations=1"]),
        ("resumed", [*resume, "--set", "train.max_iterations=2"]),  # the rest comes from the checkpoint's config
    ):
        start = time.perf_counter()
        done = torchrun(args, settings.subprocess_timeout_s, env)
        if done.returncode != 0:
            raise RuntimeError(f"{label} run: torchrun exited with {done.returncode}: {done.stderr[-2000:]}")
        result = last_json(done.stdout)
        out[label] = {"iterations": result["iterations"], "seconds": round(time.perf_counter() - start, 1)}
    out["ok"] = out["first"]["iterations"] == 1 and out["resumed"]["iterations"] == 2
    out["process_group"] = "none: one process (WORLD_SIZE=1); the collective part checks the backend"
    return out


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run of every part (gloo, test model)")
    parser.add_argument("--device", help="device of the check (default cuda, or cpu with --cpu-smoke)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--collective-child", metavar="BACKEND", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.collective_child:
        collective_child(args.collective_child, args.device or "cpu")
        return 0
    settings = SMOKE if args.cpu_smoke else FULL
    device = torch.device(args.device or settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available here: run with --cpu-smoke (or --device cpu)")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {PARTS}")
    checks: dict[str, Callable[[Settings, torch.device], dict[str, Any]]] = {
        "logits": check_logits,
        "train": check_train,
        "predict": check_predict,
        "collective": check_collective,
        "torchrun_resume": check_torchrun_resume,
    }
    started = time.perf_counter()
    result: dict[str, Any] = {
        "mode": "cpu_smoke" if args.cpu_smoke else "gpu",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "backend": settings.backend,
    }
    failed = []
    for part in parts:
        start = time.perf_counter()
        try:
            result[part] = checks[part](settings, device)
        except Exception as error:  # record and go on: one JSON object whatever fails
            failed.append(part)
            result[part] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        result[part]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"[gpu_check] {part}: {result[part]['seconds']} s", file=sys.stderr, flush=True)
    result["failed"] = failed
    result["total_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
