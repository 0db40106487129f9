"""export_model: TorchScript and ONNX graphs give the eager logits, and a mismatch or failure is an ExportError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch

from msa2net.data.preprocessing import Preprocessing
from msa2net.engine import export as export_module
from msa2net.engine.checkpoint import load_safetensors_checkpoint, model_from_checkpoint
from msa2net.engine.export import ExportError, export_model

CLASSES = ["background", "a", "b"]
PREP = Preprocessing(kind="ct_window", in_channels=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> dict[str, Any]:
    return tiny_checkpoint(CLASSES, PREP)


@pytest.fixture(scope="module")
def exported(ckpt: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> export_module.ExportResult:
    return export_model(ckpt, tmp_path_factory.mktemp("export"))


def _eager(ckpt: dict[str, Any], x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model_from_checkpoint(ckpt)(x).numpy()


def test_export_writes_every_file_and_measures_parity(exported: export_module.ExportResult) -> None:
    out = exported["json"].parent
    assert {k: p.name for k, p in exported.items()} == {
        "torchscript": "model.ts",
        "onnx": "model.onnx",
        "safetensors": "model.safetensors",
        "json": "model.json",
    }
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx", "model.safetensors", "model.ts"]
    assert exported.onnx_exporter == "legacy"
    assert set(exported.differences) == {"torchscript", "onnx"}
    assert all(0 <= d <= exported.tolerance for d in exported.differences.values())
    assert exported.tolerance >= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_graphs_match_eager_at_another_batch(ckpt: dict[str, Any], exported: export_module.ExportResult) -> None:
    # batch 3: neither the tracing batch (1) nor the check batch (2), so the batch axis is truly free
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    eager = _eager(ckpt, x)
    scale = max(1.0, float(np.abs(eager).max()))
    traced = torch.jit.load(str(exported["torchscript"]))
    with torch.inference_mode():
        np.testing.assert_allclose(traced(x).numpy(), eager, atol=1e-4 * scale, rtol=0)
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and session.get_inputs()[0].shape[0] == "batch"
    (logits,) = session.run(None, {"image": x.numpy()})
    assert logits.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(logits, eager, atol=1e-4 * scale, rtol=0)
    assert not np.allclose(eager, eager.mean()), "constant logits would make this comparison meaningless"


def test_model_json_and_safetensors(ckpt: dict[str, Any], exported: export_module.ExportResult) -> None:
    card = json.loads(exported["json"].read_text())
    assert card["model_name"] == "msa2net_test"
    assert card["model_args"] == ckpt["model_args"]
    assert Preprocessing.from_dict(card["preprocessing"]) == PREP
    assert card["class_names"] == CLASSES
    assert card["input"] == {"name": "image", "shape": ["batch", 1, 64, 64], "dtype": "float32", "layout": "NCHW"}
    assert card["output"]["shape"] == ["batch", 3, 64, 64]
    assert card["onnx"] == {"exporter": "legacy", "opset": export_module.ONNX_OPSET}
    assert card["check"]["batch"] == 2
    assert card["check"]["max_abs_diff"] == exported.differences
    assert card["check"]["tolerance"] == pytest.approx(exported.tolerance)

    restored = load_safetensors_checkpoint(exported["safetensors"])
    x = torch.zeros(1, 1, 64, 64)
    np.testing.assert_array_equal(_eager(restored, x), _eager(ckpt, x))


def test_mismatch_raises_and_leaves_no_files(
    ckpt: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export_module._onnx_logits

    def off_by_a_bit(path: Path, x: torch.Tensor) -> np.ndarray:
        return real(path, x) + np.float32(0.01)

    monkeypatch.setitem(export_module._RUNNERS, "onnx", off_by_a_bit)
    with pytest.raises(ExportError, match=r"onnx export differs from the eager model: max \|logit difference\| 0\.01"):
        export_model(ckpt, tmp_path, formats=("onnx",))
    assert list(tmp_path.iterdir()) == []  # neither the files nor the staging folder

    # the same difference passes a tolerance that allows it
    result = export_model(ckpt, tmp_path, formats=("onnx",), atol=0.01)
    assert result.differences["onnx"] == pytest.approx(0.01, abs=1e-4)
    assert "torchscript" not in result


def test_onnx_exporter_failure_is_an_export_error(
    ckpt: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []

    def legacy_broken(*args: Any, dynamo: bool, **kwargs: Any) -> None:
        calls.append(dynamo)
        raise RuntimeError("legacy exporter removed")

    monkeypatch.setattr(torch.onnx, "export", legacy_broken)
    message = r"ONNX export failed \(legacy.*RuntimeError: legacy exporter removed.*formats=\('torchscript',\)"
    with pytest.raises(ExportError, match=message):
        export_model(ckpt, tmp_path / "failed", formats=("onnx",), check=False)
    assert calls == [False]  # the dynamo exporter, which fails on this model, is not tried
    assert list((tmp_path / "failed").iterdir()) == []


def test_bad_arguments(ckpt: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown export formats \['tflite'\]"):
        export_model(ckpt, tmp_path, formats=("onnx", "tflite"))
    with pytest.raises(ValueError, match="atol must be positive"):
        export_model(ckpt, tmp_path, atol=0)
    assert list(tmp_path.iterdir()) == []
