"""Checkpoint files: the one weights reader, unwrapping, and metadata checked against the weights on load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from msa2net.data.preprocessing import Preprocessing
from msa2net.engine.checkpoint import (
    MODEL_ARGS,
    CheckpointError,
    check_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from msa2net.models.weights_io import WeightsFileError, read_weights_file, unwrap_state_dict

CLASSES = ["background", "a", "b"]


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> dict[str, Any]:
    return tiny_checkpoint(CLASSES, Preprocessing(kind="ct_window"))


def _saved(ckpt: dict[str, Any], tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "model.pt"
    save_checkpoint({**ckpt, **changes}, path)
    return path


# ----------------------------------------------------------------------------------------------
# Reading and unwrapping
# ----------------------------------------------------------------------------------------------


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:  # would run code on an unsafe load
        return (print, ("pickled code ran",))


def test_read_weights_file_torch_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    from_torch = read_weights_file(tmp_path / "w.pth")
    assert from_torch["epoch"] == 3 and torch.equal(from_torch["state_dict"]["w"], state["w"])
    from_st = read_weights_file(tmp_path / "w.safetensors")
    assert sorted(from_st) == ["b", "w"] and torch.equal(from_st["w"], state["w"])


def test_read_weights_file_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload()}, evil)
    with pytest.raises(WeightsFileError, match=r"evil\.pth.*only loads weights-only files"):
        read_weights_file(evil)
    assert "pickled code ran" not in capsys.readouterr().out
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(evil.read_bytes()[:40])
    with pytest.raises(WeightsFileError, match=r"truncated\.pth.*truncated"):
        read_weights_file(truncated)
    with pytest.raises(WeightsFileError, match=r"absent\.pth' does not exist"):
        read_weights_file(tmp_path / "absent.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsFileError, match=r"list\.pth' holds a list"):
        read_weights_file(tmp_path / "list.pth")


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "state_dict_ema"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_unwrap_state_dict(wrapper: str | None, prefix: str) -> None:
    state = {f"{prefix}encoder.w": torch.ones(2), f"{prefix}head.b": torch.zeros(1)}
    obj: dict[str, Any] = state if wrapper is None else {wrapper: state, "epoch": 7}
    unwrapped = unwrap_state_dict(obj)
    assert sorted(unwrapped) == ["encoder.w", "head.b"]
    assert torch.equal(unwrapped["encoder.w"], torch.ones(2))


def test_unwrap_state_dict_keeps_a_partial_module_prefix_and_refuses_non_tensors() -> None:
    mixed = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert sorted(unwrap_state_dict(mixed)) == ["b", "module.a"]
    with pytest.raises(WeightsFileError, match=r"x\.pth.*non-tensor entries \['epoch'\]"):
        unwrap_state_dict({"w": torch.zeros(1), "epoch": 3}, "'x.pth'")
    with pytest.raises(WeightsFileError, match="holds no state dict"):
        unwrap_state_dict({"state_dict": {}})


def test_the_three_loaders_share_the_reader(tmp_path: Path, ckpt: dict[str, Any]) -> None:
    from msa2net.models import EncoderWeightsError, OfficialCheckpointError, load_official_weights

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload()}, evil)
    for error, load in (
        (CheckpointError, lambda: load_checkpoint(evil)),
        (OfficialCheckpointError, lambda: load_official_weights(model_from_checkpoint(ckpt), evil)),
        (EncoderWeightsError, lambda: model_from_checkpoint(ckpt).encoder.load_pretrained(evil)),
    ):
        with pytest.raises(error, match=r"evil\.pth.*only loads weights-only files"):
            load()


def test_load_checkpoint_round_trip(tmp_path: Path, ckpt: dict[str, Any]) -> None:
    # .safetensors files of the first export format: tests/test_legacy_artifacts.py
    loaded = load_checkpoint(_saved(ckpt, tmp_path))
    assert loaded["class_names"] == CLASSES and loaded["model_args"] == ckpt["model_args"]
    x = torch.zeros(1, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model_from_checkpoint(loaded)(x), model_from_checkpoint(ckpt)(x))


# ----------------------------------------------------------------------------------------------
# Metadata against weights
# ----------------------------------------------------------------------------------------------


def test_unknown_model_args_key_is_named(tmp_path: Path, ckpt: dict[str, Any]) -> None:
    args = {**ckpt["model_args"], "num_clases": 3}
    expected = r"model_args has unknown keys \['num_clases'\]; valid keys are " + re.escape(str(list(MODEL_ARGS)))
    with pytest.raises(CheckpointError, match=r"model\.pt'.*" + expected):
        load_checkpoint(_saved(ckpt, tmp_path, model_args=args))
    with pytest.raises(CheckpointError, match="num_clases"):
        model_from_checkpoint({**ckpt, "model_args": args})  # a dict given directly (predict, export)
    assert set(MODEL_ARGS) == {"variant", "num_classes", "in_channels", "img_size", "encoder"}


def test_class_names_must_match_the_weights(tmp_path: Path, ckpt: dict[str, Any]) -> None:
    names = ["background", "a", "b", "c"]
    message = r"class_names lists 4 classes but the weights have 3 \(decoder\.stage0\.head\.weight has 3 rows\)"
    with pytest.raises(CheckpointError, match=r"model\.pt'.*" + message):
        load_checkpoint(_saved(ckpt, tmp_path, class_names=names))
    with pytest.raises(CheckpointError, match=message):
        model_from_checkpoint({**ckpt, "class_names": names})
    with pytest.raises(CheckpointError, match="lists 2 classes but the weights have 3"):
        model_from_checkpoint({**ckpt, "class_names": names[:2]})


def test_num_classes_must_match_the_weights(ckpt: dict[str, Any]) -> None:
    args = {**ckpt["model_args"], "num_classes": 5}
    with pytest.raises(CheckpointError, match=r"model_args\.num_classes is 5 but the weights have 3 classes"):
        model_from_checkpoint({**ckpt, "model_args": args})


def test_preprocessing_channels_must_match_the_model(tmp_path: Path, ckpt: dict[str, Any]) -> None:
    prep = Preprocessing(kind="rgb", in_channels=3).to_dict()
    message = r"preprocessing\.in_channels is 3 but model_args\.in_channels is 1"
    with pytest.raises(CheckpointError, match=r"model\.pt'.*" + message):
        load_checkpoint(_saved(ckpt, tmp_path, preprocessing=prep))
    with pytest.raises(CheckpointError, match=message):
        model_from_checkpoint({**ckpt, "preprocessing": prep})


def test_a_consistent_checkpoint_passes(ckpt: dict[str, Any]) -> None:
    check_checkpoint(ckpt)  # raises on any disagreement
    model = model_from_checkpoint(ckpt)
    assert model.num_classes == len(CLASSES) and model.config.in_channels == 1
