"""Legacy volume inference and evaluation: the paper's procedure, batched, and the report it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference import benchmark_module

import msa2net
from msa2net.data.preprocessing import Preprocessing
from msa2net.data.synapse import CLASS_NAMES
from msa2net.engine.checkpoint import make_checkpoint, save_checkpoint
from msa2net.engine.evaluate import evaluate
from msa2net.engine.inference import predict_image


def _legacy_single_volume(model, volume: np.ndarray, size: int) -> np.ndarray:
    """The authors' test procedure, slice by slice (``benchmarks/legacy_reference.py``)."""
    return benchmark_module("legacy_reference").legacy_single_volume_labels(model, volume, size)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return msa2net.create_model("msa2net_test", num_classes=9, img_size=64).eval()


def test_predict_volume_is_the_legacy_procedure_batched(tiny_model):
    rng = np.random.default_rng(1)
    volume = np.clip(rng.normal(0.5, 0.2, (5, 100, 90)), 0, 1).astype(np.float32)
    reference = _legacy_single_volume(tiny_model, volume, 64)
    for batch in (1, 2, 16):
        labels = msa2net.predict_volume(tiny_model, volume, batch_size=batch)
        assert labels.shape == volume.shape and labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, reference)


def test_predict_image_channel_rules():
    torch.manual_seed(0)
    model = msa2net.create_model("msa2net_test", num_classes=3, in_channels=3, img_size=64).eval()
    rgb = Preprocessing(kind="rgb", in_channels=3)
    grey = np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)
    assert predict_image(model, grey, preprocessing=rgb).shape == (40, 50)  # grey repeated into R, G, B
    colour = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_array_equal(
        predict_image(model, colour, preprocessing=rgb), predict_image(model, grey, preprocessing=rgb)
    )
    grey_model = msa2net.create_model("msa2net_test", num_classes=3, in_channels=1, img_size=64).eval()
    with pytest.raises(ValueError, match="colour image"):
        predict_image(grey_model, colour, preprocessing=Preprocessing(kind="rgb", in_channels=1))


def test_evaluate_writes_the_paper_table_and_honest_metrics(data_synapse_prepared, tiny_model, tmp_path):
    ckpt = make_checkpoint(tiny_model, "msa2net_test", Preprocessing(kind="unit").to_dict(), list(CLASS_NAMES))
    path = tmp_path / "model.pt"
    save_checkpoint(ckpt, path)
    out = tmp_path / "eval"
    report = evaluate(path, data_synapse_prepared, out, device="cpu", progress=False, save_predictions=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_names"] == list(CLASS_NAMES)
    assert summary["n_cases"] == 2 and {r["case_id"] for r in summary["cases"]} == {"case0001", "case0002"}
    row = summary["cases"][0]
    for key in ("dice", "hd95", "hd95_mm", "nsd", "pred_empty", "gt_empty"):
        assert key in row
    assert report["legacy"]["mean_dice"] == pytest.approx(np.mean(list(report["legacy"]["per_class_dice"].values())))
    table = (out / "table.md").read_text()
    assert "| Spl | RKid | LKid | Gal | Liv | Sto | Aor | Pan |" in table and "HD95 in mm" in table
    assert (out / "per_case.csv").is_file() and len(list((out / "overlays").glob("*.png"))) >= 2
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["case0001.nii.gz", "case0002.nii.gz"]
    # the legacy figures are the legacy rules applied to the legacy predictions
    from msa2net.data.synapse import SynapseVolumeDataset
    from msa2net.metrics import legacy_case_metrics

    item = next(iter(SynapseVolumeDataset(data_synapse_prepared, cases=["case0001"])))
    pred = _legacy_single_volume(tiny_model, item.image, 64)
    expected = legacy_case_metrics(pred == 1, item.label == 1)
    got = [r for r in summary["cases"] if r["case_id"] == "case0001" and r["class_name"] == "spleen"][0]
    assert (got["dice"], got["hd95"]) == pytest.approx(expected)


def test_evaluate_a_3d_folder_keeps_geometry(tmp_path, tiny_checkpoint):
    import SimpleITK as sitk

    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    label = np.zeros((3, 40, 36), np.uint8)
    label[:, 10:25, 8:20] = 1
    for arr, sub, name in (
        (label.astype(np.int16) * 300 - 100, "imagesTr", "a_0000.nii.gz"),
        (label, "labelsTr", "a.nii.gz"),
    ):
        img = sitk.GetImageFromArray(arr.astype(np.int16 if sub == "imagesTr" else np.uint8))
        img.SetSpacing((0.7, 0.8, 2.5))
        img.SetOrigin((10.0, -5.0, 3.0))
        sitk.WriteImage(img, str(root / sub / name))
    spec = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(spec))
    ckpt = tiny_checkpoint(["background", "organ"], Preprocessing(kind="ct_window"), tmp_path / "model.pt")
    report = evaluate(ckpt, root, tmp_path / "ev", split="train", device="cpu", progress=False, save_predictions=True)
    assert report["n_cases"] == 1 and report["class_names"] == ["background", "organ"]
    written = sitk.ReadImage(str(tmp_path / "ev" / "predictions" / "a.nii.gz"))
    assert written.GetSpacing() == pytest.approx((0.7, 0.8, 2.5)) and written.GetOrigin() == pytest.approx((10, -5, 3))
    assert sitk.GetArrayFromImage(written).shape == label.shape


