"""Real data end to end: the AAL lobes on the Colin27 T1 MRI from Debian's mricron-data.

These tests need the package (``apt-get install mricron-data``). Without it they skip with that hint locally; in
CI (``CI`` set in the environment) they fail instead, so that the real route is never silently left out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from msa2net.cli import main
from msa2net.data.aal import INSTALL_HINT, find_raw_dir, prepare_aal
from msa2net.data.folder import validate_folder

#: The lobe of an AAL region is the first digit of its code (written here from the atlas documentation, not
#: imported, so that the prepared labels are checked against an independent reading of the files).
LOBE_OF_DIGIT = {
    2: "frontal",
    3: "insula",
    4: "limbic",
    5: "occipital",
    6: "parietal",
    7: "deep_grey",
    8: "temporal",
    9: "cerebellum",
}
CLASSES = ["background", *LOBE_OF_DIGIT.values()]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require_templates(raw_dir: Path | None = None) -> Path:
    """The templates folder; without it, skip locally (saying how to install it) or fail in CI."""
    try:
        return find_raw_dir(raw_dir)
    except FileNotFoundError as err:
        if _in_ci():
            pytest.fail(f"CI must run the real-data tests, but the package is missing ({INSTALL_HINT}): {err}")
        pytest.skip(f"real-data test: install Debian's mricron-data ({INSTALL_HINT}, as root) to run it")


@pytest.fixture(scope="module")
def aal_raw() -> Path:
    """The installed templates folder (see :func:`_require_templates`)."""
    return _require_templates()


@pytest.fixture(scope="module")
def aal_prepared(aal_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("aal") / "data"
    return out, prepare_aal(out)


def _atlas_lobes(raw: Path) -> tuple[np.ndarray, sitk.Image]:
    """Class ids of the atlas voxels, read independently of msa2net: (Z, Y, X) array and the atlas image."""
    atlas = sitk.ReadImage(str(raw / "aal.nii.gz"))
    lut = np.zeros(256, dtype=np.int64)
    for line in (raw / "aal.nii.txt").read_text().splitlines():
        if line.strip():
            index, _, code = line.split()
            lut[int(index)] = CLASSES.index(LOBE_OF_DIGIT[int(code) // 1000])
    return lut[sitk.GetArrayFromImage(atlas)], atlas


def _lobe_dice(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    return [
        float(
            2
            * np.count_nonzero((pred == c) & (truth == c))
            / max(1, np.count_nonzero(pred == c) + np.count_nonzero(truth == c))
        )
        for c in range(1, len(CLASSES))
    ]


def test_without_the_package_prepare_says_how_to_install_it(tmp_path, capsys):
    empty = tmp_path / "no_templates"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="apt-get install mricron-data"):
        prepare_aal(tmp_path / "out", raw_dir=empty)
    assert not (tmp_path / "out").exists()  # it failed before writing anything
    assert main(["prepare", "aal", "--out", str(tmp_path / "out"), "--raw", str(empty)]) == 2
    assert "apt-get install mricron-data" in capsys.readouterr().err


def test_missing_package_skips_locally_and_fails_in_ci(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install mricron-data"):
        _require_templates(tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the real-data tests"):
        _require_templates(tmp_path)


def test_prepared_folder_is_the_atlas_cut_by_hemisphere(aal_raw, aal_prepared, tmp_path):
    out, summary = aal_prepared
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "T1"} and spec["file_ending"] == ".nii.gz"
    assert spec["labels"] == {name: i for i, name in enumerate(CLASSES)}
    assert {"lobe_mapping", "split", "source"} <= set(spec)
    # MNI space is RAS: the left hemisphere (the training side) lies at x < 0; the rule must say so
    assert (
        "MNI x <= 0 (RAS: the left hemisphere" in spec["split"]["rule"]
        and "MNI x > 0 (the right" in spec["split"]["rule"]
    )
    report = validate_folder(out)
    assert report.cases == [f"aal_left_{k}" for k in range(1, 5)] and report.labelled_test_cases == ["aal_right"]

    lobes, atlas = _atlas_lobes(aal_raw)
    ch2 = sitk.ReadImage(str(aal_raw / "ch2.nii.gz"))
    counts = np.bincount(lobes.ravel(), minlength=len(CLASSES))
    assert summary["voxels"]["total"] == {name: int(counts[i]) for i, name in enumerate(CLASSES)}
    covered = np.zeros(lobes.shape, dtype=np.int64)
    for case in report.cases + report.labelled_test_cases:
        folder = "Ts" if case == "aal_right" else "Tr"
        label = sitk.ReadImage(str(out / f"labels{folder}" / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(out / f"images{folder}" / f"{case}_0000.nii.gz"))
        # the first array axis (index axis z) runs left-right: sagittal slices
        assert abs(label.GetDirection()[2]) == 1.0  # row 0 (world x), column 2 (index axis z)
        # pasted back by geometry alone (nearest neighbour, identity transform), the case is the atlas and the T1
        pasted_label = sitk.GetArrayFromImage(
            sitk.Resample(label, atlas, sitk.Transform(), sitk.sitkNearestNeighbor, 255)
        )
        pasted_image = sitk.GetArrayFromImage(
            sitk.Resample(image, ch2, sitk.Transform(), sitk.sitkNearestNeighbor, 255)
        )
        inside = pasted_label != 255
        np.testing.assert_array_equal(pasted_label[inside], lobes[inside])
        np.testing.assert_array_equal(pasted_image[inside], sitk.GetArrayFromImage(ch2)[inside])
        covered += inside
        # the split: training cases lie at LPS x >= 0 (left and the midline), the test case at x < 0 (right)
        xs = [label.TransformIndexToPhysicalPoint((0, 0, k))[0] for k in range(label.GetSize()[2])]
        assert (min(xs) >= 0) if case != "aal_right" else (max(xs) < 0)
    np.testing.assert_array_equal(covered, 1)  # the cases tile the atlas grid exactly once

    assert prepare_aal(out)["skipped"]  # same source, same slabs: nothing to do
    foreign = tmp_path / "foreign"
    (foreign / "imagesTr").mkdir(parents=True)
    (foreign / "imagesTr" / "mine_0000.nii.gz").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not AAL cases"):
        prepare_aal(foreign)


@pytest.mark.slow
def test_real_route_prepare_train_evaluate_predict(aal_raw, aal_prepared, tmp_path):
    """prepare -> 36 training iterations (3 epochs, 64 x 64) -> evaluate on the right hemisphere -> predict ch2.nii.gz.

    Thresholds come from measurement on a 2-core CPU: this budget gave a mean lobe Dice of 0.47 on the test
    hemisphere (evaluate) and 0.47 on the right half of the whole-head prediction; broken pipelines measured far
    below: the same model slicing the head axially (no re-indexing) 0.05, an untrained model 0.04. The bar, 0.30,
    leaves margin for other CPUs' arithmetic.
    """
    from msa2net.config import load_config
    from msa2net.engine.evaluate import evaluate
    from msa2net.engine.predict import predict_files
    from msa2net.engine.train import train

    data, _ = aal_prepared
    cfg = load_config(
        "aal",
        [
            f"data.root={data}",
            f"out_dir={tmp_path / 'run'}",
            "model.img_size=[64, 64]",
            "train.epochs=3",
            "train.device=cpu",
            "train.progress=false",
        ],
    )
    result = train(cfg)
    assert result["iterations"] == 36
    summary = evaluate(result["last"], data, tmp_path / "eval", device="cpu", progress=False, overlays_per_case=0)
    assert summary["settings"]["cases"] == ["aal_right"]
    assert summary["legacy"]["mean_dice"] > 0.30

    head = aal_raw / "ch2.nii.gz"  # the real file, stored axial-first (RAS): predict re-indexes it to sagittal
    report = predict_files(result["last"], head, tmp_path / "pred", device="cpu", progress=False)
    assert report.ok and report.cases[0]["axis_code"] == "RAS" and report.cases[0]["segmented_as"] == "AIR"
    mask, source = sitk.ReadImage(str(tmp_path / "pred" / "ch2.nii.gz")), sitk.ReadImage(str(head))
    assert mask.GetSize() == source.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), source.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(mask.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetDirection(), source.GetDirection(), atol=1e-6)
    lobes, atlas = _atlas_lobes(aal_raw)
    right = np.array([atlas.TransformIndexToPhysicalPoint((i, 0, 0))[0] < 0 for i in range(atlas.GetSize()[0])])
    pred = sitk.GetArrayFromImage(mask)
    assert np.mean(_lobe_dice(pred[..., right], lobes[..., right])) > 0.30

    # published, the model still slices the head sagittally: voxel for voxel the checkpoint's mask
    assert main(["publish", "--checkpoint", str(tmp_path / "run"), "-o", str(tmp_path / "published")]) == 0
    out = tmp_path / "pred_published"
    assert main(["predict", "-i", str(head), "--model", str(tmp_path / "published"), "-o", str(out)]) == 0
    record = json.loads((out / "predictions.json").read_text())
    assert record["cases"][0]["segmented_as"] == "AIR"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ch2.nii.gz"))), pred)


@pytest.mark.slow
def test_readme_step_by_step_commands_run_as_written(aal_raw, tmp_path, monkeypatch):
    """The README's AAL commands, exactly as written (in a fresh folder), at a budget of 4 training iterations."""
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("or step by step:", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["msa2net", c] for c in ("prepare", "train", "evaluate", "predict")] + [
        ["msa2net", "publish"],
        ["msa2net", "predict"],
    ]
    monkeypatch.chdir(tmp_path)
    budget = ["--set", "train.max_iterations=4", "--set", "model.img_size=[64, 64]"]
    for argv in commands:
        assert main(argv[1:] + (budget if argv[1] == "train" else [])) == 0, argv
    summary = json.loads(Path("runs/aal/eval/summary.json").read_text())
    assert summary["settings"]["cases"] == ["aal_right"] and summary["settings"]["checkpoint"] == "runs/aal/last.pt"
    by_checkpoint, published = Path("runs/aal/predict"), Path("runs/aal/predict_published")
    for folder in (by_checkpoint, published):
        assert json.loads((folder / "predictions.json").read_text())["cases"][0]["segmented_as"] == "AIR"
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(published / "ch2.nii.gz"))),
        sitk.GetArrayFromImage(sitk.ReadImage(str(by_checkpoint / "ch2.nii.gz"))),
    )


