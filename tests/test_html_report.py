"""report.html: what it holds (figures from the summary, compact embedded slices, no network), how it is written
(streamed, atomic), and how it behaves in a real browser (headless Chromium: no console errors, the slider and the
arrow keys change the slice shown)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import msa2net
from msa2net.data.preprocessing import Preprocessing
from msa2net.data.synapse import CLASS_NAMES
from msa2net.engine.checkpoint import make_checkpoint, save_checkpoint
from msa2net.engine.evaluate import _training_history, evaluate
from msa2net.reporting.curves import write_metrics_csv
from msa2net.reporting.html import HtmlReport, select_slices, slice_confusion
from msa2net.reporting.overlays import OVERLAY_COLORS
from msa2net.reporting.tables import evaluation_tables

NUM_CLASSES = len(CLASS_NAMES)
#: One epoch of training: the curves must still show it.
ONE_EPOCH = [
    {
        "epoch": 1,
        "train_loss": 0.8,
        "lr": 0.01,
        "val_mean_dice": 0.25,
        **{f"val_dice_{n}": 0.1 + 0.05 * i for i, n in enumerate(CLASS_NAMES[1:])},
    }
]


def _case_chunks(page: str) -> list[dict[str, Any]]:
    return [
        json.loads(m)
        for m in re.findall(r'<script type="application/json" class="case-data"[^>]*>(.*?)</script>', page)
    ]


def _page_json(page: str) -> dict[str, Any]:
    return json.loads(re.search(r'<script type="application/json" id="page">(.*?)</script>', page, re.S).group(1))


def _volumes(depth: int = 10, size: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image in [0, 1] (a smooth pattern and mild noise, as CT), a label map with two organs on slices 3..6, and a
    prediction that misses part of one and adds another on slice 8."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:depth, :size, :size] * (40 / size)
    image = (0.5 + 0.3 * np.sin(x / 5 + z) * np.cos(y / 7) + rng.normal(0, 0.02, x.shape)).astype(np.float32)
    label = np.zeros((depth, size, size), np.int64)
    label[3:7, 5:15, 5:15] = 1
    label[4:6, 20:30, 10:35] = 6
    pred = label.copy()
    pred[5, 5:15, 5:10] = 0  # false negatives of class 1 on slice 5
    pred[8, 30:35, 30:35] = 2  # false positives of class 2 on slice 8
    return image, label, pred


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


def test_slice_confusion_counts_every_pair_per_slice() -> None:
    _, label, pred = _volumes()
    conf = slice_confusion(label, pred, NUM_CLASSES)
    assert conf.shape == (10, NUM_CLASSES, NUM_CLASSES) and conf.sum() == label.size
    assert conf[5, 1, 0] == 50 and conf[5, 1, 1] == 50  # half of class 1 missed on slice 5
    assert conf[8, 0, 2] == 25 and conf[0, 0, 0] == 40 * 40
    with pytest.raises(ValueError, match="ids must be in 0..8"):
        slice_confusion(label, pred + 9, NUM_CLASSES)


def test_select_slices_keeps_foreground_a_stride_of_the_rest_and_the_worst_when_capped() -> None:
    relevant = np.zeros(20, bool)
    relevant[[5, 6, 7, 13]] = True
    score = np.zeros(20)
    score[[6, 13]] = [10, 3]
    assert select_slices(relevant, score, 4, 100).tolist() == [0, 4, 5, 6, 7, 8, 12, 13, 16]
    capped = select_slices(relevant, score, 4, 4)
    assert len(capped) == 4 and {6, 13} <= set(capped.tolist())  # the two that disagree most stay
    assert select_slices(np.zeros(3, bool), np.zeros(3), 10, 5).tolist() == [0]  # never empty
    with pytest.raises(ValueError, match="stride"):
        select_slices(relevant, score, 0, 5)


# ---------------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> msa2net.MSA2Net:
    torch.manual_seed(0)
    return msa2net.create_model("msa2net_test", num_classes=NUM_CLASSES, img_size=64).eval()


@pytest.fixture(scope="module")
def evaluated(data_synapse_prepared: Path, tiny_model: msa2net.MSA2Net, tmp_path_factory: pytest.TempPathFactory):
    """``(out folder, summary)`` of ``evaluate`` on the tiny phantom with a one-epoch checkpoint."""
    root = tmp_path_factory.mktemp("html_eval")
    ckpt = make_checkpoint(
        tiny_model, "msa2net_test", Preprocessing(kind="unit").to_dict(), list(CLASS_NAMES), epoch=1, history=ONE_EPOCH
    )
    save_checkpoint(ckpt, root / "run" / "best.pt")
    out = root / "eval"
    summary = evaluate(root / "run" / "best.pt", data_synapse_prepared, out, device="cpu", progress=False)
    return out, summary


def test_evaluate_writes_one_self_contained_page_whose_figures_come_from_the_summary(evaluated) -> None:
    out, summary = evaluated
    text = (out / "report.html").read_text(encoding="utf-8")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    # self-contained: nothing is fetched (the SVG namespace URI is a name, not a download)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert '<link rel="stylesheet"' not in text and "<script src" not in text and "@import" not in text
    assert "url(http" not in text
    page = _page_json(text)
    tables = evaluation_tables(json.loads((out / "summary.json").read_text()))
    for caption, _header, rows in tables:  # every figure of the summary tables, exactly as table.md prints it
        assert html.escape(caption.replace("`", "")) in page["tables_html"]
        for row in rows:
            assert "".join(f"<td>{html.escape(c)}</td>" for c in row) in page["tables_html"]
    assert len(page["case_rows"]) == len(summary["cases"])
    for row, original in zip(page["case_rows"], summary["cases"]):
        assert row["case_id"] == original["case_id"] and row["class_name"] == original["class_name"]
        assert row["dice"] == pytest.approx(original["dice"])
    assert page["history"]["epochs"] == [1] and page["history"]["val_mean"] == [0.25]
    assert [c["name"] for c in page["classes"]] == list(CLASS_NAMES[1:])
    assert [c["colour"] for c in page["classes"]] == ["#" + bytes(OVERLAY_COLORS[i]).hex() for i in range(1, 9)]


def test_embedded_slices_are_small_images_and_palette_label_maps_in_the_overlay_colours(tmp_path: Path) -> None:
    image, label, pred = _volumes(depth=12, size=300)
    pred[7, 100:120, 100:120] = 3
    with HtmlReport(tmp_path / "report.html", CLASS_NAMES, title="t <script>", max_side=128, stride=5) as page:
        record = page.add_case("c1", image, pred, label=label, spacing=(2.0, 0.5, 1.0))
        path = page.finish(notes=["a note"])
    text = path.read_text()
    assert "<title>t &lt;script&gt;</title>" in text
    (case,) = _case_chunks(text)
    assert case["z"] == record["shown"] == [0, 3, 4, 5, 6, 7, 8, 10]  # foreground 3..8, and a stride of 5
    assert case["shown"] == [128, 128] and case["aspect"] == pytest.approx(0.5)  # 0.5 mm rows, 1 mm columns
    assert case["scores"]["3"][7] == 400 and sum(case["scores"]["3"]) == 400
    grey = Image.open(io.BytesIO(base64.b64decode(case["img"][0])))
    assert grey.format == "JPEG" and grey.mode == "L" and grey.size == (128, 128)
    labels = Image.open(io.BytesIO(base64.b64decode(case["gt"][case["z"].index(4)])))
    assert labels.format == "PNG" and labels.mode == "P" and labels.info.get("transparency") == 0
    palette = np.array(labels.getpalette()[: 3 * len(OVERLAY_COLORS)]).reshape(-1, 3)
    np.testing.assert_array_equal(palette, OVERLAY_COLORS)
    ids = np.asarray(labels)
    assert set(np.unique(ids).tolist()) == {0, 1, 6}  # nearest neighbour: no new ids at the borders
    assert len(text) < 75_000  # 8 slices: about 6 kB each, and the page's own 40 kB


def test_colour_images_and_images_outside_the_unit_range(tmp_path: Path) -> None:
    image, label, pred = _volumes(depth=9)
    rgb = np.stack([image, 1 - image, image], axis=-1)
    with HtmlReport(tmp_path / "report.html", CLASS_NAMES, title="x") as page:
        page.add_case("rgb", rgb, pred, label=label, word="image")
        page.add_case("hu", image * 400 - 125, pred, label=label)  # not the unit representation: percentiles
        path = page.finish()
    rgb_case, hu_case = _case_chunks(path.read_text())
    picture = Image.open(io.BytesIO(base64.b64decode(rgb_case["img"][0])))
    assert picture.mode == "RGB" and rgb_case["word"] == "image"
    grey = np.asarray(Image.open(io.BytesIO(base64.b64decode(hu_case["img"][0]))), dtype=float)
    assert grey.min() < 30 and grey.max() > 225  # stretched to the 0.5-99.5 percentiles, not clipped to white


def test_an_interrupted_report_leaves_no_file_and_keeps_the_previous_one(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("previous")
    image, label, pred = _volumes()
    with pytest.raises(RuntimeError), HtmlReport(target, CLASS_NAMES, title="x") as page:
        page.add_case("c1", image, pred, label=label)
        raise RuntimeError("interrupted")
    assert target.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with HtmlReport(target, CLASS_NAMES, title="x") as page:
        with pytest.raises(ValueError, match="ground truth"):
            page.add_case("c1", image, pred)
        with pytest.raises(ValueError, match="does not match"):
            page.add_case("c1", image[:3], pred, label=label)
        page.finish()
    assert _case_chunks(target.read_text()) == []
    with pytest.raises(ValueError, match="at most 16 classes"):
        HtmlReport(tmp_path / "big.html", [f"c{i}" for i in range(17)], title="x")


def test_curves_come_from_the_run_folder_when_it_agrees_with_the_checkpoint(tmp_path: Path) -> None:
    ckpt_path = tmp_path / "best.pt"
    run = [*ONE_EPOCH, {**ONE_EPOCH[0], "epoch": 2, "train_loss": 0.5}]
    ckpt = {"history": ONE_EPOCH, "epoch": 1}
    assert _training_history(ckpt_path, {}) == (None, "", None)
    rows, note, mark = _training_history(ckpt_path, ckpt)
    assert rows == ONE_EPOCH and "recorded in the checkpoint" in note and mark == 1
    write_metrics_csv(tmp_path / "metrics.csv", run)
    rows, note, mark = _training_history(ckpt_path, ckpt)
    assert [r["epoch"] for r in rows] == [1.0, 2.0] and "metrics.csv" in note and mark == 1
    write_metrics_csv(tmp_path / "metrics.csv", [{**ONE_EPOCH[0], "train_loss": 0.1}])  # another run's file
    rows, note, _ = _training_history(ckpt_path, ckpt)
    assert rows == ONE_EPOCH and "recorded in the checkpoint" in note


# ---------------------------------------------------------------------------------------------------------------------
# In a real browser
# ---------------------------------------------------------------------------------------------------------------------

_INSTALL = (
    "needs Chromium, its driver and selenium: `apt-get install -y chromium chromium-driver` (Debian/Ubuntu) and "
    "`pip install selenium` (in the dev extra)"
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by selenium with the system's chromedriver (no driver download, no network).

    Skips locally when something is missing (with how to install it); fails in CI (``CI=true``), where
    ``.ci/run`` installs it.
    """
    missing = []
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    missing += [name for name, found in (("chromium", binary), ("chromedriver", driver_path)) if not found]
    if missing:
        message = f"browser test: {', '.join(missing)} not found; {_INSTALL}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1300,1600",
    ):
        options.add_argument(arg)
    # no network: any request leaving the file (a CDN script, a web font) fails and shows in the console log
    for arg in (
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(driver, path: Path) -> list[dict[str, Any]]:
    """Load ``path`` from disk; returns the console messages of the load (the log is read and emptied)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri())
    try:
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    except TimeoutException:
        pytest.fail(f"the page script did not finish; console: {driver.get_log('browser')}")
    return driver.get_log("browser")


def _shown(viewer) -> tuple[str, str]:
    """(slice number on the label, the image's data URI) of a slice browser."""
    from selenium.webdriver.common.by import By

    label = viewer.find_element(By.CSS_SELECTOR, ".slice-label").get_attribute("data-z")
    return label, viewer.find_element(By.CSS_SELECTOR, "figure.panel img.base").get_attribute("src")


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    """Save a screenshot in ``tmp_path`` (and in ``$MSA2NET_SCREENSHOTS`` when set, to look at)."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    folder = os.environ.get("MSA2NET_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(folder) / name)
    return path


def test_report_in_a_browser_slider_and_arrow_keys_change_the_slice(browser, evaluated, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out, summary = evaluated
    log = _open(browser, out / "report.html")
    errors = [entry for entry in log if entry["level"] in ("SEVERE", "ERROR")]
    assert not errors, f"console errors: {errors}"

    viewer = browser.find_element(By.CSS_SELECTOR, "details.case[open] .viewer")
    slider = viewer.find_element(By.CSS_SELECTOR, "input.slice-slider")
    shown = json.loads(browser.execute_script("return document.querySelector('script.case-data').textContent"))["z"]
    assert len(shown) >= 3 and int(slider.get_attribute("max")) == len(shown) - 1
    # with the pointer: a click at the right end of the slider, then a drag of the thumb to the far left
    ActionChains(browser).move_to_element_with_offset(slider, slider.size["width"] // 2 - 2, 0).click().perform()
    last = _shown(viewer)
    assert last[0] == str(shown[-1]), "the slider did not move to the last shown slice"
    ActionChains(browser).click_and_hold(slider).move_by_offset(-slider.size["width"] // 2 - 4, 0).release().perform()
    first = _shown(viewer)
    assert first[0] == str(shown[0]) and first[1] != last[1], "the slider did not change the slice shown"
    # arrow keys on the page (not on the slider) move the browser that was clicked last
    viewer.find_element(By.CSS_SELECTOR, "figure.panel img.base").click()
    assert browser.switch_to.active_element.tag_name != "input"  # the page's handler will move it, not the slider
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT).perform()
    after = _shown(viewer)
    assert after[0] == str(shown[1]) and after[1] != first[1], "the right arrow did not show the next slice"
    ActionChains(browser).send_keys(Keys.END).perform()
    assert _shown(viewer) == last
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()
    assert _shown(viewer)[0] == str(shown[-2])

    # one overlay, toggled with "t"; the opacity reaches the label layer
    ActionChains(browser).send_keys("t").perform()
    panels = viewer.find_elements(By.CSS_SELECTOR, "figure.panel")
    assert len(panels) == 1 and panels[0].find_element(By.TAG_NAME, "figcaption").text == "prediction"
    assert panels[0].find_element(By.CSS_SELECTOR, "img.lab").value_of_css_property("opacity") == "0.4"

    # the per-case table: worst Dice first, a click on a header sorts, a click on a row opens that case
    page = json.loads(browser.execute_script("return document.getElementById('page').textContent"))
    dice_column = [c["key"] for c in page["case_columns"]].index("dice")

    def dice_cells() -> list[float]:
        cells = browser.find_elements(By.CSS_SELECTOR, f"#case-table tbody tr td:nth-child({dice_column + 1})")
        return [float(c.text) for c in cells if c.text != "n/a"]

    values = dice_cells()
    assert len(values) == len(summary["cases"]) and values == sorted(values)
    browser.find_element(By.CSS_SELECTOR, "#case-table th[data-key=dice]").click()
    assert dice_cells() == sorted(values, reverse=True)
    second_case = browser.find_elements(By.CSS_SELECTOR, "details.case")[1]
    assert second_case.get_attribute("open") is None
    name = second_case.get_attribute("data-case")
    next(r for r in browser.find_elements(By.CSS_SELECTOR, "#case-table tbody tr") if r.text.startswith(name)).click()
    assert second_case.get_attribute("open") is not None

    # one epoch of training: a visible point per curve and integer epoch ticks
    for chart in ("chart-dice", "chart-loss", "chart-lr"):
        ticks = [t.text for t in browser.find_elements(By.CSS_SELECTOR, f"#{chart} text.xtick")]
        assert ticks == ["1"], (chart, ticks)
        assert browser.find_elements(By.CSS_SELECTOR, f"#{chart} circle.marker")

    browser.execute_script("document.querySelector('details.case[open]').scrollIntoView()")
    _screenshot(browser, tmp_path, "report-case.png")
    browser.execute_script("window.scrollTo(0, 0)")
    shot = _screenshot(browser, tmp_path, "report.png")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    for colour in OVERLAY_COLORS[1:4]:  # the legend swatches are drawn in the overlay colours
        assert np.all(pixels == colour, axis=-1).sum() >= 40
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert not errors, f"console errors while interacting: {errors}"


def test_prediction_report_in_a_browser(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    image, _, pred = _volumes(depth=9)
    with HtmlReport(tmp_path / "report.html", CLASS_NAMES, title="predict", kind="prediction") as page:
        page.add_case("scan.nii.gz", image, pred, spacing=(3.0, 1.0, 1.0))
        page.add_case("photo.png", image[:1], pred[4:5], word="image")
        record = {"cases": [{"input": "scan.nii.gz", "shape": [9, 40, 40], "spacing": [1, 1, 3], "counts": {}}]}
        page.finish(predictions=record)
    log = _open(browser, tmp_path / "report.html")
    assert not [e for e in log if e["level"] in ("SEVERE", "ERROR")], log
    viewer = browser.find_element(By.CSS_SELECTOR, "details.case[open] .viewer")
    captions = [f.text for f in viewer.find_elements(By.CSS_SELECTOR, "figure.panel figcaption")]
    assert captions == ["image", "prediction"]  # no ground truth
    viewer.find_element(By.CSS_SELECTOR, "figure.panel img.base").click()
    before = _shown(viewer)
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()
    assert _shown(viewer)[0] != before[0]
    _screenshot(browser, tmp_path, "predict.png")
    assert not [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_pooled_isic_report_in_a_browser(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from msa2net.reporting.aggregate import PooledBinaryMetrics
    from msa2net.reporting.summary import build_isic_summary

    image, label, pred = _volumes(depth=9)
    label, pred = (label > 0).astype(np.int64), (pred > 0).astype(np.int64)
    pooled = PooledBinaryMetrics()
    pooled.update(pred, label)
    summary = build_isic_summary(pooled, {"model": "msa2net_test"}, n_images=9)
    rgb = np.stack([image, image * 0.8, image * 0.6], axis=-1)
    with HtmlReport(tmp_path / "report.html", ["background", "lesion"], title="isic") as page:
        page.add_case("isic_test", rgb, pred, label=label, word="image")
        page.finish(evaluation=summary)
    log = _open(browser, tmp_path / "report.html")
    assert not [e for e in log if e["level"] in ("SEVERE", "ERROR")], log
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#summary td")]
    assert cells[0] == "percent" and f"{100 * summary['pooled']['dsc']:.2f}" in cells
    assert not browser.find_elements(By.CSS_SELECTOR, "#case-table")  # pooled scores have no per-case rows
    viewer = browser.find_element(By.CSS_SELECTOR, "details.case[open] .viewer")
    assert viewer.find_element(By.CSS_SELECTOR, ".slice-label").text.startswith("image ")