def test_evaluate_a_2d_png_folder(tmp_path, tiny_checkpoint):
    from PIL import Image

    root = tmp_path / "png"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(2):
        label = np.zeros((48, 40), np.uint8)
        label[5 + i : 30, 6:22] = 1
        Image.fromarray((label * 200 + 20).astype(np.uint8)).save(root / "imagesTr" / f"c{i}_0000.png")
        Image.fromarray(label).save(root / "labelsTr" / f"c{i}.png")
    spec = {"channel_names": {"0": "grey"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(spec))
    ckpt = tiny_checkpoint(["background", "lesion"], Preprocessing(kind="zscore"), tmp_path / "model.pt")
    report = evaluate(ckpt, root, tmp_path / "ev", split="train", device="cpu", progress=False)
    assert report["n_cases"] == 2 and 0.0 <= report["legacy"]["mean_dice"] <= 1.0
    assert len(list((tmp_path / "ev" / "overlays").glob("*.png"))) == 2


@pytest.mark.parametrize("postprocess", [False, True])
def test_evaluate_isic_pools_pixels(data_isic_raw, tmp_path, postprocess, tiny_checkpoint):
    from msa2net.data.isic import ISICDataset, prepare_isic2018
    from msa2net.reporting.aggregate import PooledBinaryMetrics

    root = tmp_path / "isic"
    prepare_isic2018(data_isic_raw, root, size=(64, 64), progress=False)
    ckpt = tiny_checkpoint(["background", "lesion"], Preprocessing(kind="rgb", in_channels=3), tmp_path / "model.pt")
    report = evaluate(ckpt, root, tmp_path / "ev", device="cpu", progress=False, postprocess=postprocess)
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n_images"] == 5 and summary["settings"]["postprocess"] is postprocess
    assert set(summary["pooled"]) >= {"dsc", "iou", "sensitivity", "specificity", "accuracy"}
    # the pooled figures are those of the model's predictions on the test split, computed independently here
    test = ISICDataset(root, "test")
    model = msa2net.create_model("msa2net_test", num_classes=2, in_channels=3, img_size=64)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    pred = msa2net.predict_volume(model, test.images, preprocessing=Preprocessing(kind="rgb", in_channels=3))
    pooled = PooledBinaryMetrics(postprocess=postprocess)
    for p, g in zip(pred, test.masks):
        pooled.update(p == 1, g == 1)
    expected = pooled.compute()
    assert report["pooled"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert len(list((tmp_path / "ev" / "overlays").glob("*.png"))) == 3


# ---------------------------------------------------------------------------------------------- what is scored


CT_WINDOW = Preprocessing(kind="ct_window")


def _ct_folder(root, labelled_test: bool):
    """A 3D CT dataset folder: training case ``a``, and test case ``t`` (labelled when ``labelled_test``)."""
    import SimpleITK as sitk

    label = np.zeros((3, 40, 36), np.uint8)
    label[:, 10:25, 8:20] = 1
    folders = [("imagesTr", "labelsTr", "a"), ("imagesTs", "labelsTs" if labelled_test else None, "t")]
    for images, labels, case in folders:
        for sub, name, arr in (
            (images, f"{case}_0000.nii.gz", label.astype(np.int16) * 300 - 100),
            (labels, f"{case}.nii.gz", label),
        ):
            if sub is None:
                continue
            (root / sub).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(root / sub / name))
    spec = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_without_labelled_test_cases_evaluate_refuses_or_says_they_are_training_cases(
    tmp_path, capsys, tiny_checkpoint
):
    from msa2net.cli import main

    root = _ct_folder(tmp_path / "ds", labelled_test=False)
    ckpt = tiny_checkpoint(["background", "organ"], Preprocessing(kind="ct_window"), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"no labelled test cases .*--split train"):
        evaluate(ckpt, root, tmp_path / "refused", device="cpu", progress=False)
    assert not (tmp_path / "refused").exists()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(tmp_path / "x")]) == 2
    assert "no labelled test cases" in capsys.readouterr().err

    out = tmp_path / "train"
    args = ["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(out), "--split", "train"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "TRAINING cases" in printed.out and "TRAINING cases" in printed.err  # the table and the warning
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["split"] == "train" and summary["settings"]["training_cases"] == ["a"]
    assert "TRAINING cases" in summary["settings"]["warning"]
    assert "TRAINING cases" in (out / "table.md").read_text()
    assert "TRAINING cases" in (out / "report.html").read_text()


def test_labelled_test_cases_are_scored_by_default_without_a_warning(tmp_path, tiny_checkpoint):
    root = _ct_folder(tmp_path / "ds", labelled_test=True)
    ckpt = tiny_checkpoint(["background", "organ"], Preprocessing(kind="ct_window"), tmp_path / "model.pt")
    summary = evaluate(ckpt, root, tmp_path / "ev", device="cpu", progress=False, overlays_per_case=0, html=False)
    assert summary["settings"]["cases"] == ["t"] and summary["settings"]["split"] == "test"
    assert "warning" not in summary["settings"]
    named = evaluate(ckpt, root, tmp_path / "ev2", cases=["a", "t"], progress=False, overlays_per_case=0, html=False)
    assert named["settings"]["training_cases"] == ["a"]  # named cases are checked too


def test_evaluate_refuses_a_model_of_another_task(tmp_path, capsys, tiny_checkpoint):
    from msa2net.cli import main

    root = _ct_folder(tmp_path / "ds", labelled_test=True)
    common = {"device": "cpu", "progress": False, "overlays_per_case": 0, "html": False}
    other_names = tiny_checkpoint(
        ["background", "tumour"], Preprocessing(kind="ct_window"), tmp_path / "names" / "model.pt"
    )
    with pytest.raises(ValueError, match=r"segments \['background', 'tumour'\] but the data are labelled"):
        evaluate(other_names, root, tmp_path / "a", **common)
    mr_model = tiny_checkpoint(["background", "organ"], Preprocessing(kind="zscore"), tmp_path / "mr" / "model.pt")
    with pytest.raises(ValueError, match=r"robust per-case min-max .* but the data are .*Hounsfield"):
        evaluate(mr_model, root, tmp_path / "b", **common)
    assert main(["evaluate", "--checkpoint", str(mr_model), "--data", str(root), "--out", str(tmp_path / "c")]) == 2
    assert "--allow-mismatched-input" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")  # refused before anything was written
    summary = evaluate(mr_model, root, tmp_path / "d", allow_mismatched_input=True, **common)
    assert summary["settings"]["allow_mismatched_input"] is True
    generic = tiny_checkpoint(
        ["class_0", "class_1"], Preprocessing(kind="ct_window"), tmp_path / "generic" / "model.pt"
    )
    evaluate(generic, root, tmp_path / "e", **common)  # placeholder names say nothing: accepted
    three = tiny_checkpoint(
        ["background", "organ", "x"], Preprocessing(kind="ct_window"), tmp_path / "three" / "model.pt"
    )
    with pytest.raises(ValueError, match="segments 3 classes"):
        evaluate(three, root, tmp_path / "f", allow_mismatched_input=True, **common)


def test_a_run_folder_stands_for_its_best_else_last_checkpoint(tmp_path, tiny_checkpoint):
    from msa2net.engine.checkpoint import CheckpointError, resolve_checkpoint_path

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match="neither a run folder with best.pt or last.pt"):
        resolve_checkpoint_path(run)
    ckpt = tiny_checkpoint(["background", "organ"], Preprocessing(kind="ct_window"), tmp_path / "model.pt")
    (run / "last.pt").write_bytes(ckpt.read_bytes())
    assert resolve_checkpoint_path(run) == run / "last.pt"
    (run / "best.pt").write_bytes(ckpt.read_bytes())
    assert resolve_checkpoint_path(run) == run / "best.pt"
    root = _ct_folder(tmp_path / "ds", labelled_test=True)
    summary = evaluate(run, root, tmp_path / "ev", device="cpu", progress=False, overlays_per_case=0, html=False)
    assert summary["settings"]["checkpoint"] == str(run / "best.pt")


