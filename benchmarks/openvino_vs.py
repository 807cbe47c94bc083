"""OpenVINO vs TFLite vs ONNX Runtime, FP32 and INT8, in ONE interleaved run per model (random-weight Keras
applications at 224x224; weights do not change latency).

    python benchmarks/openvino_vs.py [--models resnet50 mobilenet_v2] [--threads 1] [--rounds 8] [--runs 15]

Per model it makes (cached under $EDGEQ_BENCH_DIR, default /tmp/edgeq_bench) with edgeq's own code: FP32/INT8
TFLite (TFLite converter), FP32/INT8 ONNX (ORT static, host scheme), the FP32 OpenVINO IR from the FP32 ONNX
(ov.convert_model, no FP16 compression), NNCF INT8 on the IR and NNCF INT8 QDQ on the ONNX (run by ORT and by
OpenVINO, which reads the .onnx directly, as edgeq's host benchmark times it). Every
artifact is timed in the same rotating rounds (edgeq.targets.interleave.round_orders); a ratio is computed per
round and summarised as the median with a 95 % order-statistic interval. OpenVINO runs with its inference
precision set and read back: f32 for the FP32 and INT8 IRs, and the same FP32 IR with OpenVINO's bf16 hint (what
its default picks on CPUs with AVX512-BF16/AMX) beside it, so the silent-bf16 figure is visible as what it is.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import artifacts, calibration_images, fmt_ci, interleaved, median_ci, ratio_ci, work_dir  # noqa: E402

from edgeq.core.sysinfo import cpu_info  # noqa: E402


def openvino_artifacts(paths: dict, cal_nchw: np.ndarray, log=print) -> dict[str, Path]:
    """fp32.openvino (from fp32.onnx), int8_nncf.openvino and int8_nncf.onnx beside the other artifacts (cached)."""
    import time

    from edgeq.methods.onnx.from_keras import INPUT_NAME
    from edgeq.methods.openvino import nncf_routes
    from edgeq.methods.openvino.convert import onnx_to_ir

    d = paths["fp32_onnx"].parent
    out = {"fp32_openvino": d / "fp32.openvino", "int8_openvino_nncf": d / "int8_nncf.openvino",
           "int8_onnx_nncf": d / "int8_nncf.onnx"}
    opts = nncf_routes.NncfOptions(None, True, len(cal_nchw), None)
    steps = {"fp32_openvino": lambda p: onnx_to_ir(paths["fp32_onnx"], p),
             "int8_openvino_nncf": lambda p: nncf_routes.quantize_ir(out["fp32_openvino"], p, cal_nchw, opts),
             "int8_onnx_nncf": lambda p: nncf_routes.quantize_onnx(paths["fp32_onnx"], p, cal_nchw, INPUT_NAME, opts)}
    for name, make in steps.items():
        if not out[name].exists():
            t = time.perf_counter()
            make(out[name])
            log(f"  made {name} in {time.perf_counter() - t:.1f} s")
    return out


def predictors(paths: dict, threads: int) -> dict:
    """label -> (runtime, precision, predictor). The labels name the runtime and, for OpenVINO, the precision run."""
    from edgeq.measure.predictors import OnnxPredictor, OpenVINOPredictor, TFLitePredictor

    ov_bf16 = OpenVINOPredictor(paths["fp32_openvino"], threads=threads, inference_precision="bf16")
    return {
        "TFLite FP32": ("tflite", "fp32", TFLitePredictor(paths["fp32_tflite"], threads=threads)),
        "TFLite INT8": ("tflite", "int8", TFLitePredictor(paths["int8_tflite"], threads=threads)),
        "ORT FP32": ("ort", "fp32", OnnxPredictor(paths["fp32_onnx"], threads=threads)),
        "ORT INT8": ("ort", "int8", OnnxPredictor(paths["int8_onnx"], threads=threads)),
        "ORT INT8 (NNCF QDQ)": ("ort", "int8", OnnxPredictor(paths["int8_onnx_nncf"], threads=threads)),
        "OpenVINO FP32 (f32)": ("openvino", "fp32", OpenVINOPredictor(paths["fp32_openvino"], threads=threads)),
        f"OpenVINO FP32 ({ov_bf16.inference_precision} hint)": ("openvino", "bf16", ov_bf16),
        "OpenVINO INT8 (NNCF, f32)": ("openvino", "int8",
                                      OpenVINOPredictor(paths["int8_openvino_nncf"], threads=threads)),
        "OpenVINO INT8 (NNCF QDQ, f32)": ("openvino", "int8",
                                          OpenVINOPredictor(paths["int8_onnx_nncf"], threads=threads)),
    }


def report(name: str, preds: dict, meds: dict[str, list[float]]) -> None:
    print(f"\n{name}: median ms per image (95 % interval over {len(next(iter(meds.values())))} rounds)")
    for label, (_, _, p) in preds.items():
        print(f"  {label:<30}{fmt_ci(median_ci(meds[label]), '.3f'):>28}   {p.runtime}")
    fp32 = {"tflite": "TFLite FP32", "ort": "ORT FP32", "openvino": "OpenVINO FP32 (f32)"}
    print("  INT8 / FP32 of the same runtime (per-round ratios):")
    for label, (rt, prec, _) in preds.items():
        if prec == "int8":
            print(f"    {label:<30}{fmt_ci(ratio_ci(meds[label], meds[fp32[rt]])):>24}  x {fp32[rt]}")
    best = {}
    for rt in fp32:
        int8 = [lab for lab, (r, p, _) in preds.items() if r == rt and p == "int8"]
        best[rt] = min(int8, key=lambda lab: np.median(meds[lab]))
    print("  best INT8 per runtime, against each other (per-round ratios):")
    pairs = [("openvino", "tflite"), ("openvino", "ort"), ("ort", "tflite")]
    for a, b in pairs:
        print(f"    {best[a]} / {best[b]}: {fmt_ci(ratio_ci(meds[best[a]], meds[best[b]]))}")
    qdq_ov, qdq_ort = "OpenVINO INT8 (NNCF QDQ, f32)", "ORT INT8 (NNCF QDQ)"
    print(f"  NNCF's QDQ ONNX, {qdq_ov} / {qdq_ort}: {fmt_ci(ratio_ci(meds[qdq_ov], meds[qdq_ort]))}"
          "  (one artifact, two runtimes)")
    bf16 = next(lab for lab, (_, p, _) in preds.items() if p == "bf16")
    print(f"  {bf16} / OpenVINO FP32 (f32): {fmt_ci(ratio_ci(meds[bf16], meds['OpenVINO FP32 (f32)']))}"
          "  (an OpenVINO 'FP32' figure without its precision may be this one)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"], choices=["resnet50", "mobilenet_v2"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    cpu = cpu_info()
    print(f"{cpu['model']} (SIMD {', '.join(cpu['simd'])}), {a.threads} thread(s), batch 1, {a.size}x{a.size}, "
          f"{a.rounds} interleaved rounds x {a.runs} runs (+{a.warmup} warm-up per round), random weights")
    for name in a.models:
        paths = artifacts(name, a.size, a.calibration, work_dir(), log=print)
        cal = calibration_images(a.calibration, a.size).transpose(0, 3, 1, 2).copy()
        paths.update(openvino_artifacts(paths, cal))
        preds = predictors(paths, a.threads)
        x1 = calibration_images(1, a.size, seed=1)
        invokers = {}
        for label, (_, _, p) in preds.items():
            p.set_input(x1)
            invokers[label] = p.invoke
        before = os.getloadavg()
        meds = interleaved(invokers, a.rounds, a.runs, a.warmup)
        report(name, preds, meds)
        print(f"  load average before/after the rounds: {before[0]:.2f} / {os.getloadavg()[0]:.2f} "
              f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
