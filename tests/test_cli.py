"""The command line: info figures, and authors' checkpoints accepted wherever a checkpoint is."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from reference import official_state_dict

from msa2net.cli import build_parser, main


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
    page = (out / "report.html").read_text()  # the evaluation's page, with the demo's note and one epoch of curves
    assert page == (out / "eval" / "report.html").read_text() and "The msa2net demo" in page
    assert page.count('class="case-data"') == 2 and '"epochs":[1]' in page and page.rstrip().endswith("</html>")
    assert 'class="case-data"' in (out / "predict" / "report.html").read_text()
    assert f"browse: {(out / 'report.html').resolve().as_uri()}" in printed


def test_export_command(tmp_path, capsys, tiny_checkpoint):
    from msa2net.data.preprocessing import CT_PREPROCESSING

    tiny_checkpoint(["bg", "fg"], CT_PREPROCESSING, tmp_path / "m.pt")
    assert main(["export", "--checkpoint", str(tmp_path / "m.pt"), "-o", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "max |logits - eager| onnx" in out and "max |logits - eager| torchscript" in out
    written = {p.name for p in (tmp_path / "x").iterdir()}
    assert written == {"model.ts", "model.onnx", "model.safetensors", "config.json", "README.md"}


def test_predict_flags_reach_the_engine(tmp_path, capsys, tiny_checkpoint):
    from PIL import Image

    from msa2net.data.preprocessing import CT_PREPROCESSING

    tiny_checkpoint(["bg", "fg"], CT_PREPROCESSING, tmp_path / "m.pt")
    Image.fromarray(np.full((40, 50), 100, np.uint8)).save(tmp_path / "photo.png")
    base = ["predict", str(tmp_path / "photo.png"), "--checkpoint", str(tmp_path / "m.pt"), "--device", "cpu"]
    assert main([*base, "-o", str(tmp_path / "a")]) == 1  # an 8-bit picture is no CT scan: refused
    assert "--allow-mismatched-input" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "b"), "--allow-mismatched-input"]) == 0
    assert (tmp_path / "b" / "photo.png").is_file()
    assert main([*base, "-o", str(tmp_path / "c"), "--allow-mismatched-input", "--max-pixels", "1000"]) == 1
    err = capsys.readouterr().err
    assert "2000" in err and "--max-pixels" in err  # 40 x 50 pixels over the limit of 1000


# ---------------------------------------------------------------------------------------------- argument validation


def _argparse_error(argv: list[str], capsys) -> str:
    """stderr of an argparse refusal (exit code 2)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_train_rejects_a_bad_config_before_touching_the_data(tmp_path, capsys):
    missing = tmp_path / "no_such_data"
    argv = ["train", "demo", "--data", str(missing), "--out", str(tmp_path / "run")]
    assert main([*argv, "--set", "train.epochs=abc", "--set", "data.validation=maybe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msa2net train: error: preset 'demo': 2 problems:")
    assert "train.epochs: expected an integer >= 1, found 'abc'" in err
    assert "data.validation: expected one of held_out, test, none, found 'maybe'" in err
    assert "does not exist" not in err and "Traceback" not in err
    assert not missing.exists() and not (tmp_path / "run").exists()


def test_train_reports_bad_yaml_and_sections_in_one_message(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("- train\n- data\n")
    assert main(["train", str(path), "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 1: expected a mapping of sections at the top level" in err and "Traceback" not in err
    assert main(["train", "demo", "--set", "model=5", "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "model: expected a mapping of model options" in err and "Traceback" not in err


def test_phantom_sizes_reach_each_dataset(tmp_path, capsys):
    from PIL import Image

    from msa2net.data.io import read_image

    assert main(["phantom", "isic2018", "--out", str(tmp_path / "isic"), "-n", "2", "--size", "48", "64"]) == 0
    images = sorted((tmp_path / "isic" / "ISIC2018_Task1-2_Training_Input").iterdir())
    assert len(images) == 2 and Image.open(images[0]).size == (64, 48)  # PIL: (width, height)
    assert main(["phantom", "isic2018", "--out", str(tmp_path / "square"), "-n", "1", "--size", "40"]) == 0
    assert Image.open(next((tmp_path / "square" / "ISIC2018_Task1-2_Training_Input").iterdir())).size == (40, 40)
    assert main(["phantom", "synapse", "--out", str(tmp_path / "ct"), "--cases", "1", "--size", "32"]) == 0
    volume = next((tmp_path / "ct").rglob("img0001.nii.gz"))
    assert read_image(volume)[0].shape[1:] == (32, 32)
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["phantom", "synapse", "-n", "3"], "-n counts isic2018 images; choose synapse cases with --cases"),
        (["phantom", "synapse", "--size", "32", "48"], "synapse phantom slices are square: give one --size"),
        (["phantom", "isic2018", "--cases", "1"], "--cases names synapse (BTCV) cases"),
        (["phantom", "isic2018", "--size", "32", "48", "64"], "isic2018 phantom images take --size H W"),
    ],
)
def test_phantom_refuses_the_other_datasets_options(tmp_path, capsys, argv, message):
    out = tmp_path / "ph"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"msa2net phantom: error: {message}" in err and "Traceback" not in err
    assert not out.exists()


def test_phantom_size_must_be_positive(tmp_path, capsys):
    out = tmp_path / "ph"
    err = _argparse_error(["phantom", "synapse", "--out", str(out), "--size", "0"], capsys)
    assert "argument --size: expected an integer >= 16, got '0'" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["phantom", "synapse", "--out", "x", "--cases", "0"], "argument --cases: expected a BTCV case number >= 1"),
        (["phantom", "isic2018", "--out", "x", "-n", "0"], "argument -n: expected an integer >= 1, got '0'"),
        (["phantom", "isic2018", "--out", "x", "--seed", "-1"], "argument --seed: expected an integer >= 0"),
        (["train", "--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
        (["train", "--batch-size", "x"], "argument --batch-size: expected an integer >= 1, got 'x'"),
        (["train", "--num-workers", "-1"], "argument --num-workers: expected an integer >= 0, got '-1'"),
        (["train", "--device", "gpu"], "argument --device: expected auto, cpu, cuda, cuda:N (N a GPU index) or mps"),
        (["evaluate", "--checkpoint", "c", "--data", "d", "--batch-size", "0"], "argument --batch-size: expected"),
        (["evaluate", "--checkpoint", "c", "--data", "d", "--overlays", "-1"], "argument --overlays: expected an"),
        (["evaluate", "--checkpoint", "c", "--data", "d", "--nsd-tolerance", "0"], "argument --nsd-tolerance: expec"),
        (["predict", "a.png", "--checkpoint", "c", "-o", "o", "--batch-size", "0"], "argument --batch-size: expect"),
        (["info", "msa2net_test", "--num-classes", "0"], "argument --num-classes: expected an integer >= 1"),
        (["info", "msa2net_test", "--img-size", "0x224"], "argument --img-size: size must be N or HxW with positive"),
    ],
)
def test_numeric_options_refuse_bad_values(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs land here should an option ever be accepted
    assert message in _argparse_error(argv, capsys)


def test_evaluate_empty_accepts_policies_and_non_negative_numbers(capsys):
    err = _argparse_error(["evaluate", "--checkpoint", "c", "--data", "d", "--empty", "foo"], capsys)
    assert "argument --empty: expected nan, legacy, diagonal or a non-negative number (mm), got 'foo'" in err
    assert "could not convert" not in err
    parser = build_parser()
    base = ["evaluate", "--checkpoint", "c", "--data", "d"]
    assert parser.parse_args(base).empty == "nan"
    assert [parser.parse_args([*base, "--empty", v]).empty for v in ("legacy", "Diagonal", "373.13", "0")] == [
        "legacy",
        "diagonal",
        373.13,
        0.0,
    ]
    assert "argument --empty" in _argparse_error([*base, "--empty", "-5"], capsys)


def test_pretrained_encoder_none_means_no_weights_and_text_options_stay_text(tmp_path, monkeypatch):
    import msa2net.engine.train as engine_train

    seen = []
    monkeypatch.setattr(
        engine_train, "train", lambda cfg, resume=None, overwrite=False: seen.append(cfg) or {"ok": True}
    )
    for spelling in ("none", "None", "NONE"):
        assert main(["train", "synapse", "--pretrained-encoder", spelling, "--data", "2024", "--device", "cuda:1"]) == 0
        cfg = seen.pop()
        assert cfg.model.pretrained_encoder is None  # not a file called "none"
        assert cfg.data.root == "2024" and cfg.train.device == "cuda:1"  # a string, not the integer 2024
    assert main(["train", "synapse", "--pretrained-encoder", "weights/none.pth", "--out", "yes"]) == 0
    cfg = seen.pop()
    assert cfg.model.pretrained_encoder == "weights/none.pth" and cfg.out_dir == "yes"


def test_predict_device_defaults_to_auto_like_evaluate():
    parser = build_parser()
    assert parser.parse_args(["predict", "a.png", "--checkpoint", "c", "-o", "o"]).device == "auto"
    assert parser.parse_args(["evaluate", "--checkpoint", "c", "--data", "d"]).device == "auto"
    assert parser.parse_args(["phantom", "synapse", "--out", "x"]).size is None  # each dataset's own default


def test_every_option_has_help():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{command} {action.option_strings or action.dest}"
        for command, sub_parser in sub.choices.items()
        for action in sub_parser._actions
        if not action.help
    ]
    assert missing == []


def test_demo_rejects_a_bad_override_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--set", "train.epochs=0", "--set", "train.optimiser=sgd"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs: expected an integer >= 1, found 0" in err and "unknown keys in 'train': ['optimiser']" in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        *([command, "--help"] for command in ("info", "phantom", "prepare", "train", "evaluate", "predict")),
        *([command, "--help"] for command in ("publish", "export", "demo")),
        ["evaluate", "--data", "x"],  # an argument error: --checkpoint missing
    ],
)
def test_help_and_argument_errors_answer_without_loading_torch(argv: list[str]) -> None:
    """``--help`` and argument errors must not wait seconds for torch to import."""
    code = (
        "import sys\nfrom msa2net.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'SimpleITK', 'timm') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:] + done.stderr[-500:]


def test_train_help_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    from msa2net.config import PRESETS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"preset ({', '.join(PRESETS)})" in text and "aal" in PRESETS


@pytest.mark.parametrize(
    ("load", "command", "preset", "expected"),
    [
        (2.0, "train", None, "PASSIVE"),  # another busy process: waiting threads must not spin
        (0.1, "train", None, None),  # idle: OpenMP's default (spinning is the fastest alone)
        (2.0, "train", "ACTIVE", "ACTIVE"),  # the user's choice is kept
        (2.0, "info", None, None),  # no compute
    ],
)
def test_wait_policy_follows_the_load_before_torch_is_loaded(load, command, preset, expected) -> None:
    code = (
        "import os, sys\n"
        "os.getloadavg = lambda: (2.0, 2.0, 2.0)  # a run that just ended: the load average still counts it\n"
        "import msa2net.cli as cli\n"
        f"cli.busy_cores = lambda: {load}\n"
        f"note = cli._wait_policy_for_shared_cpus({command!r})\n"
        "assert 'torch' not in sys.modules\n"
        "print(repr(os.environ.get('OMP_WAIT_POLICY')), bool(note))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    policy, noted = done.stdout.split()
    assert policy == repr(expected) and noted == str(expected == "PASSIVE" and preset is None)


def test_busy_cores_sees_a_spinning_process() -> None:
    from msa2net.cli import busy_cores

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # past the interpreter's start
        assert busy_cores(0.5) >= 0.5  # one spinning process, sharing the cores with whatever else runs
    finally:
        spinner.kill()
        spinner.wait()
