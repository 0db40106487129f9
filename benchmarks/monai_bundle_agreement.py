"""Agreement of a MONAI bundle run by MONAI (``python -m monai.bundle run``, msa2net not importable) with msa2net's
predictor on a real-valued CT-like volume: the figure the README quotes.

    PYTHONPATH=src python benchmarks/monai_bundle_agreement.py [--size 512 512 24] [--img-size 64] [--out DIR]

The model is an untrained ``msa2net_test`` (seeded, no weights downloaded) whose training plane is recorded as LPS
while the volume is stored otherwise, so the re-indexing, the intensity window, both resamplings and the way back
to the input's grid are all exercised. Prints voxels identical out of all, the geometry check, and both runs' times
on one thread.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

import msa2net
from msa2net.data.preprocessing import Preprocessing
from msa2net.engine.checkpoint import make_checkpoint, save_checkpoint
from msa2net.engine.monai_bundle import write_monai_bundle
from msa2net.engine.predictor import Predictor

BLOCKED = """
import runpy, sys
class NoMsa2net:
    def find_spec(self, name, path=None, target=None):
        if name == "msa2net" or name.startswith("msa2net."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoMsa2net())
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 24], metavar=("X", "Y", "Z"))
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.out
    if work is None:
        work = Path(tempfile.mkdtemp(prefix="monai-bundle-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)  # scratch: gone when the script ends
    torch.set_num_threads(1)

    x, y, z = args.size
    rng = np.random.default_rng(0)
    array = rng.normal(40.0, 120.0, (z, y, x)).astype(np.float32)
    yy, xx = np.mgrid[:y, :x]
    array[:, (yy - y / 2.5) ** 2 + (xx - x / 2) ** 2 < (min(x, y) / 4) ** 2] += 200.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.75, 0.75, 3.0))
    image.SetOrigin((-190.0, -170.0, 40.0))
    image.SetDirection((0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    volume = work / "in" / "case.nii.gz"
    volume.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(volume))

    torch.manual_seed(3)
    prep = Preprocessing(kind="ct_window", in_channels=1)
    classes = ["background", "liver", "spleen", "kidney"]
    model = msa2net.create_model("msa2net_test", num_classes=len(classes), in_channels=1, img_size=args.img_size)
    ckpt = make_checkpoint(model, "msa2net_test", prep.to_dict(), classes, slice_orientation="LPS")
    save_checkpoint(ckpt, work / "model.pt")
    bundle = write_monai_bundle(work / "model.pt", work / "bundle", overwrite=True).folder

    start = time.perf_counter()
    reference = Predictor.from_pretrained(work / "model.pt").predict(volume).labels
    legacy_s = time.perf_counter() - start
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"  # one thread in both runs, as torch.set_num_threads(1) above
    command = [sys.executable, "-I", "-c", BLOCKED, "run", "--config_file", str(bundle / "configs/inference.json")]
    command += ["--bundle_root", str(bundle), "--dataset_dir", str(volume.parent), "--output_dir", str(work / "out")]
    start = time.perf_counter()
    subprocess.run(command, cwd=work, env=env, check=True, capture_output=True)
    monai_s = time.perf_counter() - start
    written = sitk.ReadImage(str(work / "out" / "case_seg.nii.gz"))
    labels = sitk.GetArrayFromImage(written)
    same = int((labels == reference).sum())
    geometry = (
        written.GetSize() == image.GetSize()
        and np.allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-5)
        and np.allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
        and np.allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)
    )
    counts = np.bincount(reference.ravel()).tolist()
    print(f"volume {x} x {y} x {z} float32, model {args.img_size} x {args.img_size}, voxels per class {counts}")
    print(f"voxels identical: {same} of {labels.size} ({same / labels.size:.6%}); input geometry kept: {geometry}")
    # the image axis along S-I (row 2 of the direction matrix), as a NumPy axis (z, y, x): the model's slices
    slices = reference.shape[2 - int(np.argmax(np.abs(np.reshape(image.GetDirection(), (3, 3))[2])))]
    print(
        f"{slices} slices in the model's plane, one thread each: msa2net predictor {legacy_s:.1f} s; "
        f"python -m monai.bundle run {monai_s:.1f} s (process start included)"
    )


if __name__ == "__main__":
    main()