@pytest.mark.slow
def test_bench_aal_runs_end_to_end_at_a_tiny_budget(aal_raw, tmp_path):
    """``make bench-aal`` cannot rot: the benchmark script at one epoch of 64 x 64 writes its JSON, the pasted
    right-hemisphere mask lies on the atlas grid, and the bf16 check compared every test voxel with float32."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_aal.py"
    out = tmp_path / "bench"
    sets = ["train.epochs=1", "model.img_size=[64, 64]"]
    command = [sys.executable, str(script), "--out", str(out), "--no-progress", *(f"--set={s}" for s in sets)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "bench_aal.json").read_text())
    assert json.loads(done.stdout) == result
    assert result["iterations"] == 12 and result["test_cases"] == ["aal_right"]
    assert set(result["per_lobe"]) == set(CLASSES[1:])
    pasted = result["pasted_prediction"]
    assert pasted["same_grid_as_aal"] and pasted["zero_outside_test_hemisphere"]
    assert result["whole_head_prediction"]["same_grid_as_input"]
    agreement = result["bf16_agreement"]
    assert agreement["amp"] == "bf16" and agreement["n_cases"] == 1
    assert 0.5 < agreement["identical_fraction"] <= 1.0
    assert set(agreement["per_class_dice_change"]) == set(CLASSES[1:])
    assert set(result["seconds"]) >= {"prepare", "train", "evaluate", "evaluate_bf16_check", "predict_whole_head"}


# ---------------------------------------------------------------------------------------------- bad source files


def _small_raw(
    root: Path, atlas_dtype=np.uint8, origin=(6.0, 4.0, 0.0), table="1 Precentral_L 2001\n2 Precentral_R 2002\n"
):
    """A 12-slice stand-in for the package's three files, laid out as they are (RAS index axes, x = 0 at index 6):
    region 1 (a left one) at x = 5..1 mm, region 2 (a right one) at x = -1..-4 mm."""
    root.mkdir(parents=True, exist_ok=True)
    atlas = np.zeros((6, 8, 12), atlas_dtype)  # (Z, Y, X)
    atlas[1:5, 2:6, 1:6] = 1
    atlas[1:5, 2:6, 7:11] = 2
    t1 = np.random.default_rng(0).normal(100, 20, atlas.shape).astype(np.float32)
    for name, array in (("ch2.nii.gz", t1), ("aal.nii.gz", atlas)):
        image = sitk.GetImageFromArray(array)
        image.SetOrigin(origin)
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        sitk.WriteImage(image, str(root / name))
    (root / "aal.nii.txt").write_text(table)
    return root


def _rewrite_atlas(raw: Path, change) -> None:
    atlas = sitk.ReadImage(str(raw / "aal.nii.gz"))
    sitk.WriteImage(change(atlas), str(raw / "aal.nii.gz"))


def _relabelled(atlas: sitk.Image, mapping: dict[int, int]) -> sitk.Image:
    array = sitk.GetArrayFromImage(atlas)
    out = array.copy()
    for old, new in mapping.items():
        out[array == old] = new
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(atlas)
    return image


def _with_spacing(atlas: sitk.Image) -> sitk.Image:
    atlas.SetSpacing((1.0, 1.0, 2.0))
    return atlas


def test_a_small_stand_in_prepares_as_the_package_does(tmp_path):
    summary = prepare_aal(tmp_path / "out", raw_dir=_small_raw(tmp_path / "raw"), slabs=2)
    assert summary["midline_index"] == 6 and summary["hemisphere_agreement"] == 1.0
    assert summary["slices"] == {"aal_left_1": 4, "aal_left_2": 3, "aal_right": 5}
    assert validate_folder(tmp_path / "out").cases == ["aal_left_1", "aal_left_2"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("1 Precentral_L\n", "line 1: expected 'index name code' (two integers around a name), got '1 Precentral_L'"),
        ("1 Precentral_L 2001\n2 Precentral_R 1002\n", "line 2: code 1002 of Precentral_R is not a 4-digit AAL code"),
        ("1 Precentral_L 2001\n1 Precentral_R 2002\n", "region indices [1] appear more than once"),
        ("\n\n", "no regions listed"),
    ],
)
def test_a_bad_region_table_is_named_with_its_line(tmp_path, table, message):
    raw = _small_raw(tmp_path / "raw", table=table)
    with pytest.raises(ValueError, match="is not an AAL region table") as info:
        prepare_aal(tmp_path / "out", raw_dir=raw, slabs=2)
    assert str(raw / "aal.nii.txt") in str(info.value) and message in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a[:, :, :5], "expected two 3D volumes on one grid"),
        (_with_spacing, "ch2.nii.gz and aal.nii.gz differ in spacing"),
        (lambda a: sitk.Cast(a, sitk.sitkFloat32), "aal.nii.gz holds float32 values; expected integer region labels"),
        (lambda a: _relabelled(a, {2: 3}), "aal.nii.gz holds label values [3] that"),
        (lambda a: _relabelled(a, {1: 2, 2: 1}), "only 0.0% of the voxels of the *_L / *_R regions lie on their side"),
    ],
)
def test_source_files_that_do_not_belong_together_are_refused(tmp_path, change, message):
    raw = _small_raw(tmp_path / "raw")
    _rewrite_atlas(raw, change)
    with pytest.raises(ValueError) as info:
        prepare_aal(tmp_path / "out", raw_dir=raw, slabs=2)
    assert message in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_grid_off_the_midline_and_too_many_slabs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="expected a brain in MNI space that straddles the midline x = 0"):
        prepare_aal(tmp_path / "out", raw_dir=_small_raw(tmp_path / "off", origin=(-1.0, 4.0, 0.0)), slabs=2)
    raw = _small_raw(tmp_path / "raw")
    with pytest.raises(ValueError, match="slabs=8 but the left side has only 7 slices; choose fewer slabs"):
        prepare_aal(tmp_path / "out", raw_dir=raw, slabs=8)
    with pytest.raises(ValueError, match="slabs must be at least 2"):
        prepare_aal(tmp_path / "out", raw_dir=raw, slabs=1)
    assert not (tmp_path / "out").exists()


def test_rerun_with_fewer_slabs_removes_the_stale_cases_and_refuses_foreign_folders(tmp_path):
    raw, out = _small_raw(tmp_path / "raw"), tmp_path / "out"
    prepare_aal(out, raw_dir=raw, slabs=3)
    assert (out / "imagesTr" / "aal_left_3_0000.nii.gz").is_file()
    assert prepare_aal(out, raw_dir=raw, slabs=3)["skipped"] is True
    assert prepare_aal(out, raw_dir=raw, slabs=2)["skipped"] is False
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["aal_left_1.nii.gz", "aal_left_2.nii.gz"]
    assert validate_folder(out).cases == ["aal_left_1", "aal_left_2"]

    (out / "imagesTr" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files that are not AAL cases \(imagesTr/notes.txt\)"):
        prepare_aal(out, raw_dir=raw, slabs=3)
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset.json").write_text('{"name": "someone else\'s"}')
    with pytest.raises(FileExistsError, match="already holds a dataset.json that msa2net prepare aal did not write"):
        prepare_aal(other, raw_dir=raw, slabs=2)
    assert (other / "dataset.json").read_text() == '{"name": "someone else\'s"}'
