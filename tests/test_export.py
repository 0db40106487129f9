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
from msa2net.engine.checkpoint import load_checkpoint, model_from_checkpoint
from msa2net.engine.export import ExportError, export_model
from msa2net.engine.predictor import Predictor

CLASSES = ["background", "a", "b"]
PREP = Preprocessing(kind="ct_window", in_channels=1)


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
    out = exported["config"].parent
    assert {k: p.name for k, p in exported.items()} == {
        "torchscript": "model.ts",
        "onnx": "model.onnx",
        "safetensors": "model.safetensors",
        "config": "config.json",
    }
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.onnx", "model.safetensors",
                                                     "model.ts"]  # fmt: skip
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


def test_the_export_is_a_published_folder_whose_config_records_the_graphs(
    ckpt: dict[str, Any], exported: export_module.ExportResult
) -> None:
    config = json.loads(exported["config"].read_text())
    assert config["format"] == "msa2net-pretrained" and config["model_name"] == "msa2net_test"
    assert config["model_args"] == ckpt["model_args"]
    assert Preprocessing.from_dict(config["preprocessing"]) == PREP
    assert config["class_names"] == CLASSES
    record = config["exports"]
    assert record["files"] == {"torchscript": "model.ts", "onnx": "model.onnx"}
    assert record["input"] == {"name": "image", "shape": ["batch", 1, 64, 64], "dtype": "float32", "layout": "NCHW"}
    assert record["output"]["shape"] == ["batch", 3, 64, 64]
    assert record["onnx"] == {"exporter": "legacy", "opset": export_module.ONNX_OPSET}
    assert record["check"]["batch"] == 2
    assert record["check"]["max_abs_diff"] == exported.differences
    assert record["check"]["tolerance"] == pytest.approx(exported.tolerance)

    restored = load_checkpoint(exported["config"].parent)  # the folder is a model wherever one is taken
    x = torch.zeros(1, 1, 64, 64)
    np.testing.assert_array_equal(_eager(restored, x), _eager(ckpt, x))
    volume = np.random.default_rng(0).normal(0, 100, (2, 40, 40)).astype(np.float32)
    np.testing.assert_array_equal(
        Predictor.from_pretrained(exported["config"].parent).predict(volume).labels,
        Predictor(model_from_checkpoint(ckpt), ckpt).predict(volume).labels,
    )


def test_exporting_a_published_folder_into_itself_keeps_it_and_adds_the_graphs(
    ckpt: dict[str, Any], tmp_path: Path
) -> None:
    from msa2net.engine.publish import publish

    folder = publish(ckpt, tmp_path / "model", keep_largest="a").folder
    before = json.loads((folder / "config.json").read_text())
    export_model(folder, folder, formats=("onnx",))
    after = json.loads((folder / "config.json").read_text())
    assert after["exports"]["files"] == {"onnx": "model.onnx"}
    assert {k: v for k, v in after.items() if k != "exports"} == {k: v for k, v in before.items() if k != "exports"}
    assert after["postprocessing"] == {"keep_largest": ["a"]}
    assert Predictor.from_pretrained(folder).keep_largest == (1,)  # prediction applies the recorded choice
    with pytest.raises(Exception, match="exists and is not empty"):
        export_model(ckpt, folder, formats=("onnx",), check=False)  # another model's folder needs overwrite


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
    assert list(tmp_path.iterdir()) == []  # no folder, no staging folder beside it


def test_bad_arguments(ckpt: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown export formats \['tflite'\]"):
        export_model(ckpt, tmp_path, formats=("onnx", "tflite"))
    with pytest.raises(ValueError, match="atol must be positive"):
        export_model(ckpt, tmp_path, atol=0)
    assert list(tmp_path.iterdir()) == []
