"""ONNX Runtime and OpenVINO behind the Predictor: labels against torch, the conversion cache, graphs taken from the
published folder, int8 export behind its agreement gate, and a clear error without the extra."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
from reference import write_liver_folder

from msa2net.data.preprocessing import Preprocessing
from msa2net.engine import backends, export, quantize
from msa2net.engine.backends import BackendError
from msa2net.engine.evaluate import evaluate
from msa2net.engine.export import export_model
from msa2net.engine.predictor import Predictor

CLASSES = ["background", "liver", "tumour"]
CT = Preprocessing(kind="ct_window", in_channels=1)

pytestmark = pytest.mark.openvino


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSA2NET_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> dict:
    return tiny_checkpoint(CLASSES, CT, seed=2)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.normal(0, 120, (3, 48, 56)) + np.where(rng.random((3, 48, 56)) > 0.6, 150, -40)).astype(np.int16)


def test_float32_runtimes_give_the_torch_labels_and_convert_once(ckpt, volume, monkeypatch) -> None:
    reference = Predictor.from_pretrained(ckpt).predict(volume).labels
    assert len(np.unique(reference)) > 1
    for backend in ("onnxruntime", "openvino"):
        labels = Predictor.from_pretrained(ckpt, backend=backend).predict(volume).labels
        np.testing.assert_array_equal(labels, reference)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of using the cache")

    monkeypatch.setattr(backends, "convert_openvino", no_conversion)
    monkeypatch.setattr(backends, "export_onnx", no_conversion)
    for backend in ("onnxruntime", "openvino"):
        np.testing.assert_array_equal(
            Predictor.from_pretrained(ckpt, backend=backend).predict(volume).labels, reference
        )


def test_openvino_bf16_agrees_with_float32_and_is_recorded_by_evaluate(ckpt, tmp_path) -> None:
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 (AVX512-BF16 or AMX)")
    root = write_liver_folder(tmp_path / "ds")
    common = {"split": "train", "device": "cpu", "progress": False, "html": False, "overlays_per_case": 0}
    common["compare_fp32"] = True
    summary = evaluate(ckpt, root, tmp_path / "ev", backend="openvino", precision="bf16", **common)
    check = summary["settings"]["amp_check"]
    assert check["backend"] == "openvino-bf16" and check["reference"] == "torch-fp32" and check["n_cases"] == 3
    assert 0.9 < check["identical_fraction"] <= 1.0  # untrained weights: near-tied logits everywhere
    exact = evaluate(ckpt, root, tmp_path / "ev32", backend="openvino", precision="fp32", **common)
    assert exact["settings"]["amp_check"]["identical_fraction"] == 1.0


def test_export_writes_the_openvino_graph_which_the_backend_loads_without_converting(
    ckpt, volume, tmp_path, monkeypatch
):
    result = export_model(ckpt, tmp_path / "model", formats=("onnx",), openvino=True)
    config = json.loads(result["config"].read_text())
    assert config["exports"]["openvino"]["fp32"] == "openvino/model.xml"
    assert config["exports"]["check"]["max_abs_diff"]["openvino"] <= config["exports"]["check"]["tolerance"]
    assert (tmp_path / "model" / "openvino" / "model.bin").is_file()
    monkeypatch.setattr(backends, "convert_openvino", lambda *a, **k: pytest.fail("converted despite the folder"))
    monkeypatch.setattr(backends, "export_onnx", lambda *a, **k: pytest.fail("exported despite the folder"))
    reference = Predictor.from_pretrained(ckpt).predict(volume).labels
    for backend in ("openvino", "onnxruntime"):
        labels = Predictor.from_pretrained(tmp_path / "model", backend=backend).predict(volume).labels
        np.testing.assert_array_equal(labels, reference)
    assert not (tmp_path / "cache").exists()
    with pytest.raises(BackendError, match="no int8 model .* msa2net export .* --int8"):
        Predictor.from_pretrained(tmp_path / "model", backend="openvino", precision="int8")


def test_int8_is_published_only_through_its_agreement_gate(ckpt, volume, tmp_path, monkeypatch, capsys) -> None:
    import nncf

    root = write_liver_folder(tmp_path / "ds")
    monkeypatch.setitem(quantize.GATE, "min_identical_fraction", 1.01)  # no model can pass: refused, nothing written
    scopes = []  # the gate's logic over every candidate; NNCF itself (seconds per candidate) runs once, below

    def float_graph(graph, dataset, *, ignored_scope=None, **options):
        scopes.append(None if ignored_scope is None else ignored_scope.patterns)
        return graph

    with monkeypatch.context() as patch:
        patch.setattr(nncf, "quantize", float_graph)
        with pytest.raises(quantize.QuantizationError, match=r"transformer-rules: .*% identical.*head: .*decoder: "):
            export_model(ckpt, tmp_path / "refused", formats=("onnx",), int8_calibration=root, calibration_count=8)
    assert scopes == [None, quantize.KEEP_FLOAT["head"], quantize.KEEP_FLOAT["decoder"]]
    assert not (tmp_path / "refused").exists()

    monkeypatch.setitem(quantize.GATE, "min_identical_fraction", 0.0)
    monkeypatch.setitem(quantize.GATE, "max_dice_drop", 1.0)
    capsys.readouterr()
    result = export_model(ckpt, tmp_path / "int8", formats=("onnx",), int8_calibration=root, calibration_count=8)
    printed = capsys.readouterr()
    assert "Statistics collection" in printed.err and "Statistics collection" not in printed.out  # NNCF's bars
    record = json.loads(result["config"].read_text())["exports"]["openvino"]["int8"]
    assert record["kept_float"] == "transformer-rules" and record["calibration"]["slices"] == 8
    assert record["agreement"]["n_cases"] == 3 and set(record["agreement"]["per_class_dice_change"]) == {
        "liver",
        "tumour",
    }
    card = (tmp_path / "int8" / "README.md").read_text()
    assert "OpenVINO int8" in card and f"{100 * record['agreement']['identical_fraction']:.3f} % identical" in card
    labels = Predictor.from_pretrained(tmp_path / "int8", backend="openvino", precision="int8").predict(volume).labels
    assert labels.shape == volume.shape

    from msa2net.engine.publish import publish

    fake = tmp_path / "model-int8.xml"
    fake.write_text("<net/>")
    with pytest.raises(ValueError, match="only with its agreement"):
        publish(ckpt, tmp_path / "no_figures", extra_files={"openvino/model-int8.xml": fake})


def test_a_missing_extra_says_how_to_install_it(ckpt, monkeypatch) -> None:
    real_import = builtins.__import__

    def without_openvino(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_openvino)
    with pytest.raises(BackendError, match=r"pip install 'msa2net\[openvino\]'"):
        Predictor.from_pretrained(ckpt, backend="openvino")
    with pytest.raises(BackendError, match="onnxruntime backend offers precision fp32, not 'int8'"):
        Predictor.from_pretrained(ckpt, backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="amp is torch autocast"):
        Predictor.from_pretrained(ckpt, backend="openvino", amp="bf16")
    assert export.FORMATS == ("torchscript", "onnx")
