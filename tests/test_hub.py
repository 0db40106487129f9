"""Trained models in the Hugging Face hub layout: save_pretrained/from_pretrained, `msa2net publish` and its model
card, the authors'-checkpoint path, offline hub errors, and `msa2net predict --model` (local folders only)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from PIL import Image

import msa2net
from msa2net.cli import main
from msa2net.config import load_config
from msa2net.data.preprocessing import CT_PREPROCESSING
from msa2net.data.synapse import CLASS_NAMES
from msa2net.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from msa2net.engine.evaluate import evaluate
from msa2net.engine.publish import publish
from msa2net.models import HubUnavailableError, PretrainedError
from msa2net.models.official import _MASAG_NAMES, map_official_key
from msa2net.models.pretrained import build_pretrained_config, read_pretrained
from msa2net.reporting.aggregate import PooledBinaryMetrics
from msa2net.reporting.card import build_model_card
from msa2net.reporting.summary import build_isic_summary

SRC = Path(__file__).resolve().parents[1] / "src"
PUBLISHED_FILES = {"config.json", "model.safetensors", "README.md"}
# 30 degrees about z, anisotropic spacing: geometry that a careless writer would lose
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)
SPACING = (0.8, 0.7, 3.0)
ORIGIN = (-10.0, 20.0, 30.5)


def _randomise_buffers(model: torch.nn.Module, seed: int) -> None:
    """Non-default BatchNorm statistics, so that a round trip that lost buffers would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if buf.is_floating_point() and name.endswith(("running_mean", "running_var")):
                buf.copy_(torch.rand(buf.shape, generator=generator) + 0.5)


