"""FP32 vs INT8 ONNX Runtime latency of a finished run, side by side, and (--schemes) the int8 scheme study.

    python benchmarks/onnx_latency.py runs/resnet50 [--threads 1] [--rounds 10] [--runs 30]
    python benchmarks/onnx_latency.py runs/mobilenet_v2 --schemes [--eval 2000]

The first form times the run's ONNX artifacts in alternating rounds (A B C A B C ...), each at the ORT
graph-optimisation level the pipeline runs it at, so a noisy neighbour hits all of them alike; ratios are
against fp32_onnx. With --schemes it re-quantizes the run's FP32 ONNX with each int8 scheme ORT offers (S8S8
symmetric as for TensorRT, U8S8, U8S8 with 7-bit weights, U8U8), then measures top-1 on the evaluation split at
ORT's full optimisation and with optimisation off (Q/DQ as written), the number of float Convs ORT leaves, and
the latency: the evidence behind `host_int8_scheme`. Every number is measured by this script.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeq.measure.predictors import OnnxPredictor  # noqa: E402
from edgeq.core.sysinfo import cpu_info  # noqa: E402

SCHEMES = {  # name -> (activation, weight, activation symmetric, reduce_range)
    "S8S8 symmetric (TensorRT)": ("int8", "int8", True, False),
    "U8S8": ("uint8", "int8", False, False),
    "U8S8 reduce_range": ("uint8", "int8", False, True),
    "U8U8": ("uint8", "uint8", False, False),
}


def interleaved(preds: dict, x1: np.ndarray, rounds: int, runs: int, warmup: int) -> dict[str, np.ndarray]:
    samples: dict[str, list[float]] = {n: [] for n in preds}
    for p in preds.values():
        p.time_runs(x1, runs=1, warmup=warmup)
    for _ in range(rounds):
        for n, p in preds.items():
            samples[n] += p.time_runs(x1, runs=runs, warmup=0)
    return {n: np.asarray(s) for n, s in samples.items()}


def side_by_side(run_dir: Path, a) -> None:
    man = json.loads((run_dir / "manifest.json").read_text())
    arts = [x for x in man["artifacts"] if x["format"] == "onnx"]
    if not any(x["name"] == "fp32_onnx" for x in arts):
        sys.exit(f"{run_dir}: no fp32_onnx artifact; run with stages.onnx_ptq.enabled: true")
    preds = {x["name"]: OnnxPredictor(run_dir / x["path"], threads=a.threads,
                                      graph_optimization=x["notes"].get("graph_optimization", "all")) for x in arts}
    x1 = _sample(preds["fp32_onnx"])
    s = interleaved(preds, x1, a.rounds, a.runs, a.warmup)
    cpu = cpu_info()
    print(f"{man['model']}: {cpu['model']} (SIMD {', '.join(cpu['simd'])}), {a.threads} thread(s), "
          f"{a.rounds}x{a.runs} interleaved runs, batch 1")
    ref = np.median(s["fp32_onnx"])
    size = {x["name"]: x["size_bytes"] for x in arts}
    print(f"{'artifact':<16}{'ORT opt':>9}{'median ms':>11}{'p90 ms':>9}{'x FP32':>8}{'size x FP32':>13}")
    for x in arts:
        n = x["name"]
        print(f"{n:<16}{preds[n].graph_optimization:>9}{np.median(s[n]):>11.3f}{np.percentile(s[n], 90):>9.3f}"
              f"{np.median(s[n]) / ref:>8.3f}{size[n] / size['fp32_onnx']:>13.3f}")


def _sample(pred: OnnxPredictor) -> np.ndarray:
    shape = [d if d and d > 0 else 1 for d in pred.input_shape]
    return np.random.default_rng(0).uniform(-1, 1, [1, *shape[1:]]).astype(np.float32)


def scheme_study(run_dir: Path, a) -> None:
    from edgeq.core.config import load_config
    from edgeq.run.inputs import load_splits, preprocess_of
    from edgeq.methods.onnx.ort_int8 import Int8Scheme, host_op_types, ort_kernel_summary, quantize_onnx

    man = json.loads((run_dir / "manifest.json").read_text())
    fp32 = next(x for x in man["artifacts"] if x["name"] == "fp32_onnx")
    cfg = load_config(man["config"])
    pre = preprocess_of(cfg)
    splits = load_splits(cfg, pre)
    n_cal = cfg.stages.onnx_ptq.calibration_images
    cal = pre(splits.calibration.images[:n_cal])
    ev = splits.eval.take(np.arange(min(a.eval, len(splits.eval))))
    x, y = pre(ev.images), ev.labels
    fp32_pred = OnnxPredictor(run_dir / fp32["path"], threads=a.threads)
    nchw = fp32_pred.nchw
    rows = [("FP32", float((fp32_pred.predict(x).argmax(1) == y).mean()), None, 0, run_dir / fp32["path"])]
    with tempfile.TemporaryDirectory() as d:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = Path(d) / "prepared.onnx"
        quant_pre_process(str(run_dir / fp32["path"]), str(prepared))
        name = fp32_pred.input_name
        for label, (act, wt, sym, rr) in SCHEMES.items():
            out = Path(d) / f"{act}{wt}{int(sym)}{int(rr)}.onnx"
            scheme = Int8Scheme(act, wt, sym, rr, True, "qdq", True, label)
            quantize_onnx(prepared, out, scheme, cal, input_name=name, nchw=nchw, batch=None,
                          calibration_method=cfg.stages.onnx_ptq.calibration_method, exclude_nodes=[],
                          op_types=host_op_types("qdq"))
            top1 = float((OnnxPredictor(out, threads=a.threads).predict(x).argmax(1) == y).mean())
            off = OnnxPredictor(out, threads=a.threads, graph_optimization="disable")
            top1_off = float((off.predict(x).argmax(1) == y).mean())
            rows.append((label, top1, top1_off, ort_kernel_summary(out, "all")["float_convs"], out))
        preds = {r[0]: OnnxPredictor(r[4], threads=a.threads) for r in rows}
        s = interleaved(preds, _sample(preds["FP32"]), a.rounds, a.runs, a.warmup)
    cpu = cpu_info()
    print(f"{man['model']}: {cpu['model']} (SIMD {', '.join(cpu['simd'])}; int8 dot product: "
          f"{cpu['int8_dot_product']}), {len(y)} eval images, {n_cal} calibration, {a.threads} thread(s)")
    print(f"{'scheme':<28}{'top-1 opt=all':>14}{'top-1 opt=off':>14}{'float Conv':>11}{'median ms':>11}{'x FP32':>8}")
    ref = np.median(s["FP32"])
    for label, top1, off, fc, _ in rows:
        print(f"{label:<28}{top1:>14.4f}{'' if off is None else f'{off:.4f}':>14}{fc:>11}"
              f"{np.median(s[label]):>11.3f}{np.median(s[label]) / ref:>8.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--schemes", action="store_true", help="compare ORT int8 schemes (accuracy, float Convs, latency)")
    ap.add_argument("--eval", type=int, default=2000, help="--schemes: evaluation images used")
    a = ap.parse_args()
    (scheme_study if a.schemes else side_by_side)(a.run_dir, a)


if __name__ == "__main__":
    main()
