"""The Predictor (Python API) against the CLI, its probabilities, statistics and post-processing, DICOM SEG output
(read back by highdicom and by dcmqi), and predict split across torchrun processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage
from test_predict import DIRECTION, _phantom, _write_dicom_series, _write_sitk

from msa2net import cli
from msa2net.data.dicom_seg import load_segment_codes, series_files, write_dicom_seg
from msa2net.data.image_file import Geometry
from msa2net.data.preprocessing import Preprocessing
from msa2net.engine.postprocess import keep_largest, parse_keep_largest
from msa2net.engine.predict import predict_files
from msa2net.engine.predictor import Prediction, Predictor

CLASSES = ["background", "liver", "spleen"]
CT = Preprocessing(kind="ct_window", in_channels=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> Path:
    return tiny_checkpoint(CLASSES, CT, tmp_path_factory.mktemp("ckpt") / "ct.pt", seed=3)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scans")
    series = _write_dicom_series(_phantom((4, 32, 40), 2), root / "series1", (0.75, 0.8, 2.5), (-12.5, 30, 100))
    for path in series.iterdir():  # a wrong Spacing Between Slices, as GDCM writes for slices saved one by one
        dataset = pydicom.dcmread(path)
        dataset.SpacingBetweenSlices = "1"
        dataset.save_as(path)
    return {
        "nifti": _write_sitk(_phantom((5, 40, 48), 0), root / "case.nii.gz", (0.8, 0.7, 3.0), (-10, 20, 30), DIRECTION),
        "dicom": series,
    }


def _run_cli(*args: str) -> None:
    assert cli.main(["predict", *args, "--device", "cpu", "--no-html"]) == 0


def test_predictor_on_an_image_equals_the_cli_and_its_probabilities_argmax_is_the_labels(
    ckpt: Path, scans: dict[str, Path], tmp_path: Path
) -> None:
    predictor = Predictor.from_pretrained(ckpt)
    image = sitk.ReadImage(str(scans["nifti"]))
    result = predictor.predict(image, probabilities=True)
    _run_cli("-i", str(scans["nifti"]), "--checkpoint", str(ckpt), "-o", str(tmp_path), "--output-type", "nifti",
             "probabilities")  # fmt: skip
    written = sitk.ReadImage(str(tmp_path / "case.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), result.labels)
    label_image = result.label_image()
    assert label_image.GetSpacing() == written.GetSpacing() == image.GetSpacing()
    np.testing.assert_allclose(label_image.GetDirection(), image.GetDirection(), atol=1e-6)
    assert len(np.unique(result.labels)) > 1  # an untrained model still draws more than one class here

    probs = result.probabilities
    assert probs is not None and probs.dtype == np.float16 and probs.shape == (3, *result.labels.shape)
    np.testing.assert_array_equal(np.argmax(probs, axis=0), result.labels)
    np.testing.assert_allclose(probs.astype(np.float32).sum(axis=0), 1.0, atol=5e-3)
    with np.load(tmp_path / "case_probabilities.npz") as saved:
        np.testing.assert_array_equal(saved["probabilities"], probs)
        assert list(saved["class_names"]) == CLASSES
        assert tuple(saved["spacing"]) == image.GetSpacing()
        assert tuple(saved["origin"]) == image.GetOrigin()

    # an array with its spacing (array axis order) gives the same labels, and volumes in ml
    from_array = predictor.predict(sitk.GetArrayFromImage(image), spacing=image.GetSpacing()[::-1])
    np.testing.assert_array_equal(from_array.labels, result.labels)
    assert from_array.statistics() == result.statistics()


def test_statistics_volumes_intensities_and_the_border_flag() -> None:
    image = np.arange(4 * 10 * 12, dtype=np.int16).reshape(4, 10, 12) - 300
    labels = np.zeros(image.shape, np.uint8)
    labels[1:3, 3:6, 4:8] = 1  # inside: touches no border
    labels[0:2, 0:4, 9:12] = 2  # touches the first slice, the first row and the last column
    geometry = Geometry((0.5, 0.8, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    stats = Prediction(labels, geometry, CLASSES, image, ct=True).statistics()
    voxel_ml = 0.5 * 0.8 * 2.0 / 1000
    for name, class_id in (("liver", 1), ("spleen", 2)):
        inside = image[labels == class_id].astype(np.float64)
        row = stats[name]
        assert row["voxels"] == int((labels == class_id).sum())
        assert row["volume_ml"] == pytest.approx(row["voxels"] * voxel_ml)
        assert (row["mean"], row["median"], row["std"]) == pytest.approx(
            (inside.mean(), np.median(inside), inside.std())
        )
        assert row["unit"] == "HU"
    assert stats["liver"]["touches_border"] is False
    assert stats["spleen"]["touches_border"] is True
    empty = Prediction(np.zeros_like(labels), geometry, CLASSES, image, physical=False).statistics()
    assert empty["liver"] == {
        "id": 1, "voxels": 0, "volume_ml": None, "mean": None, "median": None, "std": None,
        "unit": "input value", "touches_border": False,
    }  # fmt: skip


def test_keep_largest_keeps_one_component_per_class_in_3d() -> None:
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[0, :2, :2] = 1  # 4 voxels
    labels[1:3, 4:7, 4:7] = 1  # 18 voxels, face-connected across slices
    labels[2, 0, 7] = 2
    kept = keep_largest(labels, parse_keep_largest("liver", CLASSES))
    assert (kept == 1).sum() == 18 and (kept[0] == 1).sum() == 0
    assert (kept == 2).sum() == 1  # classes not named stay as they are
    assert parse_keep_largest("all", CLASSES) == (1, 2) == parse_keep_largest("2,liver", CLASSES)
    with pytest.raises(ValueError, match="not a foreground class.*1=liver, 2=spleen"):
        parse_keep_largest("background", CLASSES)


def test_keep_largest_is_applied_by_the_predictor_and_the_cli_alike(
    ckpt: Path, scans: dict[str, Path], tmp_path: Path
) -> None:
    plain = Predictor.from_pretrained(ckpt).predict(scans["nifti"]).labels
    kept = Predictor.from_pretrained(ckpt, keep_largest="all").predict(scans["nifti"])
    np.testing.assert_array_equal(kept.labels, keep_largest(plain, (1, 2)))
    for class_id in (1, 2):
        assert ndimage.label(kept.labels == class_id)[1] <= 1
    _run_cli(str(scans["nifti"]), "--checkpoint", str(ckpt), "-o", str(tmp_path), "--keep-largest", "all")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case.nii.gz"))), kept.labels)
    record = json.loads((tmp_path / "predictions.json").read_text())
    assert record["keep_largest"] == ["liver", "spleen"]


def _segments_by_highdicom(path: Path, series: Path, class_names: list[str]) -> np.ndarray:
    import highdicom as hd

    seg = hd.seg.segread(path)
    uids = [pydicom.dcmread(name).SOPInstanceUID for name in series_files(series)]
    numbers = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, relabel=False)
    ids = {d.SegmentNumber: class_names.index(d.SegmentLabel) for d in seg.SegmentSequence}
    return np.vectorize(lambda n: ids.get(int(n), 0))(numbers)


def test_dicom_seg_reads_back_with_highdicom_and_dcmqi_equal_to_the_nifti_mask(
    ckpt: Path, scans: dict[str, Path], tmp_path: Path
) -> None:
    _run_cli(str(scans["dicom"]), "--checkpoint", str(ckpt), "-o", str(tmp_path), "--output-type", "nifti",
             "dicom-seg", "--statistics")  # fmt: skip
    mask_image = sitk.ReadImage(str(tmp_path / "series1.nii.gz"))
    mask = sitk.GetArrayFromImage(mask_image)
    present = [CLASSES[i] for i in np.unique(mask) if i > 0]
    assert present, "the untrained model found no foreground; pick another seed"
    seg_path = tmp_path / "series1.seg.dcm"
    np.testing.assert_array_equal(_segments_by_highdicom(seg_path, scans["dicom"], CLASSES), mask)

    seg = pydicom.dcmread(seg_path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == present
    liver = next((s for s in seg.SegmentSequence if s.SegmentLabel == "liver"), None)
    if liver is not None:
        assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED CT: liver
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "msa2net"
    source = pydicom.dcmread(series_files(scans["dicom"])[0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID

    tool = shutil.which("segimage2itkimage") or str(Path(sys.executable).parent / "segimage2itkimage")
    if not Path(tool).exists():
        pytest.fail("dcmqi's segimage2itkimage is missing: pip install dcmqi (a dev dependency)")
    dcmqi_out = tmp_path / "dcmqi"
    dcmqi_out.mkdir()
    subprocess.run(
        [tool, "--inputDICOM", str(seg_path), "--outputDirectory", str(dcmqi_out), "--outputType", "nifti"],
        check=True,
        capture_output=True,
    )
    meta = json.loads((dcmqi_out / "meta.json").read_text())
    labels = [group[0]["SegmentLabel"] for group in meta["segmentAttributes"]]
    rebuilt = np.zeros_like(mask)
    for number, name in enumerate(labels, start=1):
        image = sitk.ReadImage(str(dcmqi_out / f"{number}.nii.gz"))
        assert image.GetSize() == mask_image.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), mask_image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), mask_image.GetSpacing(), atol=1e-4)
        rebuilt[sitk.GetArrayFromImage(image) > 0] = CLASSES.index(name)
    np.testing.assert_array_equal(rebuilt, mask)

    stats = json.loads((tmp_path / "series1_statistics.json").read_text())["classes"]
    cell = float(np.prod(mask_image.GetSpacing())) / 1000
    for name in present:
        assert stats[name]["voxels"] == int((mask == CLASSES.index(name)).sum())
        assert stats[name]["volume_ml"] == pytest.approx(stats[name]["voxels"] * cell)


def test_dicom_seg_for_a_file_input_is_refused_with_the_reason(ckpt: Path, scans: dict[str, Path], tmp_path) -> None:
    report = predict_files(ckpt, scans["nifti"], tmp_path, output_types=["dicom-seg"], progress=False, html=False)
    assert not report.ok and "needs a DICOM series input" in report.failed[0][1]
    assert not (tmp_path / "case.seg.dcm").exists()


def test_a_users_segment_codes_reach_the_dicom_seg_and_a_wrong_table_is_refused(
    ckpt: Path, scans: dict[str, Path], tmp_path: Path
) -> None:
    # written as users name classes in dataset.json: other case, an underscore for the space
    table = {
        "LIVER": {"category": ["SCT", "123037004", "Body structure"], "type": ["SCT", "10200004", "Liver"]},
        "spleen": {"category": ["SCT", "123037004", "Body structure"], "type": ["99LOCAL", "S-1", "My spleen"]},
    }
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps(table))
    out = tmp_path / "out"
    _run_cli(str(scans["dicom"]), "--checkpoint", str(ckpt), "-o", str(out), "--output-type", "dicom-seg",
             "--segment-codes", str(codes))  # fmt: skip
    seg = pydicom.dcmread(out / "series1.seg.dcm")
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert segments, "the untrained model found no foreground; pick another seed"
    for name, segment in segments.items():
        entry = table[name.upper() if name == "liver" else name]
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == entry["category"][1]
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == entry["type"][1]

    # class names with underscores (as dataset.json has them) match the table's entries spelt either way
    codes.write_text(json.dumps({"Left_Kidney": table["spleen"], "right kidney": table["LIVER"]}))
    labels = np.zeros((4, 32, 40), np.uint8)
    labels[:, :8], labels[:, -8:] = 1, 2
    algorithm = {"name": "msa2net", "version": "0", "source": "test"}
    written = write_dicom_seg(labels, scans["dicom"], tmp_path / "kidneys.seg.dcm", ["background", "left_kidney",
                              "Right_Kidney"], colors=[(0, 0, 0), (255, 0, 0), (0, 255, 0)], algorithm=algorithm,
                              codes=load_segment_codes(codes))  # fmt: skip
    assert written == ["left_kidney", "Right_Kidney"]
    types = [
        s.SegmentedPropertyTypeCodeSequence[0].CodeValue
        for s in pydicom.dcmread(tmp_path / "kidneys.seg.dcm").SegmentSequence
    ]
    assert types == ["S-1", "10200004"]
    with pytest.raises(
        ValueError, match=r"codes\.json: the segment code table names \[.left kidney., .right kidney.\], which this"
    ):
        predict_files(ckpt, scans["dicom"], tmp_path / "o2", output_types=["dicom-seg"], segment_codes=codes)
    assert not (tmp_path / "o2").exists()
    with pytest.raises(ValueError, match="used by the dicom-seg output only"):
        predict_files(ckpt, scans["dicom"], tmp_path / "o3", segment_codes=codes)
    codes.write_text(json.dumps({"liver": {"category": ["SCT", "123037004"]}}))
    with pytest.raises(ValueError, match=r"codes\.json: entry 'liver' must be"):
        load_segment_codes(codes)
    codes.write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read the segment code table .*codes\.json"):
        load_segment_codes(codes)


def test_predict_under_torchrun_splits_the_inputs_and_gathers_one_record(
    ckpt: Path, scans: dict[str, Path], tmp_path: Path
) -> None:
    single = tmp_path / "single"
    _run_cli(*map(str, scans.values()), "--checkpoint", str(ckpt), "-o", str(single))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "msa2net.cli", "predict", *map(str, scans.values()), "--checkpoint", str(ckpt), "-o",
               str(tmp_path / "ddp"), "--device", "cpu"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "ddp" / "predictions.json").read_text())
    assert record["processes"] == 2
    assert [c["input"] for c in record["cases"]] == [str(p) for p in scans.values()]
    assert sorted(p.name for p in (tmp_path / "ddp").glob("report-rank*.html")) == [
        "report-rank0.html",
        "report-rank1.html",
    ]
    for name in ("case.nii.gz", "series1.nii.gz"):
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ddp" / name))),
            sitk.GetArrayFromImage(sitk.ReadImage(str(single / name))),
        )
