"""MONAI bundle export: MONAI's own runner segments a NIfTI volume with the bundle, in a process that cannot import
msa2net and cannot reach the network, and gives msa2net predict's labels in the input's geometry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from msa2net.cli import main
from msa2net.data.preprocessing import Preprocessing
from msa2net.engine.monai_bundle import (
    METADATA_SCHEMA_FILE,
    METADATA_SCHEMA_URL,
    MonaiBundleError,
    SliceResizeModel,
    _nearest,
    _spline_matrix,
    write_monai_bundle,
)
from msa2net.engine.predictor import Predictor

CLASSES = ["background", "liver", "spleen", "kidney"]
PREP = Preprocessing(kind="ct_window", in_channels=1)
ORIENTATION = "LPS"  # the volume below is stored otherwise, so the bundle must re-index it as msa2net does

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
]

#: Runs ``python -m monai.bundle ...`` (arguments after ``-c CODE``) where ``import msa2net`` fails and no socket can
#: connect. The virtualenv may hold msa2net as an editable install (a .pth file on sys.path that ``-I`` does not
#: skip), so a meta-path finder refuses the package by name; ``-I`` drops PYTHONPATH and the current folder.
ISOLATED = """
import runpy, socket, sys

class NoMsa2net:
    def find_spec(self, name, path=None, target=None):
        if name == "msa2net" or name.startswith("msa2net."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the bundle must run without msa2net)")
        return None

def no_network(*args, **kwargs):
    raise OSError("network access is disabled in this test")

sys.meta_path.insert(0, NoMsa2net())
socket.socket.connect = no_network
socket.create_connection = no_network
if sys.argv[1:2] == ["--check-isolation"]:
    try:
        import msa2net  # noqa: F401
    except ModuleNotFoundError:
        print("msa2net not importable")
    sys.exit(0)
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


def _isolated(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-I", "-c", ISOLATED, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def model_file(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return tiny_checkpoint(CLASSES, PREP, path, seed=3, slice_orientation=ORIENTATION)


@pytest.fixture(scope="module")
def bundle(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "msa2net_bundle"
    assert main(["export", "--checkpoint", str(model_file), "--monai-bundle", str(out)]) == 0
    return out


def _volume(path: Path) -> sitk.Image:
    """A real-valued CT-like volume (float32 HU with noise and a bright disc), stored with a permuted direction."""
    rng = np.random.default_rng(0)
    z, y, x = 9, 47, 58
    array = rng.normal(40.0, 120.0, (z, y, x)).astype(np.float32)
    yy, xx = np.mgrid[:y, :x]
    array[:, (yy - 20) ** 2 + (xx - 30) ** 2 < 150] += 200.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection((0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))  # axis code PIL: not the model's LPS
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


def test_the_resampling_matrices_are_scipy_zoom_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for n_in in (1, 2, 3, 17, 63, 64, 65, 100, 333, 512):
        for n_out in (64, 96, 224):
            x = rng.standard_normal(n_in).astype(np.float32)
            mine = (_spline_matrix(n_in, n_out).numpy() @ x.astype(np.float64)).astype(np.float32)
            np.testing.assert_array_equal(mine, ndimage.zoom(x, n_out / n_in, order=3))
            labels = rng.integers(1, 9, n_out).astype(np.uint8)
            index, inside = (t.numpy() for t in _nearest(n_out, n_in))
            np.testing.assert_array_equal(
                np.where(inside, labels[index], 0), ndimage.zoom(labels, n_in / n_out, order=0)
            )


def test_bundle_layout_and_metadata(bundle: Path) -> None:
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert files == ["LICENSE", "configs/inference.json", "configs/metadata.json", "docs/README.md", "models/model.ts"]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["schema"] == METADATA_SCHEMA_URL
    schema = json.loads(METADATA_SCHEMA_FILE.read_text())
    assert set(schema["required"]) <= set(meta)
    out = meta["network_data_format"]["outputs"]["pred"]
    assert out["channel_def"] == {str(i): n for i, n in enumerate(CLASSES)} and out["num_channels"] == len(CLASSES)
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["modality"] == "CT" and image["value_range"] == [0, 1] and image["spatial_shape"] == ["*", "*"]
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    transforms = [t["_target_"] for t in config["preprocessing"]["transforms"]]
    assert transforms == ["LoadImaged", "EnsureChannelFirstd", "Orientationd", "ScaleIntensityRanged"]
    assert config["preprocessing"]["transforms"][2]["axcodes"] == ORIENTATION
    assert config["inferer"]["_target_"] == "SliceInferer" and config["inferer"]["spatial_dim"] == 2
    assert "msa2net" not in json.dumps(config).replace("msa2net_bundle", "")
    readme = (bundle / "docs" / "README.md").read_text()
    assert "python -m monai.bundle run" in readme and "msa2net_test" in readme


def test_bundle_model_takes_whole_slices_of_any_size(bundle: Path) -> None:
    model = torch.jit.load(str(bundle / "models" / "model.ts"))
    for size in ((1, 1), (64, 64), (70, 31)):
        with torch.inference_mode():
            probs = model(torch.rand(1, 1, *size))
        assert probs.shape == (1, len(CLASSES), *size)
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, *size))