def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, data_synapse_prepared: Path) -> Path:
    """A run folder as training leaves it (best.pt of a 9-class msa2net_test at 64x64) plus the real evaluation of
    that checkpoint on the phantom test cases in ``eval/``."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = msa2net.create_model("msa2net_test", num_classes=9, img_size=64)
    _randomise_buffers(model, 0)
    cfg = load_config(
        "synapse",
        [
            "model.name=msa2net_test",
            "model.img_size=[64,64]",
            "train.epochs=5",
            f"data.root={json.dumps(str(data_synapse_prepared))}",
            f"out_dir={json.dumps(str(run))}",
        ],
    )
    ckpt = make_checkpoint(
        model,
        "msa2net_test",
        CT_PREPROCESSING.to_dict(),
        CLASS_NAMES,
        cfg.to_dict(),
        epoch=3,
        iteration=12,
        best_metric=0.4321,
        best_epoch=3,
    )
    save_checkpoint(ckpt, run / "best.pt")
    evaluate(run / "best.pt", data_synapse_prepared, run / "eval", device="cpu", progress=False, overlays_per_case=0)
    return run


@pytest.fixture(scope="module")
def published(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``msa2net publish --checkpoint RUN -o DIR`` of :func:`run_dir`."""
    out = tmp_path_factory.mktemp("published") / "msa2net-synapse-test"
    assert main(["publish", "--checkpoint", str(run_dir), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An int16 HU volume (6 x 40 x 48) with rotated, anisotropic geometry."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :48]
    body = (yy - 20) ** 2 / 16**2 + (xx - 24) ** 2 / 21**2 < 1
    disc = (yy - 16) ** 2 + (xx - 27) ** 2 < 36
    hu = np.where(body, 40, -1000) + np.where(disc, 160, 0)
    volume = (hu[None] + rng.normal(0, 20, size=(6, 40, 48))).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


# ---------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", ["msa2net_test", "msa2net_paper", "msa2net_released"])
def test_save_and_load_give_bit_identical_logits(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = msa2net.create_model(name, num_classes=4, img_size=64).eval()
    _randomise_buffers(model, 1)
    names = ["background", "liver", "spleen", "left kidney"]
    folder = model.save_pretrained(tmp_path / "m", preprocessing=CT_PREPROCESSING.to_dict(), class_names=names)
    assert {p.name for p in folder.iterdir()} == PUBLISHED_FILES
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left beside it

    loaded = msa2net.MSA2Net.from_pretrained(folder)
    assert not loaded.training and loaded.config == model.config
    assert loaded.pretrained_config is not None and loaded.pretrained_config["class_names"] == names
    assert loaded.pretrained_config["model_name"] == name
    own, back = model.state_dict(), loaded.state_dict()
    assert own.keys() == back.keys()
    assert all(own[k].dtype == back[k].dtype and torch.equal(own[k], back[k]) for k in own)
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))

    # a re-save of the loaded model keeps its metadata
    again = loaded.save_pretrained(tmp_path / "again")
    assert json.loads((again / "config.json").read_text()) == json.loads((folder / "config.json").read_text())


def test_save_is_atomic_and_refuses_a_non_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = msa2net.create_model("msa2net_test", num_classes=2, img_size=64)
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(PretrainedError, match=r"not empty.*--overwrite"):
        model.save_pretrained(target)
    assert (target / "notes.txt").read_text() == "keep me"

    import safetensors.torch

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # staging folder removed
    assert [p.name for p in target.iterdir()] == ["notes.txt"]  # the previous folder untouched
    monkeypatch.undo()

    model.save_pretrained(target, overwrite=True)
    assert {p.name for p in target.iterdir()} == PUBLISHED_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_incomplete_or_foreign_folders_are_refused(tmp_path: Path) -> None:
    model = msa2net.create_model("msa2net_test", num_classes=2, img_size=64)
    folder = model.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(PretrainedError, match=r"model\.safetensors missing"):
        msa2net.MSA2Net.from_pretrained(folder)

    other = tmp_path / "transformers"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(PretrainedError, match=r"not an msa2net model config"):
        msa2net.MSA2Net.from_pretrained(other)
    with pytest.raises(PretrainedError, match=r"neither an existing folder nor a hub repo id"):
        msa2net.MSA2Net.from_pretrained(tmp_path / "does" / "not" / "exist")


def _edit_config(folder: Path, edit: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(config)))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "config.json").write_text("[1, 2]"), "config.json holds a list, not a JSON object"),
        (lambda f: (f / "config.json").write_text('{"format": '), "config.json: Expecting value"),
        (
            lambda f: _edit_config(f, lambda c: {**c, "format_version": 99}),
            "config.json has format_version 99; this msa2net reads versions up to",
        ),
        (
            lambda f: _edit_config(f, lambda c: {k: v for k, v in c.items() if k != "class_names"}),
            "config.json lacks the fields ['class_names']; re-publish the model with msa2net",
        ),
        (
            lambda f: _edit_config(f, lambda c: {**c, "model_args": {**c["model_args"], "depth_x": 3}}),
            "found unknown keys ['depth_x']. Was it written by a newer msa2net? Upgrade msa2net.",
        ),
        (
            lambda f: _edit_config(f, lambda c: {**c, "model_args": [1, 2]}),
            "config.json: model_args must be a mapping of",
        ),
        (
            lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:100]),
            "model.safetensors': SafetensorError",
        ),
    ],
)
def test_a_damaged_model_folder_is_refused_naming_the_file(tmp_path: Path, damage: Any, message: str) -> None:
    folder = msa2net.create_model("msa2net_test", num_classes=2, img_size=64).save_pretrained(tmp_path / "m")
    damage(folder)
    with pytest.raises(PretrainedError) as info:
        msa2net.MSA2Net.from_pretrained(folder)
    assert message in str(info.value) and str(folder) in str(info.value)


def test_a_file_given_as_a_model_folder_says_what_a_folder_holds(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"not a folder")
    with pytest.raises(PretrainedError, match=r"model\.pt is a file; a pretrained model is a folder holding"):
        msa2net.MSA2Net.from_pretrained(tmp_path / "model.pt")


