"""The command line: info figures, and authors' checkpoints accepted wherever a checkpoint is."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from reference import official_state_dict

from msa2net.cli import main


def test_info_paper_and_released(capsys):
    assert main(["info", "msa2net_paper"]) == 0
    out = capsys.readouterr().out
    assert "76.61 M (76,606,666)" in out and "112.77 M (112,767,981" in out and "GFLOPs           30.80" in out
    assert main(["info", "msa2net_released", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"params_used": 71013299' in out and '"params_official_tree": 93660877' in out
    assert '"gflops": 28.35' in out


def test_info_reads_an_official_checkpoint(tmp_path, capsys):
    path = tmp_path / "best_model.pth"
    torch.save({"state_dict": official_state_dict("released", seed=2)}, path)
    assert main(["info", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"model": "msa2net_released"' in out and '"num_classes": 9' in out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2  # a folder is no checkpoint
    assert "error" in capsys.readouterr().err
    code = main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "msa2net.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("msa2net ")


@pytest.mark.slow
def test_evaluate_and_predict_accept_official_pth(tmp_path, data_synapse_prepared, data_synapse_raw, capsys):
    path = tmp_path / "best_model.pth"
    torch.save(official_state_dict("paper", seed=1), path)
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(path),
                "--data",
                str(data_synapse_prepared),
                "--out",
                str(tmp_path / "ev"),
                "--cases",
                "case0001",
                "--overlays",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "| Spl | RKid |" in capsys.readouterr().out
    scan = next((data_synapse_raw / "RawData" / "Training" / "img").glob("img0002*"))
    assert main(["predict", "--checkpoint", str(path), str(scan), "-o", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / scan.name).is_file()


@pytest.mark.slow
def test_demo_pipeline_end_to_end_shortened(tmp_path, capsys):
    """The `make demo` path (phantom, prepare, train, evaluate, predict, report) with one short epoch."""
    out = tmp_path / "demo"
    code = main(
        ["demo", "--out", str(out), "--device", "cpu", "--set", "train.epochs=1", "--set", "model.img_size=[64, 64]"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "demo finished in" in printed and "| Spl | RKid | LKid |" in printed
    report = (out / "report.md").read_text()
    assert "Mean Dice (legacy protocol)" in report and "![curves](curves.png)" in report
    assert (out / "curves.png").is_file() and list((out / "eval" / "overlays").glob("*.png"))
    assert (out / "predict" / "img0001.nii.gz").is_file()


def test_export_command(tmp_path, capsys):
    from msa2net import create_model
    from msa2net.data.preprocessing import CT_PREPROCESSING
    from msa2net.engine.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = create_model("msa2net_test", num_classes=2, img_size=64)
    save_checkpoint(make_checkpoint(model, "msa2net_test", CT_PREPROCESSING.to_dict(), ["bg", "fg"]), tmp_path / "m.pt")
    assert main(["export", "--checkpoint", str(tmp_path / "m.pt"), "-o", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "max |logits - eager| onnx" in out and "max |logits - eager| torchscript" in out
    assert {p.name for p in (tmp_path / "x").iterdir()} >= {"model.ts", "model.onnx", "model.safetensors", "model.json"}