@pytest.mark.slow
def test_monai_runs_the_bundle_without_msa2net_and_agrees_with_predict(
    bundle: Path, model_file: Path, tmp_path: Path
) -> None:
    pytest.importorskip("monai")
    pytest.importorskip("ignite")
    pytest.importorskip("fire")
    pytest.importorskip("jsonschema")
    source = _volume(tmp_path / "in" / "case.nii.gz")
    check = _isolated(["--check-isolation"], tmp_path)
    assert check.returncode == 0 and "msa2net not importable" in check.stdout, check.stderr

    schema = tmp_path / "schema.json"
    shutil.copy(METADATA_SCHEMA_FILE, schema)  # present, so MONAI does not download it
    meta = str(bundle / "configs" / "metadata.json")
    verified = _isolated(["verify_metadata", "--meta_file", meta, "--filepath", str(schema)], tmp_path)
    assert verified.returncode == 0, verified.stderr[-3000:]
    assert "metadata is verified with no error" in verified.stdout + verified.stderr

    config = str(bundle / "configs" / "inference.json")
    out = tmp_path / "out"
    args = ["run", "--config_file", config, "--bundle_root", str(bundle)]
    ran = _isolated([*args, "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(out)], tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    written = sitk.ReadImage(str(out / "case_seg.nii.gz"))
    assert written.GetSize() == source.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-6)

    prediction = Predictor.from_pretrained(model_file).predict(tmp_path / "in" / "case.nii.gz")
    assert prediction.segmented_as == ORIENTATION  # msa2net re-indexed the volume too
    reference = prediction.labels
    assert len(np.unique(reference)) == len(CLASSES), "an untrained model predicting one class would prove nothing"
    labels = sitk.GetArrayFromImage(written)
    identical = float(np.mean(labels == reference))
    # measured here: 100 % (24,534 of 24,534); only float rounding in the resampling products could flip a near-tie
    assert identical >= 0.999, f"{identical:.5%} of voxels agree"


def test_a_zscore_bundle_maps_intensities_as_msa2net_does(tiny_checkpoint, tmp_path: Path) -> None:
    # MR and other scanners: MONAI's percentile scaling in the bundle against msa2net's robust min-max
    monai_bundle = pytest.importorskip("monai.bundle")
    prep = Preprocessing(kind="zscore", in_channels=1, clip_percentiles=(1.0, 99.0))
    model = tiny_checkpoint(["background", "lobe"], prep, tmp_path / "mr.pt", slice_orientation="LPS")
    write_monai_bundle(model, tmp_path / "bundle")
    volume = np.random.default_rng(0).gamma(2.0, 300.0, (9, 47, 58)).astype(np.float32)  # skewed, like MR
    (tmp_path / "in").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "in" / "case.nii.gz"))  # identity: LPS
    parser = monai_bundle.ConfigParser(json.loads((tmp_path / "bundle" / "configs" / "inference.json").read_text()))
    parser["bundle_root"] = str(tmp_path / "bundle")
    mapped = parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "in" / "case.nii.gz")})["image"]
    np.testing.assert_allclose(mapped[0].numpy().transpose(2, 1, 0), prep.to_unit(volume), rtol=0, atol=1e-6)


def test_cli_needs_an_output(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(model_file)])
    assert "--monai-bundle" in capsys.readouterr().err


def test_bad_bundle_folders_and_models_are_refused(tiny_checkpoint, model_file: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(MonaiBundleError, match="busy.*not empty.*--overwrite"):
        write_monai_bundle(model_file, busy)
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    written = write_monai_bundle(model_file, busy, overwrite=True)
    assert (busy / "models" / "model.ts").is_file() and not (busy / "keep.txt").exists()
    assert written.check["labels_identical"] == written.check["labels_total"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    rgb = tiny_checkpoint(["background", "lesion"], Preprocessing(kind="rgb", in_channels=3))
    with pytest.raises(MonaiBundleError, match="8-bit images.*msa2net export -o"):
        write_monai_bundle(rgb, tmp_path / "rgb")
    assert not (tmp_path / "rgb").exists()


def test_slice_resize_model_is_torchscript_compatible() -> None:
    net = torch.nn.Conv2d(1, 2, 1)
    scripted = torch.jit.script(SliceResizeModel(net, (8, 8), (0.5,), (0.5,)))
    with torch.inference_mode():
        assert scripted(torch.rand(2, 1, 5, 11)).shape == (2, 2, 5, 11)
