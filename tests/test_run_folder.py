"""Run folders: never silently reused, one writer at a time, no stale temporary files; small batches and Ctrl-C."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msa2net._progress import progress_enabled
from msa2net.config import load_config
from msa2net.data.registry import open_source
from msa2net.engine import train as train_module
from msa2net.engine.run_folder import RunFolderBusy, RunFolderLock, prepare_run_folder
from msa2net.engine.train import train

TINY = [
    "model.name=msa2net_test",
    "model.img_size=[64, 64]",
    "model.pretrained_encoder=null",
    "train.batch_size=4",
    "train.progress=false",
    "train.device=cpu",
    "train.loss=ce_dice",
    "data.num_workers=0",
]


def _cfg(root: Path, out: Path, *extra: str):
    return load_config("synapse", [*TINY, f"data.root={root}", f"out_dir={out}", *extra])


def test_a_used_run_folder_is_refused_unless_resume_or_overwrite(data_synapse_prepared, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(data_synapse_prepared, out, "train.epochs=1", "train.max_iterations=1", "data.validation=none")
    first = train(cfg)
    assert first["best"] == str(out / "last.pt") and first["best_mean_dice"] is None  # no validation: no best.pt
    assert not (out / "best.pt").exists()
    (out / "notes.txt").write_text("mine")
    before = (out / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds .*--resume .*last.pt.*--overwrite"):
        train(cfg)
    assert (out / "last.pt").read_bytes() == before  # the refused run wrote nothing
    train(_cfg(data_synapse_prepared, out, "train.epochs=1", "train.max_iterations=1", "train.seed=5"), overwrite=True)
    assert (out / "last.pt").read_bytes() != before and (out / "best.pt").is_file()
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own outputs are replaced


def test_prepare_run_folder_removes_stale_temporary_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in (".tmp-0123456789ab-last.pt", ".tmp-ba9876543210-curves.png"):
        (out / name).write_bytes(b"x" * 100)
    (out / "last.pt").write_bytes(b"weights")
    removed = prepare_run_folder(out, resume=True, overwrite=False)
    assert sorted(removed) == [".tmp-0123456789ab-last.pt", ".tmp-ba9876543210-curves.png"]
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]
    assert prepare_run_folder(tmp_path / "run", resume=True, overwrite=False) == []


def test_lock_names_the_holder_and_is_released(tmp_path):
    holder = RunFolderLock(tmp_path / "run")
    holder.acquire()
    try:
        with pytest.raises(RunFolderBusy, match=rf"run folder {tmp_path / 'run'} is in use by pid {os.getpid()}"):
            RunFolderLock(tmp_path / "run").acquire()
    finally:
        holder.release()
    with RunFolderLock(tmp_path / "run"):  # free again
        pass


@pytest.mark.slow
def test_second_train_into_a_running_folder_is_refused_before_any_data_or_model(data_synapse_prepared, tmp_path):
    out = tmp_path / "run"
    args = ["train", "synapse", "--data", str(data_synapse_prepared), "--out", str(out), "--epochs", "50"]
    for item in TINY:
        args += ["--set", item]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "msa2net.cli", *args], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").is_file():  # the first run is training and has written a checkpoint
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.1)
        config_before = (out / "config.yaml").read_bytes()
        # the second run fails loudly if it reads data or builds a model before it is refused
        second_args = [*args, "--seed", "99", "--overwrite"]
        code = (
            "import sys\nimport msa2net.engine.train as t\n"
            "def too_late(*a, **k):\n    raise SystemExit('read data or built a model before the refusal')\n"
            "t.build_training_data = t.create_model = too_late\n"
            f"from msa2net.cli import main\nsys.exit(main({second_args!r}))"
        )
        second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"run folder {out} is in use by pid {first.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert (out / "config.yaml").read_bytes() == config_before
        assert len(list((out / "tensorboard").iterdir())) == 1  # one writer's event file
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait(timeout=30)


def test_a_lone_last_sample_is_dropped_not_fatal(data_synapse_prepared, tmp_path):
    n = len(open_source(data_synapse_prepared).training_dataset(["case0005", "case0006"], lambda *a: a, 0))
    batch = n - 1  # the last batch of every epoch would hold one sample
    out = tmp_path / "run"
    # at 32 px the deepest feature map is 1x1: BatchNorm fails on a one-sample batch there
    cfg = _cfg(
        data_synapse_prepared, out, "train.epochs=1", "data.validation=none", f"train.batch_size={batch}",
        "model.img_size=[32, 32]",
    )  # fmt: skip
    result = train(cfg)
    assert result["iterations"] == 1  # one full batch; the lone sample waits for the next (reshuffled) epoch
    with pytest.raises(ValueError, match=r"BatchNorm needs at least 2.*train.batch_size >= 2"):
        train(_cfg(data_synapse_prepared, tmp_path / "one", "train.batch_size=1"))


def test_ctrl_c_says_how_to_resume_and_releases_the_lock(data_synapse_prepared, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"

    def interrupted(cfg, info, resume):
        (out / "last.pt").write_bytes(b"a finished epoch")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(data_synapse_prepared, out))
    assert f"msa2net train --resume {out / 'last.pt'}" in capsys.readouterr().err
    with RunFolderLock(out):  # released
        pass


def test_tqdm_disable_is_honoured(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_enabled(True) and not progress_enabled(False)
    for value in ("1", "true", "YES"):
        monkeypatch.setenv("TQDM_DISABLE", value)
        assert not progress_enabled(True)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert progress_enabled(True)


def test_atomic_writes_give_every_file_the_usual_mode(tmp_path):
    import stat

    from msa2net._atomic import atomic_path

    with atomic_path(tmp_path / "weights.safetensors") as tmp:
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)  # what safetensors' writer does
        os.close(fd)
    with open(tmp_path / "plain.txt", "w") as handle:
        handle.write("x")
    mode = stat.S_IMODE((tmp_path / "weights.safetensors").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


def test_info_counts_the_model_at_the_size_asked(capsys):
    from msa2net import create_model
    from msa2net.cli import main

    assert main(["info", "msa2net_test", "--img-size", "128", "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    built = sum(p.numel() for p in create_model("msa2net_test", img_size=(128, 128)).parameters())
    assert info["params_used"] == built


def test_ctrl_c_in_the_first_epoch_removes_the_partial_run_so_the_same_command_starts_again(
    data_synapse_prepared, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    cfg = _cfg(data_synapse_prepared, out, "train.epochs=1", "train.max_iterations=1", "data.validation=none")
    real_epoch = train_module._train_one_epoch

    def interrupted(run, epoch):
        assert (out / "config.yaml").is_file() and (out / "tensorboard").is_dir()  # what the run wrote so far
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    err = capsys.readouterr().err
    assert "interrupted before the first epoch ended: no checkpoint was written" in err and "--resume" not in err
    assert "config.yaml" in err and "Run the same command again" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    monkeypatch.setattr(train_module, "_train_one_epoch", real_epoch)
    assert train(cfg)["iterations"] == 1  # the same command, no --overwrite needed
    (out / "last.pt").unlink()  # a folder with outputs but no checkpoint: the refusal offers no --resume
    with pytest.raises(FileExistsError, match=r"\(no last.pt to resume from\), replace it with --overwrite"):
        train(cfg)


def test_max_iterations_shortens_the_schedule_to_the_iterations_that_run(data_synapse_prepared, tmp_path):
    from msa2net.engine.checkpoint import load_checkpoint

    out = tmp_path / "run"
    cfg = _cfg(data_synapse_prepared, out, "train.epochs=3", "train.max_iterations=2", "data.validation=none")
    assert cfg.train.scheduler == "poly"
    result = train(cfg)
    history = load_checkpoint(out / "last.pt")["history"]
    assert result["iterations"] == 2 and history[-1]["iteration"] == 2
    assert history[-1]["lr"] == 0.0  # annealed over the 2 iterations that ran, as a full run ends


def test_resume_takes_the_checkpoint_config_and_says_where_it_resumes(data_synapse_prepared, tmp_path, capsys):
    from msa2net.cli import main
    from msa2net.engine.checkpoint import load_checkpoint

    out = tmp_path / "run"
    args = ["train", "synapse", "--data", str(data_synapse_prepared), "--out", str(out), "--epochs", "1"]
    for item in [*TINY, "data.validation=none"]:
        args += ["--set", item]
    assert main(args) == 0
    capsys.readouterr()
    # a preset beside --resume would replace the recorded config (its default data root does not exist here)
    assert main(["train", "synapse", "--resume", str(out / "last.pt")]) == 2
    assert "drop 'synapse'" in capsys.readouterr().err
    moved = tmp_path / "moved"
    out.rename(moved)  # the checkpoint's folder is the run folder, wherever it is now
    assert main(["train", "--resume", str(moved), "--set", "train.epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert "note: resuming with changes on top of the checkpoint's config: train.epochs=2" in printed
    assert f"resuming {moved} after epoch 1 of 2" in printed
    assert load_checkpoint(moved / "last.pt")["epoch"] == 2 and not out.exists()