# ---------------------------------------------------------------------------------------------- publish and card


def test_publish_run_folder_writes_config_and_a_card_with_the_evaluation(run_dir: Path, published: Path) -> None:
    assert {p.name for p in published.iterdir()} == PUBLISHED_FILES
    assert sorted(p.name for p in published.parent.iterdir()) == [published.name]
    config = json.loads((published / "config.json").read_text())
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    ckpt = load_checkpoint(run_dir / "best.pt")

    assert config["model_name"] == "msa2net_test"
    assert config["model_args"] == ckpt["model_args"]
    assert config["class_names"] == list(CLASS_NAMES)
    assert config["preprocessing"] == CT_PREPROCESSING.to_dict()
    assert config["msa2net_version"] == msa2net.__version__
    prov = config["provenance"]
    assert prov["source"] == "training" and prov["selection"] == "best"
    assert (prov["epoch"], prov["epochs"], prov["best_epoch"]) == (3, 5, 3)
    assert prov["best_validation_mean_dice"] == 0.4321
    assert prov["run_config"] == ckpt["config"]
    assert prov["trained_with_msa2net"] == msa2net.__version__
    assert Path(prov["source_checkpoint"]) == run_dir / "best.pt"
    assert prov["source_sha256"] == hashlib.sha256((run_dir / "best.pt").read_bytes()).hexdigest()
    assert config["evaluation"]["legacy"] == summary["legacy"] and "cases" not in config["evaluation"]

    card = (published / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "msa2net" and meta["pipeline_tag"] == "image-segmentation"
    assert meta["license"] == "mit"
    assert {"medical-imaging", "segmentation", "ct"} <= set(meta["tags"])
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["dice"] == round(100 * summary["legacy"]["mean_dice"], 2)
    assert metrics["hd95"] == round(summary["legacy"]["mean_hd95_voxels"], 2)
    if summary["mm"]["mean_hd95_mm"] is not None:
        assert metrics["hd95_mm"] == round(summary["mm"]["mean_hd95_mm"], 2)
    # every figure of the evaluation tables, as evaluate's table.md shows it
    for organ, dice in summary["legacy"]["per_class_dice"].items():
        assert f"{100 * dice:.2f}" in card, organ
    for organ, hd in summary["mm"]["per_class_hd95_mm"].items():
        assert ("n/a" if hd is None else f"{hd:.2f}") in card, organ
    assert f"| failed | {summary['mm']['n_failed']}/{summary['mm']['n_values']} |" in card
    assert (run_dir / "eval" / "table.md").read_text().strip() in card
    assert "best checkpoint on validation: mean Dice 0.4321 at epoch 3 of 5" in card
    assert "not a medical device" in card and "For research only" in card
    assert "arXiv" in card and "2407.21640" in card and "Kolahi" in card and "BMVC" in card
    assert "| epochs | 3 of 5 planned |" in card and "Synapse multi-organ abdominal CT" in card


def test_publish_refuses_a_non_empty_folder_unless_overwrite(
    run_dir: Path, published: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(published, copy)
    before = (copy / "model.safetensors").read_bytes()
    assert main(["publish", "--checkpoint", str(run_dir / "best.pt"), "-o", str(copy)]) == 2
    assert "not empty" in capsys.readouterr().err
    args = ["publish", "--checkpoint", str(run_dir / "best.pt"), "-o", str(copy), "--overwrite"]
    assert main([*args, "--eval", str(run_dir / "eval" / "summary.json"), "--license", "cc-by-nc-4.0"]) == 0
    assert _front_matter((copy / "README.md").read_text())["license"] == "cc-by-nc-4.0"
    assert (copy / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]

    # a published folder re-published (another licence) keeps its provenance, evaluation and weights
    again = publish(copy, tmp_path / "again", license="apache-2.0")
    old_config, old_state = read_pretrained(copy)
    new_config, new_state = read_pretrained(again.folder)
    assert new_config["license"] == "apache-2.0" and again.notes == []
    assert new_config["provenance"] == old_config["provenance"]
    assert new_config["evaluation"] == old_config["evaluation"] is not None
    assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)


def test_card_of_an_isic_summary_shows_the_pooled_scores() -> None:
    model = msa2net.create_model("msa2net_test", num_classes=2, in_channels=3, img_size=64)
    pooled = PooledBinaryMetrics()
    rng = np.random.default_rng(0)
    gt = rng.random((4, 32, 32)) > 0.6
    pooled.update(gt ^ (rng.random((4, 32, 32)) > 0.9), gt)
    summary = build_isic_summary(pooled, {"model": "msa2net_test", "kind": "isic2018", "data": "isic"}, 4)
    config = build_pretrained_config(
        model,
        preprocessing={"kind": "rgb", "in_channels": 3},
        class_names=["background", "lesion"],
        evaluation=summary,
    )
    card = build_model_card(config, repo_id="someone/msa2net-isic")
    scores = pooled.compute()
    for key in ("dsc", "iou", "sensitivity", "specificity", "accuracy"):
        assert f"{100 * scores[key]:.2f}" in card, key
    metrics = {m["type"]: m["value"] for m in _front_matter(card)["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {k: round(100 * v, 2) for k, v in scores.items()}
    assert "pixels pooled over the 4 test images, without" in card
    assert "--model someone/msa2net-isic" in card and "dermoscop" in card


def _official_key(ours: str) -> str:
    """The authors' name of one of our keys (the inverse of :func:`map_official_key`, for fake official files)."""
    if ours.startswith("encoder.backbone."):
        return "backbone.backbone." + ours[len("encoder.backbone.") :]
    if ours.startswith("decoder.expand3."):
        return "decoder_3.layer_up." + ours[len("decoder.expand3.") :]
    stage, rest = ours.split(".", 2)[1:]
    k = stage[len("stage") :]
    for new, old in (("gate_proj.", "x1_linear."), ("norm.", "ag_attn_norm."), ("expand.", "layer_up.")):
        if rest.startswith(new):
            return f"decoder_{k}.{old}{rest[len(new) :]}"
    if rest.startswith("head."):
        return f"decoder_{k}.last_layer.{rest[len('head.') :]}"
    if rest.startswith("masag."):
        module, param = rest[len("masag.") :].rsplit(".", 1)
        old = {v: o for o, v in _MASAG_NAMES.items()}[module]
        return f"decoder_{k}.ag_attn.{old}.{param}"
    _, index, sub = rest.split(".", 2)  # blocks.<i>.<sub> of an LKA stage
    return f"decoder_{k}.layer_lka_{int(index) + 1}.{sub.replace('mlp.dwconv.', 'mlp.dwconv.dwconv.')}"


def test_publish_authors_checkpoint_records_the_conversion(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = msa2net.create_model("msa2net_paper")  # the authors' setting: 9 classes, 224x224
    _randomise_buffers(model, 3)
    own = model.state_dict()
    official = {}
    for key, value in own.items():
        if key.startswith("decoder.stage2.blocks."):
            _, _, _, index, sub = key.split(".", 4)
            name = f"decoder_2.tran_layer{int(index) + 1}.{sub}"  # paper: DAE-Former blocks in stage 2
        else:
            name = _official_key(key)
        assert map_official_key(name) == key
        official[name] = value
    official["backbone.conv.0.weight"] = torch.zeros(3, 1, 1, 1)  # a module that never runs: dropped
    path = tmp_path / "best_model.pth"
    torch.save({"state_dict": official}, path)

    out = tmp_path / "published"
    result = publish(path, out)
    assert result.checkpoint == path and result.evaluation is None
    config, state = read_pretrained(out)
    assert config["model_name"] == "msa2net_paper" and config["model_args"]["img_size"] == [224, 224]
    assert config["class_names"] == list(CLASS_NAMES)
    prov = config["provenance"]
    assert prov["source"] == "official" and prov["variant_detected"] == "paper"
    assert prov["source_checkpoint"] == str(path)
    assert state.keys() == own.keys() and all(torch.equal(state[k], own[k]) for k in own)
    card = (out / "README.md").read_text()
    assert "Converted from the authors' checkpoint" in card and "variant detected from its keys: `paper`" in card
    assert "No evaluation was attached" in card


# ---------------------------------------------------------------------------------------------- offline hub


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_repo_id_offline_fails_fast_saying_what_to_download(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as info:
        msa2net.MSA2Net.from_pretrained("msa2net-tests/not-published", cache_dir=tmp_path / "cache")
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert "hf download msa2net-tests/not-published --local-dir not-published" in message
    assert "config.json" in message and "model.safetensors" in message and "--model PATH" in message
    assert ("HF_HUB_OFFLINE is set" if "HF_HUB_OFFLINE" in env else "http://127.0.0.1:9") in message


def test_repo_id_in_the_hub_cache_loads_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = msa2net.create_model("msa2net_test", num_classes=2, img_size=64).eval()
    cache = tmp_path / "cache"
    repo = cache / "models--msa2net-tests--cached"
    commit = "0123456789abcdef0123456789abcdef01234567"
    model.save_pretrained(repo / "snapshots" / commit, class_names=["background", "lesion"])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = msa2net.MSA2Net.from_pretrained("msa2net-tests/cached", cache_dir=cache)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(HubUnavailableError, match="not in the hub cache"):
        msa2net.MSA2Net.from_pretrained("msa2net-tests/other", cache_dir=cache, local_files_only=True)


def test_predict_and_publish_with_the_hub_offline_fail_with_instructions(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    start = time.monotonic()
    assert main(["predict", "-i", str(image), "-o", str(tmp_path / "o"), "--model", "msa2net-tests/absent"]) == 2
    err = capsys.readouterr().err
    assert "hf download msa2net-tests/absent" in err and "--model PATH" in err

    out = tmp_path / "folder"
    args = ["publish", "--checkpoint", str(run_dir / "best.pt"), "-o", str(out), "--push", "msa2net-tests/absent"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot upload to 'msa2net-tests/absent'" in err and f"hf upload msa2net-tests/absent {out} ." in err
    assert {p.name for p in out.iterdir()} == PUBLISHED_FILES  # written before the upload was tried
    assert time.monotonic() - start < 20.0


# ---------------------------------------------------------------------------------------------- predict --model


def test_predict_model_folder_nifti_split_preview_volumes(
    run_dir: Path, published: Path, scan: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main(["predict", "-i", str(scan), "-o", str(out), "--model", str(published), "--split"]) == 0
    names = list(CLASS_NAMES[1:])
    assert {p.name for p in out.iterdir()} == {
        "scan.nii.gz",
        "scan",
        "scan_preview.png",
        "scan_volumes.json",
        "predictions.json",
        "report.html",
    }
    assert {p.name for p in (out / "scan").iterdir()} == {f"{n}.nii.gz" for n in names}

    source = sitk.ReadImage(str(scan))
    mask_image = sitk.ReadImage(str(out / "scan.nii.gz"))
    labels = sitk.GetArrayFromImage(mask_image)
    assert labels.shape == (6, 40, 48)
    for image in [mask_image, *(sitk.ReadImage(str(out / "scan" / f"{n}.nii.gz")) for n in names)]:
        assert image.GetSize() == source.GetSize()
        np.testing.assert_allclose(image.GetSpacing(), SPACING, rtol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), DIRECTION, atol=1e-5)
    for class_id, name in enumerate(names, start=1):
        binary = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "scan" / f"{name}.nii.gz")))
        np.testing.assert_array_equal(binary, (labels == class_id).astype(np.uint8))

    volumes = json.loads((out / "scan_volumes.json").read_text())
    assert volumes["unit"] == "ml" and volumes["spacing_mm"] == pytest.approx(SPACING)
    sx, sy, sz = mask_image.GetSpacing()  # as stored (float32 in NIfTI), the mask's voxel volume
    voxel_mm3 = sx * sy * sz
    assert volumes["voxel_volume_mm3"] == pytest.approx(voxel_mm3, rel=1e-12)
    assert list(volumes["classes"]) == names
    for class_id, name in enumerate(names, start=1):
        count = int(np.count_nonzero(labels == class_id))
        assert volumes["classes"][name] == {
            "id": class_id,
            "voxels": count,
            "volume_ml": pytest.approx(count * voxel_mm3 / 1000, rel=1e-12),
        }
    assert sum(v["voxels"] for v in volumes["classes"].values()) == int(np.count_nonzero(labels))

    preview = np.asarray(Image.open(out / "scan_preview.png"))
    assert preview.ndim == 3 and preview.shape[2] == 3 and preview.shape[0] > 40  # the legend is below the slices

    # the published folder segments exactly as the checkpoint it came from
    ref = tmp_path / "ref"
    assert main(["predict", str(scan), "-o", str(ref), "--checkpoint", str(run_dir / "best.pt")]) == 0
    assert {p.name for p in ref.iterdir()} == {"scan.nii.gz", "predictions.json", "report.html"}  # --checkpoint
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(ref / "scan.nii.gz"))), labels)


def test_predict_model_folder_png_and_2d_nifti(published: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    png = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (50, 60), dtype=np.uint8)).save(png)
    flat = sitk.GetImageFromArray(rng.normal(0, 200, (30, 20)).astype(np.int16))
    flat.SetSpacing((0.5, 0.25))
    nifti2d = tmp_path / "slice.nii.gz"
    sitk.WriteImage(flat, str(nifti2d))

    out = tmp_path / "out"
    args = ["predict", str(png), "-i", str(nifti2d), "-o", str(out), "--model", str(published), "--split"]
    args.append("--allow-mismatched-input")  # a CT model given an 8-bit picture: the PNG output path is tested here
    assert main(args) == 0
    labels = np.asarray(Image.open(out / "photo.png"))
    assert labels.shape == (50, 60)
    assert {p.name for p in (out / "photo").iterdir()} == {f"{n}.png" for n in CLASS_NAMES[1:]}
    liver = np.asarray(Image.open(out / "photo" / "liver.png"))
    np.testing.assert_array_equal(liver, (labels == CLASS_NAMES.index("liver")).astype(np.uint8))
    volumes = json.loads((out / "photo_volumes.json").read_text())
    assert volumes["unit"] == "pixels" and volumes["spacing_mm"] is None
    for class_id, name in enumerate(CLASS_NAMES[1:], start=1):
        count = int(np.count_nonzero(labels == class_id))
        assert volumes["classes"][name] == {"id": class_id, "pixels": count, "area_mm2": None}
    assert np.asarray(Image.open(out / "photo_preview.png")).shape[0] > 50

    slice_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "slice.nii.gz")))
    areas = json.loads((out / "slice_volumes.json").read_text())
    assert areas["unit"] == "mm2" and areas["pixel_area_mm2"] == pytest.approx(0.125)
    for class_id, name in enumerate(CLASS_NAMES[1:], start=1):
        count = int(np.count_nonzero(slice_labels == class_id))
        assert areas["classes"][name]["area_mm2"] == pytest.approx(count * 0.125, rel=1e-12)


