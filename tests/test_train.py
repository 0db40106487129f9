"""Training: presets, every dataset path, exact resume after SIGKILL, DDP on gloo, checkpoints that lose nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import write_liver_folder

from msa2net.config import PRESETS, load_config, parse_override
from msa2net.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from msa2net.engine.train import scaled_lr, train

TINY = [
    "model.name=msa2net_test",
    "model.img_size=[64, 64]",
    "model.pretrained_encoder=null",
    "train.batch_size=4",
    "train.eval_every=1",
    "train.progress=false",
    "train.device=cpu",
    "data.num_workers=0",
]


def tiny_config(preset: str, root: Path, out: Path, *extra: str):
    return load_config(preset, [*TINY, f"data.root={root}", f"out_dir={out}", *extra])


# ---------------------------------------------------------------------------------------------- config


def test_presets_load_and_follow_the_recipe():
    for name in PRESETS:
        load_config(name)
    cfg = load_config("synapse")
    assert (cfg.train.loss, cfg.train.optimizer, cfg.train.momentum, cfg.train.weight_decay) == (
        "boundary_dou",
        "sgd",
        0.9,
        1e-4,
    )
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.eval_every, cfg.model.img_size) == (
        700,
        20,
        20,
        [224, 224],
    )
    assert scaled_lr(cfg, 20) == pytest.approx(0.05 * 20 / 24)  # the authors' README run: 0.041667
    assert scaled_lr(cfg, 24) == 0.05 and scaled_lr(cfg, 16) == 0.05


def test_overrides_and_unknown_keys(tmp_path):
    assert parse_override("train.lr=0.01") == {"train": {"lr": 0.01}}
    cfg = load_config("synapse", ["train.epochs=3", "model.img_size=[96, 128]", "data.val_cases=[case0005]"])
    assert cfg.train.epochs == 3 and cfg.model.img_size == [96, 128] and cfg.data.val_cases == ["case0005"]
    with pytest.raises(ValueError, match=r"unknown keys in 'train': \['epoch'\]"):
        load_config("synapse", ["train.epoch=3"])
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("preset: isic2018\ntrain:\n  epochs: 7\n")
    cfg = load_config(str(yaml_file))
    assert cfg.train.epochs == 7 and cfg.data.kind == "isic2018" and cfg.train.scheduler == "plateau"


# ---------------------------------------------------------------------------------------------- code paths


def test_train_synapse_preset_path(data_synapse_prepared, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config("synapse", data_synapse_prepared, out, "train.epochs=2")
    result = train(cfg)
    assert result["epochs_done"] == 2 and result["iterations"] > 0
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.csv", "curves.png"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["class_names"][1:3] == ["spleen", "right_kidney"]
    assert ckpt["config"]["train"]["loss"] == "boundary_dou"
    assert ckpt["epoch"] == 2 and ckpt["iteration"] == result["iterations"]
    for key in ("optimizer", "scheduler", "rng", "model_args", "preprocessing", "msa2net_version"):
        assert key in ckpt
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,iteration,train_loss,lr") and len(rows) == 3
    assert "val_dice_spleen" in rows[0]
    # the poly schedule decays per iteration from the base LR
    assert ckpt["optimizer"]["param_groups"][0]["lr"] < cfg.train.lr


def test_train_isic_preset_path(data_isic_raw, tmp_path):
    from msa2net.data.isic import prepare_isic2018

    root = tmp_path / "isic"
    prepare_isic2018(data_isic_raw, root, size=(64, 64), progress=False)
    result = train(tiny_config("isic2018", root, tmp_path / "run", "train.epochs=1"))
    assert result["epochs_done"] == 1 and 0.0 <= result["best_mean_dice"] <= 1.0
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["preprocessing"]["kind"] == "rgb" and ckpt["model_args"]["in_channels"] == 3


def test_train_folder_preset_path(tmp_path):
    root = tmp_path / "ds"
    write_liver_folder(root)
    cfg = tiny_config("folder", root, tmp_path / "run", "train.epochs=1", "data.val_fraction=0.34")
    result = train(cfg)
    assert result["epochs_done"] == 1
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["class_names"] == ["background", "liver", "tumour"]
    assert ckpt["preprocessing"]["kind"] == "ct_window"  # raw HU mapping recorded for prediction


def test_wrong_class_count_is_explained(data_synapse_prepared, tmp_path):
    cfg = tiny_config("synapse", data_synapse_prepared, tmp_path / "run", "model.num_classes=4")
    with pytest.raises(ValueError, match="9 classes.*model.num_classes=4"):
        train(cfg)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"format": "old"}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "new"}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_bad_checkpoints_are_named(tmp_path):
    truncated = tmp_path / "truncated.pt"
    save_checkpoint({"format": "msa2net-checkpoint", "x": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)
    partial = tmp_path / "partial.pt"
    torch.save({"format": "msa2net-checkpoint", "format_version": 1, "model": {}}, partial)
    with pytest.raises(CheckpointError, match=r"lacks the fields \['model_name', 'model_args', 'preprocessing'"):
        load_checkpoint(partial)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


# ---------------------------------------------------------------------------------------------- resume, DDP


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "msa2net.cli", *args]


def _train_args(root: Path, out: Path, epochs: int) -> list[str]:
    sets = [*TINY, "train.batch_size=2", "train.eval_every=2", "train.loss=ce_dice"]
    args = ["train", "synapse", "--data", str(root), "--out", str(out), "--epochs", str(epochs)]
    for s in sets:
        args += ["--set", s]
    return args


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(data_synapse_prepared, tmp_path):
    epochs = 4
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_cli(*_train_args(data_synapse_prepared, straight, epochs)), check=True, env=env, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*_train_args(data_synapse_prepared, killed, epochs)), env=env)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait for the checkpoint of epoch 1, then kill during epoch 2
            last = killed / "last.pt"
            if last.is_file() and load_checkpoint(last)["epoch"] >= 1:
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.02)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = load_checkpoint(killed / "last.pt")["epoch"]
    assert interrupted_at < epochs
    (killed / ".tmp-0123456789ab-last.pt").write_bytes(b"what a kill during a save leaves")
    subprocess.run(_cli("train", "--resume", str(killed / "last.pt")), check=True, env=env, timeout=600)
    assert not list(killed.glob(".tmp-*"))  # stale temporary files are cleaned on resume

    a, b = _weights(straight / "last.pt"), _weights(killed / "last.pt")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], different[:5]
    rows_a = (straight / "metrics.csv").read_text().splitlines()
    rows_b = (killed / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in rows_a] == [r.split(",")[:4] for r in rows_b]


@pytest.mark.slow
def test_ddp_two_gloo_processes(data_synapse_prepared, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "msa2net.cli"]
    cmd += _train_args(data_synapse_prepared, out, 2)[0:] + ["--set", "train.batch_size=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, env=env, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training msa2net_test") == 1  # rank 0 alone reports and writes
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["world_size"] == 2 and isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2
    assert ckpt["epoch"] == 2
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val_mean_dice" in rows[0]
    # the validation Dice in the log is the reduction over both ranks' cases
    assert np.isfinite(float(rows[-1].split(",")[5]))
    shutil.rmtree(out)
