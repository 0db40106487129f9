"""Mixed precision that users can trust: agreement of bf16 labels with float32 ones, for a volume and in evaluate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import msa2net
from msa2net.cli import build_parser
from msa2net.data.preprocessing import Preprocessing
from msa2net.data.synapse import CLASS_NAMES
from msa2net.engine.checkpoint import make_checkpoint, save_checkpoint
from msa2net.engine.evaluate import evaluate
from msa2net.engine.inference import AmpCheck, amp_agreement, predict_volume
from msa2net.metrics import label_agreement, legacy_case_metrics


def test_label_agreement_by_hand() -> None:
    full = np.zeros((2, 4, 4), dtype=np.int64)
    full[0, :2, :2] = 1  # 4 voxels of class 1
    full[1, 2:, 2:] = 2  # 4 voxels of class 2
    mixed = full.copy()
    mixed[0, 0, 0] = 0  # one voxel of class 1 lost
    gt = full.copy()
    out = label_agreement(mixed, full, 4, gt_labels=gt, class_names=["a", "b", "c"])
    assert out["n_voxels"] == 32 and out["n_different"] == 1 and out["identical_fraction"] == 31 / 32
    assert out["per_class"]["a"] == {"agreement_dice": 2 * 3 / 7, "dice_change": 2 * 3 / 7 - 1.0}
    assert out["per_class"]["b"] == {"agreement_dice": 1.0, "dice_change": 0.0}
    assert math.isnan(out["per_class"]["c"]["agreement_dice"]) and out["per_class"]["c"]["dice_change"] == 0.0
    assert "dice_change" not in label_agreement(mixed, full, 4)["per_class"]["class_1"]
    with pytest.raises(ValueError, match="same shape"):
        label_agreement(mixed, full[:1], 4)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return msa2net.create_model("msa2net_test", num_classes=9, img_size=64).eval()


def test_amp_agreement_of_a_volume(tiny_model) -> None:
    rng = np.random.default_rng(0)
    volume = np.clip(rng.normal(0.5, 0.2, (4, 80, 70)), 0, 1).astype(np.float32)
    label = rng.integers(0, 9, size=volume.shape)
    mixed, report = amp_agreement(tiny_model, volume, amp="bf16", label=label, batch_size=2)
    np.testing.assert_array_equal(mixed, predict_volume(tiny_model, volume, amp="bf16"))
    full = predict_volume(tiny_model, volume)
    assert report["amp"] == "bf16"
    assert report["identical_fraction"] == pytest.approx(np.mean(mixed == full))
    for c in range(1, 9):
        row = report["per_class"][f"class_{c}"]
        expected = legacy_case_metrics(mixed == c, label == c)[0] - legacy_case_metrics(full == c, label == c)[0]
        assert row["dice_change"] == pytest.approx(expected, abs=1e-15)
    with pytest.raises(ValueError, match="bf16"):
        amp_agreement(tiny_model, volume, amp="fp32")


def test_evaluate_records_the_bf16_agreement(data_synapse_prepared, tiny_model, tmp_path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(
        make_checkpoint(tiny_model, "msa2net_test", Preprocessing(kind="unit").to_dict(), list(CLASS_NAMES)), path
    )
    out = tmp_path / "eval"
    common = {"device": "cpu", "progress": False, "overlays_per_case": 0}
    report = evaluate(path, data_synapse_prepared, out, amp="bf16", compare_fp32=True, **common)
    check = json.loads((out / "summary.json").read_text())["settings"]["amp_check"]
    assert check["amp"] == "bf16" and check["reference"] == "fp32" and check["n_cases"] == 2
    assert 0.0 <= check["identical_fraction"] <= 1.0
    assert set(check["per_class_dice_change"]) == set(CLASS_NAMES[1:])
    assert [row["case_id"] for row in check["per_case"]] == ["case0001", "case0002"]
    assert check["mean_dice_change"] == pytest.approx(np.mean(list(check["per_class_dice_change"].values())))
    # the reported scores are those of the bf16 run
    plain = evaluate(path, data_synapse_prepared, tmp_path / "plain", amp="bf16", **common)
    assert report["legacy"] == plain["legacy"] and "amp_check" not in plain["settings"]
    with pytest.raises(ValueError, match="mixed-precision"):
        evaluate(path, data_synapse_prepared, tmp_path / "x", compare_fp32=True, **common)


def test_amp_check_accumulates_over_cases() -> None:
    check = AmpCheck(["background", "a"], "bf16")
    same = np.array([[0, 1], [1, 1]])
    check.add("one", same, same, same)
    check.add("two", np.zeros_like(same), same, same)
    assert check.record["n_cases"] == 2 and check.record["identical_fraction"] == pytest.approx(5 / 8)
    assert check.record["per_class_dice_change"] == {"a": pytest.approx(-0.5)}
    assert check.record["per_class_agreement_dice"] == {"a": pytest.approx(0.5)}  # case two: one mask empty, 0
    with pytest.raises(ValueError, match="mixed-precision"):
        AmpCheck(["background", "a"], None)


def test_cli_amp_check_option() -> None:
    args = build_parser().parse_args(
        ["evaluate", "--checkpoint", "c.pt", "--data", "d", "--amp", "bf16", "--amp-check"]
    )
    assert args.amp_check is True and args.amp == "bf16"
    assert build_parser().parse_args(["evaluate", "--checkpoint", "c.pt", "--data", "d"]).amp_check is False