def _figures(summary: dict) -> str:
    """Every figure of a summary (its settings, which say where the masks came from, left out), NaN-safe."""
    return json.dumps({k: v for k, v in summary.items() if k not in ("settings", "title")}, sort_keys=True)


@pytest.mark.parametrize("keep_largest", [None, "all"])
def test_scoring_saved_masks_gives_the_figures_of_the_model_evaluation(tmp_path, tiny_checkpoint, keep_largest):
    from reference import write_liver_folder

    from msa2net import cli
    from msa2net.engine.evaluate import evaluate_predictions

    root = write_liver_folder(tmp_path / "ds")
    ckpt = tiny_checkpoint(["background", "liver", "tumour"], Preprocessing(kind="ct_window"), tmp_path / "m.pt")
    common = {"split": "train", "progress": False, "html": False, "overlays_per_case": 0}
    saved = evaluate(ckpt, root, tmp_path / "saved", device="cpu", save_predictions=True, **common)
    by_model = evaluate(ckpt, root, tmp_path / "model", device="cpu", keep_largest=keep_largest, **common)
    by_masks = evaluate_predictions(
        tmp_path / "saved" / "predictions", tmp_path / "masks", data=root, keep_largest=keep_largest, **common
    )
    assert by_model["n_cases"] == by_masks["n_cases"] == 3
    assert _figures(by_masks) == _figures(by_model)
    assert by_masks["settings"]["keep_largest"] == by_model["settings"]["keep_largest"]
    assert (tmp_path / "masks" / "per_case.csv").read_text() == (tmp_path / "model" / "per_case.csv").read_text()
    if keep_largest is None:
        assert _figures(saved) == _figures(by_model)

    # a bare folder of label files, from the command line, with report.html
    argv = ["evaluate", "--predictions", str(tmp_path / "saved" / "predictions"), "--labels", str(root / "labelsTr"),
            "--classes", "background", "liver", "tumour", "--out", str(tmp_path / "cli")]  # fmt: skip
    assert cli.main(argv + (["--keep-largest", keep_largest] if keep_largest else [])) == 0
    from_cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert _figures(from_cli) == _figures(by_model)
    assert (tmp_path / "cli" / "report.html").is_file()


def test_scoring_masks_names_the_cases_without_one(tmp_path, tiny_checkpoint):
    from reference import write_liver_folder

    from msa2net.engine.evaluate import evaluate_predictions

    root = write_liver_folder(tmp_path / "ds")
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "c1.nii.gz").write_bytes((root / "labelsTr" / "c1.nii.gz").read_bytes())
    with pytest.raises(ValueError, match=r"no mask for 2 of the 3 cases \(c0, c2\)"):
        evaluate_predictions(masks, tmp_path / "out", labels=root / "labelsTr")
    with pytest.raises(ValueError, match="either data .* or labels"):
        evaluate_predictions(masks, tmp_path / "out")
