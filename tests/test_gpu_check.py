"""benchmarks/gpu_check.py cannot rot without a GPU: its CPU smoke run exercises every part and prints the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    result = json.loads(done.stdout)
    assert result == json.loads(out.read_text())
    assert result["mode"] == "cpu_smoke" and result["backend"] == "gloo" and result["failed"] == []
    for variant in ("msa2net_test_paper", "msa2net_test_released"):
        logits = result["logits"][variant]
        assert logits["max_abs_diff"] == 0.0 and logits["identical_argmax"] == 1.0  # CPU against CPU
    train = result["train"]
    for mode in ("fp32", "bf16", "fp16_scaler", "fp32_channels_last", "bf16_channels_last"):
        assert train[mode]["images_per_s"] > 0 and train[mode]["finite_losses"] is True
        assert "peak_memory_mib" in train[mode]
    assert result["predict"]["fp32"]["slices_per_s"] > 0 and 0.0 <= result["predict"]["bf16_identical_labels"] <= 1.0
    assert result["collective"]["ok"] is True and result["collective"]["world_size"] == 1
    resume = result["torchrun_resume"]
    assert resume["ok"] is True and (resume["first"]["iterations"], resume["resumed"]["iterations"]) == (1, 2)


def test_gpu_check_refuses_cuda_without_a_gpu_or_bad_parts() -> None:
    import torch

    args = [sys.executable, str(SCRIPT), "--parts", "nonsense", "--cpu-smoke"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "unknown parts" in done.stderr
    if not torch.cuda.is_available():
        done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "--cpu-smoke" in done.stderr
