"""Tests of msa2net.reporting (the model card aside, see test_card.py): aggregation, pooled counts, strict JSON, the
typed summaries and their summary.json, the evaluation tables (every figure of table.md equals the one in
summary.json), overlays, training logs and the demo report."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from msa2net._json import json_safe, write_json
from msa2net.data.synapse import CLASS_NAMES
from msa2net.metrics import binary_confusion, pooled_binary_metrics
from msa2net.reporting.aggregate import MetricAggregator, PooledBinaryMetrics
from msa2net.reporting.curves import plot_curves, read_metrics_csv, write_metrics_csv
from msa2net.reporting.demo import write_demo_report
from msa2net.reporting.html import HtmlReport, open_report
from msa2net.reporting.overlays import OVERLAY_COLORS, OVERLAY_PAD, overlay_rgb, write_overlay_png
from msa2net.reporting.summary import (
    CaseSummary,
    PooledSummary,
    SummaryError,
    as_summary,
    build_evaluation_summary,
    build_isic_summary,
    read_summary,
    summary_from_json,
)
from msa2net.reporting.tables import (
    MISSING,
    SYNAPSE_COLUMNS,
    format_evaluation_tables,
    format_paper_table,
    write_evaluation_report,
)

ORGANS = list(CLASS_NAMES[1:])
NAN = float("nan")


def _visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of ``text``: per table, its rows of stripped cells (alignment row dropped)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append([current[0], *current[2:]])
            current = []
    return tables


def _fmt(value: Any, scale: float = 1.0) -> str:
    """How a JSON figure must appear in table.md."""
    return MISSING if value is None else f"{scale * value:.2f}"


# ----------------------------------------------------------------------------------------------
# Aggregator
# ----------------------------------------------------------------------------------------------


def filled_aggregator() -> MetricAggregator:
    agg = MetricAggregator(class_names=["spleen", "liver"])
    agg.add_case("case0001", {"spleen": {"dice": 0.8, "hd95_mm": 4.0}, "liver": {"dice": 0.9, "hd95_mm": 2.0}})
    agg.add_case("case0002", {"spleen": {"dice": 0.0, "hd95_mm": NAN}, "liver": {"dice": 0.7, "hd95_mm": 6.0}})
    return agg


def test_aggregator_summary_means_omit_and_count_failures() -> None:
    agg = filled_aggregator()
    summary = agg.summary()
    assert summary["n_cases"] == 2 and summary["classes"] == ["spleen", "liver"]
    assert summary["metrics"] == ["dice", "hd95_mm"]
    assert summary["per_class"]["spleen"]["mean"] == pytest.approx({"dice": 0.4, "hd95_mm": 4.0})
    assert summary["per_class"]["liver"]["mean"] == pytest.approx({"dice": 0.8, "hd95_mm": 4.0})
    assert summary["per_class"]["spleen"]["n_failed"] == {"dice": 0, "hd95_mm": 1}
    assert summary["per_class"]["liver"]["n_failed"] == {"dice": 0, "hd95_mm": 0}
    assert summary["per_class"]["spleen"]["n_cases"] == 2
    assert summary["mean"] == pytest.approx({"dice": 0.6, "hd95_mm": 4.0})
    assert [(r["case_id"], r["class_name"]) for r in summary["cases"]] == [
        ("case0001", "spleen"),
        ("case0001", "liver"),
        ("case0002", "spleen"),
        ("case0002", "liver"),
    ]
    summary["cases"][0]["dice"] = -1.0  # a copy: the aggregator is unchanged
    assert agg.summary()["cases"][0]["dice"] == 0.8


def test_aggregator_rejects_duplicates_and_reserved_names() -> None:
    agg = filled_aggregator()
    with pytest.raises(ValueError, match="already added"):
        agg.add_case("case0001", {"spleen": {"dice": 1.0}})
    with pytest.raises(ValueError, match="reserved"):
        agg.add_case("case0003", {"spleen": {"case_id": 1.0}})
    assert agg.summary()["n_cases"] == 2


def test_aggregator_class_whose_every_value_failed() -> None:
    agg = MetricAggregator(["spleen", "liver"])
    agg.add_case("a", {"spleen": {"hd95_mm": NAN}, "liver": {"hd95_mm": 3.0}})
    summary = agg.summary()
    assert math.isnan(summary["per_class"]["spleen"]["mean"]["hd95_mm"])
    assert summary["mean"]["hd95_mm"] == 3.0  # the mean over classes leaves the class without a value out


def test_aggregator_csv(tmp_path: Path) -> None:
    agg = filled_aggregator()
    agg.add_case("case0003", {"spleen": {"dice": 0.5}})  # no hd95_mm: an empty cell
    path = agg.write_csv(tmp_path / "out" / "per_case.csv")
    with open(path, newline="") as handle:
        records = list(csv.DictReader(handle))
    assert list(records[0]) == ["case_id", "class_name", "dice", "hd95_mm"]
    assert [(r["case_id"], r["class_name"]) for r in records] == [
        (r["case_id"], r["class_name"]) for r in agg.summary()["cases"]
    ]
    assert records[2]["hd95_mm"] == "nan" and records[4]["hd95_mm"] == ""
    assert float(records[1]["hd95_mm"]) == 2.0 and float(records[0]["dice"]) == 0.8


# ----------------------------------------------------------------------------------------------
# Pooled ISIC counts
# ----------------------------------------------------------------------------------------------


def test_streaming_pooled_metrics_pool_pixels_not_images() -> None:
    rng = np.random.default_rng(5)
    preds = rng.random((3, 8, 8)) > 0.5
    gts = rng.random((3, 8, 8)) > 0.6
    stream = PooledBinaryMetrics()
    for pred, gt in zip(preds, gts):
        stream.update(pred, gt)
    assert stream.confusion == binary_confusion(preds, gts)
    assert stream.compute() == pytest.approx(pooled_binary_metrics(binary_confusion(preds, gts)))
    per_image_mean = np.mean([pooled_binary_metrics(binary_confusion(p, g))["dsc"] for p, g in zip(preds, gts)])
    assert stream.compute()["dsc"] != pytest.approx(per_image_mean)
    stream.reset()
    assert stream.confusion == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="same shape"):
        stream.update(preds[0], gts[0][:4])


def test_streaming_metrics_with_postprocessing() -> None:
    lesion = np.zeros((40, 40), dtype=bool)
    lesion[5:29, 5:29] = True
    noisy = lesion.copy()
    noisy[16:18, 16:18] = False  # 2x2 hole inside the lesion
    noisy[34:37, 34:37] = True  # 3x3 speck away from it
    raw, cleaned = PooledBinaryMetrics(), PooledBinaryMetrics(postprocess=True)
    raw.update(noisy[None], lesion[None])
    cleaned.update(noisy[None], lesion[None])
    assert raw.confusion == (lesion.sum() - 4, 9, 4, 40 * 40 - lesion.sum() - 9)
    assert cleaned.compute()["dsc"] == 1.0
    with pytest.raises(ValueError, match=r"\(H, W\) or \(N, H, W\)"):
        cleaned.update(noisy[None, None], lesion[None, None])


def test_isic_summary(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((4, 8, 8)) > 0.5).astype(np.uint8)
    preds = (rng.random((4, 8, 8)) > 0.5).astype(np.uint8)
    pooled = PooledBinaryMetrics()
    pooled.update(preds, labels)
    summary = build_isic_summary(pooled, {"model": "m"}, n_images=4)
    write_json(tmp_path / "summary.json", summary)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data == {
        "settings": {"model": "m", "postprocess": False},
        "n_images": 4,
        "pooled": pytest.approx(pooled_binary_metrics(binary_confusion(preds, labels))),
    }


# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------


def test_json_safe_and_write_json_are_strict(tmp_path: Path) -> None:
    data = {"a": NAN, "b": [np.float32(1.5), float("inf")], 3: (np.int64(2), None)}
    assert json_safe(data) == {"a": None, "b": [1.5, None], "3": [2, None]}
    path = write_json(tmp_path / "out" / "x.json", data)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None], "3": [2, None]}


def test_interrupted_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "summary.json"
    path.write_text("old content")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, filled_aggregator().summary())
    assert path.read_text() == "old content"
    assert _visible_files(tmp_path) == ["summary.json"]  # no temporary left behind


# ----------------------------------------------------------------------------------------------
# Tables and the evaluation report
# ----------------------------------------------------------------------------------------------


def test_format_paper_table_reproduces_the_paper_layout() -> None:
    # Per-organ Dice of MSA2Net in the paper; their mean is the paper's DSC 84.75.
    paper = (92.69, 84.24, 88.30, 74.35, 95.59, 84.03, 89.47, 69.30)
    per_class_dice = {name: value / 100 for name, value in zip(ORGANS, paper)}
    per_class_hd95 = {name: 13.29 for name in ORGANS}
    table = format_paper_table(per_class_dice, per_class_hd95, ORGANS, "MSA2Net")
    header, rule, row = table.splitlines()
    assert header == "| Method | DSC | HD95 | " + " | ".join(SYNAPSE_COLUMNS) + " |"
    assert rule.count("|") == header.count("|")
    assert row == "| MSA2Net | 84.75 | 13.29 | " + " | ".join(f"{v:.2f}" for v in paper) + " |"
    given = format_paper_table(per_class_dice, per_class_hd95, ORGANS, "MSA2Net", mean_dice=0.5, mean_hd95=NAN)
    assert given.splitlines()[2].startswith(f"| MSA2Net | 50.00 | {MISSING} | 92.69 |")
    with pytest.raises(ValueError, match="fractions"):
        format_paper_table({k: 100 * v for k, v in per_class_dice.items()}, per_class_hd95, ORGANS, "x")
    other = format_paper_table({"a": 0.5}, {"a": 1.0}, ["a"], "x")
    assert other.splitlines()[0] == "| Method | DSC | HD95 | a |"


def synapse_aggregator() -> MetricAggregator:
    """Two cases of the 8 organs. Case 2 misses the gallbladder; the pancreas fails in both cases (empty)."""
    agg = MetricAggregator(ORGANS)
    for case, offset in (("case0001", 0.0), ("case0002", 2.0)):
        rows = {}
        for i, organ in enumerate(ORGANS):
            rows[organ] = {
                "dice": 0.5 + 0.05 * i + offset / 20,
                "hd95": 2.0 + i + offset,
                "hd95_mm": 3.0 + i + offset,
                "nsd": 0.9 - offset / 10,
                "pred_empty": 0.0,
                "gt_empty": 0.0,
            }
        if case == "case0002":
            rows["gallbladder"].update(dice=0.0, hd95=0.0, hd95_mm=NAN, nsd=0.0, pred_empty=1.0)
        rows["pancreas"].update(dice=0.0, hd95=0.0, hd95_mm=NAN, nsd=NAN, pred_empty=1.0, gt_empty=1.0)
        agg.add_case(case, rows)
    return agg


SETTINGS = {"checkpoint": "best.pt", "model": "msa2net_paper", "empty_policy_mm": "nan", "nsd_tolerance_mm": 2.0}


def test_evaluation_summary_by_hand() -> None:
    summary = CaseSummary.build(synapse_aggregator(), CLASS_NAMES, SETTINGS, "nan")
    mm = summary.mm
    # class means over the non-failed cases: 4, 5, 6, 6 (gallbladder: case 1 only), 8, 9, 10; pancreas none
    assert mm.mean_hd95_mm == pytest.approx(48 / 7)
    assert math.isnan(mm.per_class_hd95_mm["pancreas"]) and mm.per_class_hd95_mm["gallbladder"] == 6.0
    assert mm.per_class_failures == {**{o: 0 for o in ORGANS}, "gallbladder": 1, "pancreas": 2}
    assert (mm.n_failed, mm.n_values) == (3, 16)
    assert mm.mean_hd95_mm == pytest.approx(summary.mean["hd95_mm"])
    assert summary.legacy.per_class_hd95_voxels["spleen"] == 3.0
    assert summary.legacy.mean_dice == pytest.approx(np.mean(list(summary.legacy.per_class_dice.values())))
    assert summary.settings["title"] == summary.title == "msa2net_paper"  # default: the checkpoint's model name
    titled = CaseSummary.build(synapse_aggregator(), CLASS_NAMES, SETTINGS, "nan", title="mine")
    assert titled.title == "mine"
    # summary.json: undefined figures null, the layout of the rest is the aggregator's
    data = summary.to_json()
    assert data == build_evaluation_summary(synapse_aggregator(), CLASS_NAMES, SETTINGS, "nan")
    assert data["mm"]["per_class_hd95_mm"]["pancreas"] is None
    assert list(data)[:4] == ["settings", "class_names", "legacy", "mm"]
    assert list(data)[4:] == ["n_cases", "classes", "metrics", "per_class", "mean", "cases"]


#: A summary.json as msa2net 0.1.0 wrote it before summaries were typed (two classes, one failure).
OLD_SUMMARY_JSON = """{"settings": {"model": "m", "kind": "folder", "nsd_tolerance_mm": null, "empty_policy_mm": "nan",
"title": "m"}, "class_names": ["background", "spleen", "liver"], "legacy": {"mean_dice": 0.6000000000000001,
"mean_hd95_voxels": 1.5, "per_class_dice": {"spleen": 0.4, "liver": 0.8}, "per_class_hd95_voxels": {"spleen": 1.0,
"liver": 2.0}}, "mm": {"mean_hd95_mm": 4.0, "per_class_hd95_mm": {"spleen": 4.0, "liver": 4.0}, "per_class_failures":
{"spleen": 1, "liver": 0}, "n_failed": 1, "n_values": 4, "per_class_nsd": {"spleen": null, "liver": null}, "note":
"hd95_mm omits failures (an empty prediction or ground truth) from the means and counts them"}, "n_cases": 2,
"classes": ["spleen", "liver"], "metrics": ["dice", "hd95", "hd95_mm"], "per_class": {"spleen": {"n_cases": 2, "mean":
{"dice": 0.4, "hd95": 1.0, "hd95_mm": 4.0}, "n_failed": {"dice": 0, "hd95": 0, "hd95_mm": 1}}, "liver": {"n_cases": 2,
"mean": {"dice": 0.8, "hd95": 2.0, "hd95_mm": 4.0}, "n_failed": {"dice": 0, "hd95": 0, "hd95_mm": 0}}}, "mean":
{"dice": 0.6000000000000001, "hd95": 1.5, "hd95_mm": 4.0}, "cases": [{"case_id": "c1", "class_name": "spleen", "dice":
0.8, "hd95": 2.0, "hd95_mm": 4.0}, {"case_id": "c1", "class_name": "liver", "dice": 0.9, "hd95": 1.0, "hd95_mm": 2.0},
{"case_id": "c2", "class_name": "spleen", "dice": 0.0, "hd95": 0.0, "hd95_mm": null}, {"case_id": "c2", "class_name":
"liver", "dice": 0.7, "hd95": 3.0, "hd95_mm": 6.0}]}"""


def _old_aggregator() -> MetricAggregator:
    """The rows :data:`OLD_SUMMARY_JSON` was built from."""
    agg = MetricAggregator(["spleen", "liver"])
    agg.add_case(
        "c1",
        {"spleen": {"dice": 0.8, "hd95": 2.0, "hd95_mm": 4.0}, "liver": {"dice": 0.9, "hd95": 1.0, "hd95_mm": 2.0}},
    )
    agg.add_case(
        "c2",
        {"spleen": {"dice": 0.0, "hd95": 0.0, "hd95_mm": NAN}, "liver": {"dice": 0.7, "hd95": 3.0, "hd95_mm": 6.0}},
    )
    return agg


def test_typed_summaries_write_and_read_the_same_summary_json(tmp_path: Path) -> None:
    old = json.loads(OLD_SUMMARY_JSON)
    settings = {"model": "m", "kind": "folder", "nsd_tolerance_mm": None}
    built = CaseSummary.build(_old_aggregator(), ["background", "spleen", "liver"], settings, "nan")
    assert built.to_json() == old  # the keys and values summary.json has always had
    assert json.dumps(built.to_json()) == json.dumps(old)  # in the same order
    read = summary_from_json(old)
    assert isinstance(read, CaseSummary) and read.to_json() == old and read == CaseSummary.from_json(old)
    assert (
        read.mm.per_class_hd95_mm == {"spleen": 4.0, "liver": 4.0} and read.per_class["spleen"].n_failed["hd95_mm"] == 1
    )
    # a file round trip, and config.json's form without the per-case rows
    path = write_json(tmp_path / "summary.json", built.to_json())
    assert read_summary(path).to_json() == old
    light = read.without_cases().to_json()
    assert "cases" not in light and light == {k: v for k, v in old.items() if k != "cases"}
    assert CaseSummary.from_json(light).cases is None and CaseSummary.from_json(light).to_json() == light
    # the table of a summary read back is the table of the summary built
    assert format_evaluation_tables(read) == format_evaluation_tables(built)


def test_pooled_summary_round_trip_and_dispatch(tmp_path: Path) -> None:
    pooled = PooledBinaryMetrics(postprocess=True)
    pooled.update(np.eye(8, dtype=bool), np.ones((8, 8), dtype=bool))
    summary = PooledSummary.build(pooled, {"model": "m", "kind": "isic2018"}, 1)
    data = json.loads(json.dumps(summary.to_json()))
    assert list(data) == ["settings", "n_images", "pooled"] and data["settings"]["postprocess"] is True
    read = summary_from_json(data)
    assert isinstance(read, PooledSummary) and read.to_json() == data and read.postprocess and read.title == "m"
    assert as_summary(read) is read and as_summary(data) == read
    with pytest.raises(SummaryError, match="legacy/mm/per_class or pooled"):
        summary_from_json({"settings": {}})
    with pytest.raises(SummaryError, match=r"lacks \['n_images'\]"):
        summary_from_json({"settings": {}, "pooled": {}})
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(SummaryError, match=r"bad\.json is not a summary\.json"):
        read_summary(tmp_path / "bad.json")


def _assert_table_matches_summary(table_text: str, summary: dict[str, Any]) -> None:
    """Every figure of table.md against the same figure of summary.json (after its JSON round trip)."""
    names = summary["class_names"][1:]
    legacy, mm, per_class = summary["legacy"], summary["mm"], summary["per_class"]
    (legacy_header, legacy_row), (mm_header, *mm_rows) = _tables(table_text)
    columns = list(SYNAPSE_COLUMNS) if names == ORGANS else names
    assert legacy_header == ["Method", "DSC", "HD95", *columns] and mm_header == ["Metric", "Mean", *columns]
    assert legacy_row == [
        summary["settings"]["title"],
        _fmt(legacy["mean_dice"], 100),
        _fmt(legacy["mean_hd95_voxels"]),
        *(_fmt(legacy["per_class_dice"][c], 100) for c in names),
    ]
    rows = {row[0]: row[1:] for row in mm_rows}
    assert rows["HD95 (mm)"] == [_fmt(mm["mean_hd95_mm"]), *(_fmt(mm["per_class_hd95_mm"][c]) for c in names)]
    assert rows["failed"] == [
        f"{mm['n_failed']}/{mm['n_values']}",
        *(f"{mm['per_class_failures'][c]}/{per_class[c]['n_cases']}" for c in names),
    ]
    assert mm["n_failed"] == sum(mm["per_class_failures"].values())
    assert mm["n_values"] == sum(per_class[c]["n_cases"] for c in names)
    tolerance = summary["settings"]["nsd_tolerance_mm"]
    if tolerance is not None:
        assert rows[f"NSD ({tolerance:g} mm)"] == [
            _fmt(summary["mean"]["nsd"], 100),
            *(_fmt(mm["per_class_nsd"][c], 100) for c in names),
        ]
    assert "nan" not in table_text.lower().replace("empty=nan", "")


def test_table_md_figures_equal_summary_json(tmp_path: Path) -> None:
    agg = synapse_aggregator()
    summary = build_evaluation_summary(agg, CLASS_NAMES, SETTINGS, "nan")
    written = write_evaluation_report(tmp_path / "eval", summary, agg)
    assert sorted(written) == ["per_case", "summary", "table"]
    assert _visible_files(tmp_path / "eval") == ["per_case.csv", "summary.json", "table.md"]
    on_disk = json.loads(written["summary"].read_text())
    table = written["table"].read_text()
    _assert_table_matches_summary(table, on_disk)
    assert table == format_evaluation_tables(summary)  # the same text from the summary in memory
    # the figures the user compared: the mm mean is a number, equal to summary.json, with the failures shown
    (_, mm_row, failed_row, _) = _tables(table)[1]
    assert mm_row[1] == "6.86" == f"{on_disk['mm']['mean_hd95_mm']:.2f}"
    assert failed_row[1] == "3/16" and failed_row[5] == "1/2" and failed_row[-1] == "2/2"
    assert mm_row[-1] == MISSING and on_disk["mm"]["per_class_hd95_mm"]["pancreas"] is None
    assert "msa2net_paper" in table and "MSA2Net (msa2net)" not in table


@pytest.mark.parametrize(("empty", "text"), [("diagonal", "diagonal of the image"), (50.0, "scores 50 mm")])
def test_table_states_the_empty_policy(empty: str | float, text: str) -> None:
    agg = filled_aggregator()
    summary = build_evaluation_summary(agg, ["background", "spleen", "liver"], {"model": "m"}, empty)
    table = format_evaluation_tables(json.loads(json.dumps(json_safe(summary))))
    assert f"empty={empty}" in table and text in table
    assert _tables(table)[0][0] == ["Method", "DSC", "HD95", "spleen", "liver"]  # not Synapse: class names
    assert "NSD" not in table  # not computed


def test_evaluate_writes_tables_that_match_its_summary(
    data_synapse_prepared: Path, tmp_path: Path, tiny_checkpoint
) -> None:
    from msa2net.data.preprocessing import Preprocessing
    from msa2net.engine.evaluate import evaluate

    path = tiny_checkpoint(CLASS_NAMES, Preprocessing(kind="unit"), tmp_path / "model.pt")
    out = tmp_path / "eval"
    report = evaluate(path, data_synapse_prepared, out, device="cpu", progress=False, overlays_per_case=0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json_safe(report)
    assert summary["settings"]["title"] == "msa2net_test"
    _assert_table_matches_summary((out / "table.md").read_text(), summary)


# ----------------------------------------------------------------------------------------------
# Overlays
# ----------------------------------------------------------------------------------------------


def test_overlay_rgb_blends_label_colours_on_minmax_scaled_image() -> None:
    image = np.array([[10.0, 20.0], [30.0, 50.0]])
    labels = np.array([[0, 1], [2, 0]])
    out = overlay_rgb(image, labels, alpha=0.5)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])  # min -> black, background untouched
    np.testing.assert_array_equal(out[1, 1], [255, 255, 255])  # max -> white
    grey_01 = round((20 - 10) / 40 * 255)
    np.testing.assert_array_equal(out[0, 1], np.round(0.5 * grey_01 + 0.5 * OVERLAY_COLORS[1].astype(float)))
    grey_10 = round((30 - 10) / 40 * 255)
    np.testing.assert_array_equal(out[1, 0], np.round(0.5 * grey_10 + 0.5 * OVERLAY_COLORS[2].astype(float)))


def _panel_row(out: np.ndarray, panel: np.ndarray, x: int) -> int:
    """Top row of ``panel`` drawn at column ``x`` of ``out`` (fails when it is not there)."""
    h, w = panel.shape[:2]
    for y in range(out.shape[0] - h + 1):
        if np.array_equal(out[y, x : x + w], panel[0]) and np.array_equal(out[y : y + h, x : x + w], panel):
            return y
    raise AssertionError(f"panel of shape {panel.shape} not found at column {x}")


def test_overlay_png_titles_panels_legend_and_minimum_size(tmp_path: Path) -> None:
    image = np.array([[10.0, 20.0], [30.0, 50.0]])
    truth, pred = np.array([[0, 1], [0, 0]]), np.array([[0, 0], [2, 0]])
    names = ["background", "liver", "spleen"]
    path = write_overlay_png(
        image, pred, tmp_path / "pair.png", reference=truth, class_names=names, title="case0001, slice 3"
    )
    out = np.asarray(Image.open(path).convert("RGB"))
    big = 128  # 2 px enlarged to at least 256 px with nearest neighbour
    left = np.kron(overlay_rgb(image, truth), np.ones((big, big, 1), dtype=np.uint8))
    right = np.kron(overlay_rgb(image, pred), np.ones((big, big, 1), dtype=np.uint8))
    pad = OVERLAY_PAD
    top = _panel_row(out, left, pad)  # ground truth on the left, the prediction to its right
    assert _panel_row(out, right, pad + 256 + pad) == top
    assert top >= 30 and (out[:top] != 255).any()  # the title and the captions sit above the panels
    legend = out[top + 256 :]
    for colour in OVERLAY_COLORS[1:3]:  # a swatch per named class, in the colours of the overlay
        assert np.all(legend == colour, axis=-1).sum() >= 50
    assert not np.all(legend == OVERLAY_COLORS[3], axis=-1).any()  # only the named classes
    assert out.shape[1] == 2 * pad + 2 * 256 + pad and _visible_files(tmp_path) == ["pair.png"]

    alone = np.asarray(
        Image.open(write_overlay_png(np.zeros((300, 280)), np.zeros((300, 280), int), tmp_path / "a.png"))
    )
    assert alone.shape[0] > 300 and alone.shape[1] == 280 + 2 * pad  # large images keep their size
    with pytest.raises(ValueError, match="labels shape"):
        write_overlay_png(image, pred, tmp_path / "bad.png", reference=np.zeros((3, 3), int))


def test_overlay_accepts_rgb_and_rejects_bad_labels(tmp_path: Path) -> None:
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 1] = 200
    rgb[0, 0] = 0
    out = overlay_rgb(rgb, np.zeros((3, 4), int))
    assert out[1, 1, 1] == 255 and out[1, 1, 0] == 0  # per-image min-max over all channels
    with pytest.raises(ValueError, match="0..15"):
        write_overlay_png(rgb, np.full((3, 4), 16), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="0..2"):
        write_overlay_png(rgb, np.full((3, 4), 3), tmp_path / "bad.png", num_classes=3)
    with pytest.raises(ValueError, match="differs from image shape"):
        write_overlay_png(rgb, np.zeros((4, 3), int), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="alpha"):
        overlay_rgb(rgb, np.zeros((3, 4), int), alpha=1.5)
    assert not (tmp_path / "bad.png").exists()


# ----------------------------------------------------------------------------------------------
# Training logs and the demo report
# ----------------------------------------------------------------------------------------------


def test_metrics_csv_columns_in_order_of_first_appearance(tmp_path: Path) -> None:
    history = [{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": 0.5, "val_mean_dice": 0.25}]
    path = write_metrics_csv(tmp_path / "run" / "metrics.csv", history)
    assert path is not None
    assert path.read_text() == "epoch,train_loss,val_mean_dice\n1,0.9,\n2,0.5,0.25\n"
    assert write_metrics_csv(tmp_path / "none.csv", []) is None and not (tmp_path / "none.csv").exists()


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    history = [
        {"epoch": 1, "train_loss": 0.9, "val_mean_dice": NAN},
        {"epoch": 2, "train_loss": 0.5, "val_mean_dice": 0.4},
    ]
    path = plot_curves(history, tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1000, 360)
    assert _visible_files(tmp_path) == ["curves.png"]


def test_plot_curves_draws_a_single_epoch_with_markers_and_integer_ticks(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at it
    plot_curves([{"epoch": 1, "train_loss": 0.7, "val_mean_dice": 0.3}], tmp_path / "one.png")
    (figure,) = figures
    for ax in figure.axes:
        (line,) = ax.get_lines()
        assert line.get_marker() == "o" and list(line.get_xdata()) == [1]  # a visible point, not an empty line
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0]  # integer epochs only
    plt.close(figure)
    many = [{"epoch": e, "train_loss": 1 / e} for e in range(1, 8)]
    figures.clear()
    plot_curves(many, tmp_path / "many.png")
    ticks = figures[0].axes[0].get_xticks()
    assert len(ticks) > 2 and all(float(t).is_integer() for t in ticks)
    plt.close(figures[0])


def test_metrics_csv_reads_back_as_floats_with_nan_for_empty_cells(tmp_path: Path) -> None:
    history = [{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": 0.5, "val_mean_dice": 0.25}]
    rows = read_metrics_csv(write_metrics_csv(tmp_path / "metrics.csv", history))
    assert rows[1] == {"epoch": 2.0, "train_loss": 0.5, "val_mean_dice": 0.25}
    assert rows[0]["epoch"] == 1.0 and math.isnan(rows[0]["val_mean_dice"])


def test_demo_report_quotes_the_evaluation(tmp_path: Path) -> None:
    agg = synapse_aggregator()
    summary = json.loads(json.dumps(json_safe(build_evaluation_summary(agg, CLASS_NAMES, SETTINGS, "nan"))))
    table = format_evaluation_tables(summary)
    path = write_demo_report(
        tmp_path / "report.md",
        model_name="msa2net_demo",
        img_size=(96, 96),
        n_cases=10,
        evaluation=summary,
        table=table,
        best_mean_dice=0.5,
        best_epoch=3,
        curves="curves.png",
        overlays=["eval/overlays/case0001_z003.png"],
        seconds={"train": 12.5},
    )
    text = path.read_text()
    assert table.rstrip("\n") in text
    assert f"**Mean Dice (legacy protocol): {summary['legacy']['mean_dice']:.4f}**" in text
    assert "(case0001, case0002)" in text and "msa2net_demo, 96x96" in text
    assert "![case0001_z003](eval/overlays/case0001_z003.png)" in text and "![curves](curves.png)" in text
    assert "- train: 12.5" in text
    assert re.search(r"best validation Dice 0\.5000 at epoch 3", text)


def test_a_report_page_is_skipped_with_a_warning_when_the_classes_outnumber_the_colours(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    too_many = [f"class_{i}" for i in range(len(OVERLAY_COLORS) + 1)]
    with caplog.at_level(logging.WARNING, logger="msa2net.reporting.html"):
        assert open_report(tmp_path / "report.html", too_many, title="t", kind="prediction") is None
    assert f"draws at most {len(OVERLAY_COLORS)} classes and this model has {len(too_many)}" in caplog.text
    assert list(tmp_path.iterdir()) == []  # nothing started
    with open_report(tmp_path / "report.html", too_many[:3], title="t", kind="evaluation") as page:
        assert isinstance(page, HtmlReport)
        assert page.finish() == tmp_path / "report.html"
    assert (tmp_path / "report.html").is_file()
