"""The benchmark scripts cannot rot: each runs at a tiny size and its JSON carries the checks it exists to make.

No timing is asserted here (speed is measured by the benchmarks themselves, on a quiet machine); what is asserted is
that every part runs, that the figures compared are identical where they must be, and that every ratio is there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reference import benchmark_module

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytest.importorskip("medpy.metric.binary")


def _is_ratio(value: dict) -> bool:
    return set(value) >= {"median", "min", "max", "per_round"} and value["min"] > 0 and len(value["per_round"]) == 2


def test_bench_evaluate_runs_every_part_with_identical_figures(tmp_path: Path) -> None:
    bench = benchmark_module("bench_evaluate")
    out = tmp_path / "bench.json"
    args = ["--slices", "5", "--size", "80", "--model", "msa2net_test", "--img-size", "64", "--rounds", "2"]
    result = bench.main([*args, "--quiet", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["case"]["shape"] == [5, 80, 80]

    predict = result["predict"]
    assert predict["identical_labels"] == {
        "authors_one_slice": True,
        "ours_batched": True,
        "ours_one_slice": True,
    }
    for key in ("speedup_vs_authors", "batched_vs_one_slice"):
        assert _is_ratio(predict[key]), key

    for kind in ("realistic", "noisy"):
        metrics = result["metrics"][kind]
        assert metrics["legacy_vs_medpy"]["identical"], kind
        assert metrics["legacy_vs_medpy"]["bit_identical"] == metrics["legacy_vs_medpy"]["classes"] == 8
        assert metrics["threads_identical"]
        assert _is_ratio(metrics["speedup_vs_medpy"])
    # the two kinds of prediction are what their names say
    assert result["metrics"]["noisy"]["foreground_share"] > 0.5 > result["metrics"]["realistic"]["foreground_share"]

    noisy = result["evaluate"]["noisy_untrained_model"]
    assert noisy["legacy_vs_authors"]["identical"] and noisy["legacy_vs_authors"]["classes"] == 8
    assert _is_ratio(noisy["speedup_vs_authors"])
    assert _is_ratio(result["evaluate"]["realistic_model_plus_metrics"]["speedup_vs_authors"])


def test_bench_evaluate_refuses_unknown_parts() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_evaluate.py"), "--parts", "predict,nonsense"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "nonsense" in done.stderr and "evaluate" in done.stderr


def test_bench_backends_runs_every_runtime_and_float32_ones_give_the_torch_labels(tmp_path: Path) -> None:
    # in a process of its own, so that OpenVINO never loads into this one (see the openvino marker)
    args = ["--slices", "4", "--size", "80", "--model", "msa2net_test", "--img-size", "64", "--rounds", "2"]
    args += ["--calibration-slices", "4", "--parts", "speed,evaluate", "--quiet", "--out", str(tmp_path / "b.json")]
    env = {**os.environ, "MSA2NET_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, str(BENCHMARKS / "bench_backends.py"), *args]
    done = subprocess.run(command, capture_output=True, encoding="utf-8", timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "b.json").read_text())  # its nncf.quantize call draws bars on stdout
    speed = result["speed"]
    runtimes = {"torch_fp32", "torch_bf16", "ort_fp32", "openvino_fp32", "openvino_bf16", "openvino_int8"}
    assert set(speed["speedup_vs_authors"]) == runtimes
    assert all(_is_ratio(r) for r in speed["speedup_vs_authors"].values())
    identical = speed["identical_to_torch_fp32"]
    assert identical["authors"] == identical["ort_fp32"] == identical["openvino_fp32"] == 1.0
    assert all(0.5 < identical[name] <= 1.0 for name in runtimes)
    assert _is_ratio(result["evaluate"]["speedup_vs_authors"])
    assert set(result["machine"]["flags"]) >= {"avx2", "avx512_vnni", "amx_tile"}


@pytest.mark.parametrize("predictions", ["shifted", "speckled", "model"])
def test_bench_html_report_writes_and_measures_the_page(tmp_path: Path, predictions: str) -> None:
    args = ["--slices", "4", "--size", "64", "--predictions", predictions, "--out", str(tmp_path)]
    command = [sys.executable, str(BENCHMARKS / "bench_html_report.py"), *args]
    done = subprocess.run(command, capture_output=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["cases"] == 12 and result["slices"] == 48 and 0 < result["slices_shown"] <= 48
    page = tmp_path / "eval" / "report.html"
    assert result["report_mb"] == round(page.stat().st_size / 1e6, 2) and result["report_seconds"] > 0
    assert (result["evaluate_seconds"] is None) == (predictions == "speckled")
    assert (tmp_path / "eval" / "summary.json").is_file() == (predictions != "speckled")


def test_bench_hugepages_alternates_the_setting_over_fresh_preparations() -> None:
    command = [sys.executable, str(BENCHMARKS / "bench_hugepages.py"), "--slices", "4", "--size", "64", "--rounds", "1"]
    done = subprocess.run(command, capture_output=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["case"] == {"cases": 12, "slices": 4, "size": 64}
    for setting in ("default", "off"):
        (run,) = result["runs"][setting]
        assert run["evaluate_seconds"] > 0 and run["phantom_and_prepare_seconds"] >= 0
    ratio = result["default_over_off"]["evaluate_seconds"]
    assert ratio["per_round"] == [ratio["median"]] and ratio["median"] > 0
