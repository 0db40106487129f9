"""Inference runtimes against the authors' procedure and torch float32, in one run; JSON on stdout.

* ``speed``: one phantom CT case (default 100 x 512 x 512, ``msa2net_paper`` at 224 x 224, untrained weights),
  segmented end to end (intensity mapping and resizing included) in interleaved rounds by the authors' loop and
  ``predict_volume`` on torch fp32, torch bf16 autocast, ONNX Runtime fp32, OpenVINO fp32, bf16 and int8 (NNCF on
  slices of the phantom's training cases; untrained weights make its labels meaningless, so only its speed counts
  here); slices per second, the ratio to the authors' loop per round (median, min, max), and the share of labels
  identical to torch fp32.
* ``evaluate``: ``msa2net evaluate`` of that case end to end on the fastest float runtime against the authors' loop
  + MedPy (as ``bench_evaluate.py``).
* ``agreement`` (with ``--aal DIR``, the output folder of ``bench_aal.py``: a model trained by the aal preset and
  its prepared data): each runtime's labels on the AAL test hemisphere against torch fp32 (share of identical voxels,
  Dice change per lobe), and an int8 model made by ``msa2net export --int8`` with its agreement gate.

The CPU's instruction sets go into the JSON, since bf16 and int8 gains depend on them::

    python benchmarks/bench_backends.py --aal aal_out                     # about 40 min on a quiet 2-core CPU
    python benchmarks/bench_backends.py --slices 12 --size 256 --rounds 2 --parts speed
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import legacy_reference  # noqa: E402
from bench_evaluate import CPU_TIMES, interleaved, phantom_case, ratio, summary  # noqa: E402

import msa2net  # noqa: E402
from msa2net.data.registry import open_source  # noqa: E402
from msa2net.engine.backends import BackendError, load_backend  # noqa: E402
from msa2net.engine.inference import RuntimeModel, predict_volume  # noqa: E402

PARTS = ("speed", "evaluate", "agreement")
RUNTIMES = {
    "torch_fp32": ("torch", "fp32"),
    "torch_bf16": ("torch", "bf16"),
    "ort_fp32": ("onnxruntime", "fp32"),
    "openvino_fp32": ("openvino", "fp32"),
    "openvino_bf16": ("openvino", "bf16"),
}
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> dict[str, bool]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    words = set(text.split())
    return {flag: flag in words for flag in FLAGS}


def _int8_runtime(model: msa2net.MSA2Net, case: Any, prep: Any, slices: int) -> torch.nn.Module:
    """NNCF int8 of ``model`` calibrated on slices of the case itself (no gate: for speed only)."""
    import nncf
    import openvino as ov

    from msa2net.engine.export import convert_openvino
    from msa2net.engine.inference import model_input

    picks = np.linspace(0, len(case.image) - 1, min(slices, len(case.image))).round().astype(int)
    data = [model_input(case.image[z], prep, model.img_size)[None] for z in picks]
    graph = nncf.quantize(
        convert_openvino(model), nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(data)
    )
    compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return RuntimeModel(lambda x: compiled(x)[0], model, "openvino-int8")


def bench_speed(model: msa2net.MSA2Net, prepared: Path, case: Any, args: argparse.Namespace, log: Any) -> dict:
    prep = open_source(prepared).preprocessing.unit_input()
    runtimes, unavailable = {}, {}
    for name, (backend, precision) in RUNTIMES.items():
        try:
            runtimes[name] = load_backend(model, backend, "fp32" if backend == "torch" else precision)
        except BackendError as err:  # e.g. bf16 on a CPU without it: said in the JSON, not measured
            unavailable[name] = str(err)
    runtimes["openvino_int8"] = _int8_runtime(model, case, prep, args.calibration_slices)

    def ours(name: str) -> Any:
        amp = "bf16" if name == "torch_bf16" else None
        return lambda: predict_volume(runtimes[name], case.image, preprocessing=prep, batch_size=args.batch, amp=amp)

    variants = {"authors": lambda: legacy_reference.legacy_single_volume_labels(model, case.image, model.img_size)}
    variants.update({name: ours(name) for name in runtimes})
    times, labels = interleaved(variants, args.rounds, log, "speed/")
    reference = labels["torch_fp32"]
    depth = case.image.shape[0]
    return {
        "slices": depth,
        "times": {name: summary(t, CPU_TIMES["speed/" + name]) for name, t in times.items()},
        "slices_per_s": {name: round(depth / float(np.median(t)), 2) for name, t in times.items()},
        "speedup_vs_authors": {name: ratio(times["authors"], t) for name, t in times.items() if name != "authors"},
        "identical_to_torch_fp32": {name: float(np.mean(v == reference)) for name, v in labels.items()},
        "unavailable": unavailable,
    }


def bench_evaluate(model: msa2net.MSA2Net, prepared: Path, case: Any, args: argparse.Namespace, log: Any) -> dict:
    from msa2net.data.synapse import CLASS_NAMES
    from msa2net.engine.checkpoint import make_checkpoint, save_checkpoint
    from msa2net.engine.evaluate import evaluate

    folder = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # scratch: gone when the script ends
    checkpoint = folder / "untrained.pt"
    prep = open_source(prepared).preprocessing
    save_checkpoint(make_checkpoint(model, args.model_name, prep.to_dict(), list(CLASS_NAMES)), checkpoint)
    backend, precision = args.evaluate_backend.split("-")

    def ours() -> None:
        evaluate(checkpoint, prepared, folder / "eval", device="cpu", progress=False, batch_size=args.batch,
                 backend=backend, precision=precision)  # fmt: skip

    def authors() -> None:
        labels = legacy_reference.legacy_single_volume_labels(model, case.image, model.img_size)
        legacy_reference.legacy_case_metrics_medpy(labels, case.label, 9)

    times, _ = interleaved({"authors": authors, "ours_evaluate": ours}, args.rounds, log, "evaluate/")
    return {
        "backend": args.evaluate_backend,
        "times": {name: summary(t, CPU_TIMES["evaluate/" + name]) for name, t in times.items()},
        "speedup_vs_authors": ratio(times["authors"], times["ours_evaluate"]),
    }


def bench_agreement(aal: Path, args: argparse.Namespace, log: Any) -> dict:
    from msa2net.engine.checkpoint import resolve_checkpoint_path
    from msa2net.engine.evaluate import evaluate
    from msa2net.engine.export import export_model
    from msa2net.engine.quantize import QuantizationError

    checkpoint = resolve_checkpoint_path(aal / "run")
    out = Path(tempfile.mkdtemp(prefix="bench_backends_aal_"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # scratch: gone when the script ends
    common = {"device": "cpu", "progress": False, "html": False, "overlays_per_case": 0, "compare_fp32": True}
    result: dict[str, Any] = {"checkpoint": str(checkpoint)}
    for name, (backend, precision) in RUNTIMES.items():
        if name == "torch_fp32":
            continue
        amp = "bf16" if name == "torch_bf16" else None
        backend, precision = ("torch", "fp32") if name == "torch_bf16" else (backend, precision)
        summary_ = evaluate(checkpoint, aal / "data", out / name, backend=backend, precision=precision, amp=amp,
                            **common)  # fmt: skip
        check = summary_["settings"]["amp_check"]
        result[name] = {k: check[k] for k in ("identical_fraction", "per_class_dice_change", "n_cases")}
        log(f"agreement {name}: {check['identical_fraction']:.5f} identical")
    start = time.perf_counter()
    try:
        export = export_model(checkpoint, out / "int8", formats=("onnx",), int8_calibration=aal / "data",
                              calibration_count=args.calibration_slices)  # fmt: skip
        record = json.loads(export["config"].read_text())["exports"]["openvino"]["int8"]
        result["openvino_int8"] = {"published": True, **record}
    except QuantizationError as err:
        result["openvino_int8"] = {"published": False, "refused": str(err)}
    result["openvino_int8"]["export_s"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=100, help="slices of the phantom case (default 100)")
    parser.add_argument("--size", type=int, default=512, help="in-plane size of the case (default 512)")
    parser.add_argument("--model", dest="model_name", default="msa2net_paper", help="registered model name")
    parser.add_argument("--img-size", type=int, default=224, help="model input size (default 224)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--batch", type=int, default=16, help="slices per step (evaluate's default, 16)")
    parser.add_argument("--calibration-slices", type=int, default=300, help="int8 calibration slices (300)")
    parser.add_argument("--evaluate-backend", default="openvino-bf16", help="runtime of the evaluate part")
    parser.add_argument("--aal", type=Path, help="bench_aal.py's output folder (for the agreement part)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]

    def log(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    torch.manual_seed(args.seed)
    model = msa2net.create_model(args.model_name, num_classes=9, in_channels=1, img_size=args.img_size).eval()
    report: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "flags": cpu_flags(),
        },  # fmt: skip
        "versions": {"torch": torch.__version__, "msa2net": msa2net.__version__},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "quiet", "aal")},
    }
    with contextlib.suppress(ImportError):
        import onnxruntime
        import openvino

        report["versions"].update(onnxruntime=onnxruntime.__version__, openvino=openvino.__version__)
    root = Path(tempfile.mkdtemp(prefix="bench_backends_case_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # scratch: gone when the script ends
    if "speed" in parts or "evaluate" in parts:
        prepared, case = phantom_case(root, args.slices, args.size, args.seed)
        with torch.inference_mode():
            if "speed" in parts:
                report["speed"] = bench_speed(model, prepared, case, args, log)
            if "evaluate" in parts:
                report["evaluate"] = bench_evaluate(model, prepared, case, args, log)
    if "agreement" in parts and args.aal is not None:
        report["agreement"] = bench_agreement(args.aal, args, log)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
