"""The built-in demo: phantom CT -> prepare -> train a small MSA2Net on CPU -> evaluate -> predict -> report."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from .._atomic import atomic_path
from .._json import write_json
from ..config import load_config
from ..reporting.demo import write_demo_report

#: 2 test cases (the official split) and 8 training cases, one of which validates
DEMO_CASES = ("0001", "0002", "0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024")


def run_demo(
    out_dir: str | Path = "demo_out",
    overrides: list[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole product on built-in data and write ``out_dir/report.md`` and ``out_dir/report.html``.

    Steps: CT phantom in the BTCV raw layout (``data/raw``), ``prepare synapse`` (``data/Synapse``), training of
    the ``demo`` preset (``run``; held-out phantom cases validate), legacy + millimetre evaluation on the phantom
    test cases (``eval``), prediction on a raw NIfTI phantom scan (``predict``). ``report.html`` is the
    evaluation's page (``eval/report.html``: tables, per-case table, curves, slice browsers) with a note on the
    demo; ``predict/report.html`` browses the predicted scan.

    Returns:
        ``{"mean_dice": legacy mean Dice on the test cases, "mean_hd95_mm": ..., "report": path, "html": path,
        "seconds": {...}}``
    """
    from ..data.phantom import make_synapse_phantom
    from ..data.synapse_prepare import prepare_synapse
    from .evaluate import evaluate
    from .predict import predict_files
    from .train import train

    out = Path(out_dir)
    raw, prepared = out / "data" / "raw", out / "data" / "Synapse"
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def step(name: str) -> None:
        seconds[name] = round(time.perf_counter() - start - sum(seconds.values()), 1)
        print(f"[demo] {name} done ({seconds[name]:.1f} s)", flush=True)

    print(f"[demo] writing the CT phantom to {raw}", flush=True)
    make_synapse_phantom(raw, cases=DEMO_CASES, seed=seed)
    step("phantom")
    prepare_synapse(raw, prepared, progress=progress)
    step("prepare")
    cfg = load_config(
        "demo", [f"data.root={prepared}", f"out_dir={out / 'run'}", f"train.device={device}", *(overrides or [])]
    )
    cfg.train.progress = progress and cfg.train.progress
    result = train(cfg, overwrite=True)  # the demo redoes its own run
    step("train")
    best = Path(result["best"])
    notes = [
        f"The msa2net demo: a small MSA2Net ({cfg.model.name}, {cfg.model.img_size[0]}x{cfg.model.img_size[1]}) "
        f"trained from scratch on the built-in CT phantom ({len(DEMO_CASES)} synthetic cases in the BTCV layout, "
        f"prepared exactly as the Synapse data), evaluated here on the phantom's test cases. Best validation Dice "
        f"{result['best_mean_dice']:.4f} at epoch {result['best_epoch']}. Seconds so far: "
        + ", ".join(f"{k} {v}" for k, v in seconds.items())
        + "."
    ]
    summary = evaluate(best, prepared, out / "eval", device=device, progress=False, notes=notes)
    step("evaluate")
    scan = sorted((raw / "RawData" / "Training" / "img").glob("img0001.nii*"))
    report = predict_files(best, scan, out / "predict", device=device, overlays=True, progress=False)
    if not report.ok:
        raise RuntimeError("demo prediction failed: " + "; ".join(report.failure_lines()))
    step("predict")

    overlays = sorted((out / "eval" / "overlays").glob("*.png"))[:6]
    shutil.copyfile(out / "run" / "curves.png", out / "curves.png")
    with atomic_path(out / "report.html") as tmp:
        shutil.copyfile(out / "eval" / "report.html", tmp)
    write_demo_report(
        out / "report.md",
        model_name=cfg.model.name,
        img_size=cfg.model.img_size,
        n_cases=len(DEMO_CASES),
        evaluation=summary,
        table=(out / "eval" / "table.md").read_text(),
        best_mean_dice=result["best_mean_dice"],
        best_epoch=result["best_epoch"],
        curves="curves.png",
        overlays=[p.relative_to(out).as_posix() for p in overlays],
        seconds=seconds,
    )
    outcome = {
        "mean_dice": summary["legacy"]["mean_dice"],
        "mean_hd95_voxels": summary["legacy"]["mean_hd95_voxels"],
        "mean_hd95_mm": summary["mm"]["mean_hd95_mm"],
        "per_class_dice": summary["legacy"]["per_class_dice"],
        "report": str(out / "report.md"),
        "html": str(out / "report.html"),
        "seconds": seconds,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "demo_summary.json", outcome)
    return outcome