def test_published_folder_loads_alone_in_a_fresh_process(run_dir: Path, published: Path, tmp_path: Path) -> None:
    """Only the folder (copied away from the run) and the package: no run folder, no checkpoint, no network."""
    alone = tmp_path / "elsewhere" / "model"
    shutil.copytree(published, alone)
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "x.npy", x.numpy())
    code = (
        "import sys, numpy, torch\n"
        "from msa2net import MSA2Net\n"
        "model = MSA2Net.from_pretrained(sys.argv[1])\n"
        "with torch.inference_mode():\n"
        "    logits = model(torch.from_numpy(numpy.load(sys.argv[2])))\n"
        "numpy.save(sys.argv[3], logits.numpy())\n"
        "print(model.pretrained_config['class_names'][5])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
    env.update(PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", code, str(alone), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        cwd=tmp_path / "elsewhere",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "liver"
    model = model_from_checkpoint(load_checkpoint(run_dir / "best.pt"))
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
    # the engine reads a published folder wherever it takes a checkpoint
    ckpt = load_checkpoint(alone)
    assert ckpt["class_names"] == list(CLASS_NAMES) and ckpt["pretrained"]["provenance"]["selection"] == "best"


# ---------------------------------------------------------------------------------------------- what prediction needs


def test_publish_keeps_the_slice_orientation_so_the_folder_segments_as_its_checkpoint(
    scan: Path, tmp_path: Path
) -> None:
    """A model trained on sagittal slices (axis code AIR) must re-slice an axial scan (LPS) the same way whether it
    is given as its checkpoint or as its published folder (or a re-save of that folder)."""
    torch.manual_seed(1)
    model = msa2net.create_model("msa2net_test", num_classes=9, img_size=64)
    _randomise_buffers(model, 1)
    ckpt = make_checkpoint(model, "msa2net_test", CT_PREPROCESSING.to_dict(), CLASS_NAMES, slice_orientation="AIR")
    save_checkpoint(ckpt, tmp_path / "model.pt")
    folder = tmp_path / "published"
    publish(tmp_path / "model.pt", folder)
    assert json.loads((folder / "config.json").read_text())["slice_orientation"] == "AIR"
    loaded = msa2net.MSA2Net.from_pretrained(folder)
    assert loaded.pretrained_config["slice_orientation"] == "AIR"
    loaded.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["slice_orientation"] == "AIR"

    masks = {}
    for flag, source in [("--checkpoint", tmp_path / "model.pt"), ("--model", folder), ("--model", "resaved")]:
        out = tmp_path / f"out_{len(masks)}"
        path = tmp_path / source if isinstance(source, str) else source
        assert main(["predict", "-i", str(scan), "-o", str(out), flag, str(path), "--no-html"]) == 0
        case = json.loads((out / "predictions.json").read_text())["cases"][0]
        assert (case["axis_code"], case["segmented_as"]) == ("LPS", "AIR")
        masks[str(path)] = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "scan.nii.gz")))
    first, *rest = masks.values()
    for other in rest:
        np.testing.assert_array_equal(other, first)


def test_a_published_folder_of_the_first_format_warns_that_it_lacks_the_orientation(
    published: Path, tmp_path: Path
) -> None:
    from msa2net.engine.checkpoint import LegacyModelWarning

    old = tmp_path / "old"
    shutil.copytree(published, old)
    config = json.loads((old / "config.json").read_text())
    del config["slice_orientation"]
    config["format_version"] = 1
    (old / "config.json").write_text(json.dumps(config))
    with pytest.warns(LegacyModelWarning, match=r"did not record the plane .*msa2net publish --checkpoint"):
        ckpt = load_checkpoint(old)
    assert ckpt["slice_orientation"] is None
    config["format_version"] = 2  # a current folder must carry the field (null for 2D models)
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"lacks the fields \['slice_orientation'\]"):
        load_checkpoint(old)


def test_published_files_share_one_mode(published: Path) -> None:
    modes = {p.name: p.stat().st_mode & 0o777 for p in published.iterdir()}
    assert len(set(modes.values())) == 1, modes
