"""ONNX Runtime INT8 configurations against TFLite INT8 on ResNet-50@224 (1 thread, batch 1), interleaved.

    python benchmarks/ort_configs.py [--model resnet50] [--size 224] [--rounds 12] [--runs 10] [--calibration 32]

The random-weight model and its FP32/INT8 artifacts come from benchmarks/_common.py (edgeq's own conversion
code, cached). Each ORT configuration is one quantization (format QDQ/QOperator, activation x weight types,
per-channel or per-tensor weights, activation symmetry) run under one session setup (graph optimisation level:
"all" includes ORT's NHWC layout transformer for QLinearConv, "extended" does not; session config entries such
as session.qdqisint8allowed, which keeps int8 Q/DQ as int8 kernels on x86 instead of converting them to uint8).
All configurations and TFLite INT8 (XNNPACK) are timed in the same alternating rounds; the table gives each
one's median [95 % interval], its ratio to TFLite INT8 and to edgeq's default ORT config per round, what ORT's
optimiser made of it (integer vs float convolutions, Transposes, Q/DQ nodes left) and its output error against
FP32 ONNX on held-out noise images (SQNR, top-1 agreement) as the accuracy guard.
"""
from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from _common import (artifacts, calibration_images, fmt_ci, interleaved, median_ci, predictor_invoker, ratio_ci,
                     work_dir)


@dataclass(frozen=True)
class Quant:
    """One quantize_static setting (the model file); `name` is its file stem."""

    name: str
    quant_format: str = "qdq"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    activation_symmetric: bool = False


@dataclass(frozen=True)
class Config:
    """A model quantized one way, run under one session setup."""

    label: str
    quant: Quant
    level: str = "all"
    entries: dict = field(default_factory=dict)


QUANTS = {
    "u8s8_qdq": Quant("u8s8_qdq"),  # edgeq's host default on x86 with VNNI
    "u8s8_qdq_pertensor": Quant("u8s8_qdq_pertensor", per_channel=False),
    "u8s8_qop": Quant("u8s8_qop", quant_format="qoperator"),
    "s8s8_qdq_sym": Quant("s8s8_qdq_sym", activation_type="int8", activation_symmetric=True),
    "s8s8_qdq": Quant("s8s8_qdq", activation_type="int8"),
    "u8u8_qdq": Quant("u8u8_qdq", weight_type="uint8"),
}
CONFIGS = [
    Config("default: U8S8 QDQ per-channel, opt all", QUANTS["u8s8_qdq"]),
    Config("U8S8 QDQ per-channel, opt extended (no NHWC)", QUANTS["u8s8_qdq"], "extended"),
    Config("U8S8 QDQ per-channel, opt basic", QUANTS["u8s8_qdq"], "basic"),
    Config("U8S8 QDQ per-tensor, opt all", QUANTS["u8s8_qdq_pertensor"]),
    Config("U8S8 QOperator per-channel, opt all", QUANTS["u8s8_qop"]),
    Config("S8S8 QDQ symmetric, opt all", QUANTS["s8s8_qdq_sym"]),
    Config("S8S8 QDQ symmetric, opt all, qdqisint8allowed", QUANTS["s8s8_qdq_sym"], "all",
           {"session.qdqisint8allowed": "1"}),
    Config("S8S8 QDQ asymmetric, opt all", QUANTS["s8s8_qdq"]),
    Config("U8U8 QDQ, opt all", QUANTS["u8u8_qdq"]),
]


def quantize(q: Quant, fp32: Path, out: Path, cal: np.ndarray, size: int) -> None:
    from edgeq.methods.onnx.from_keras import INPUT_NAME
    from edgeq.loaders.onnx import OnnxInput
    from edgeq.methods.onnx.ort_int8 import Int8Scheme, host_op_types, prepare, quantize_onnx

    scheme = Int8Scheme(q.activation_type, q.weight_type, q.activation_symmetric, False, q.per_channel,
                        q.quant_format, True, q.name)
    with tempfile.TemporaryDirectory() as work:
        info = OnnxInput(INPUT_NAME, [None, 3, size, size], "NCHW", None)
        quantize_onnx(prepare(fp32, info, (size, size, 3), Path(work), q.name), out, scheme, cal,
                      input_name=INPUT_NAME, nchw=True, batch=None, calibration_method="minmax", exclude_nodes=[],
                      op_types=host_op_types(q.quant_format), name=q.name)


def session(path: Path, level: str, entries: dict, threads: int, optimized: Path | None = None):
    import onnxruntime as ort

    from edgeq.ondevice.agent import ort_session_options

    so = ort_session_options(ort, threads, level)
    for k, v in entries.items():
        so.add_session_config_entry(k, v)
    if optimized:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def kernels(path: Path, level: str, entries: dict) -> str:
    """What ORT's optimiser runs: integer / float convolutions, Transposes, Q/DQ nodes left."""
    import onnx

    with tempfile.TemporaryDirectory() as d:
        opt = Path(d) / "opt.onnx"
        session(path, level, entries, 1, opt)
        ops = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    integer = sum(ops[o] for o in ("QLinearConv", "ConvInteger"))
    flt = sum(ops[o] for o in ("Conv", "FusedConv", "NchwcConv"))
    qdq = ops["QuantizeLinear"] + ops["DequantizeLinear"]
    return f"conv int/float {integer}/{flt}, Transpose {ops['Transpose']}, Q/DQ {qdq}"


def error_vs_fp32(sess, ref: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    name = sess.get_inputs()[0].name
    got = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    sqnr = 10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - got) ** 2), 1e-30))
    return float(sqnr), float(np.mean(ref.argmax(1) == got.argmax(1)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=12, help=">= 6 for a 95 %% interval")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--check-images", type=int, default=16, help="held-out noise images for the error check")
    ap.add_argument("--only", nargs="*", default=None, help="config labels (substrings) to keep")
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args(argv)

    from edgeq.measure.predictors import TFLitePredictor
    from edgeq.core.sysinfo import cpu_info, loadavg

    paths = artifacts(a.model, a.size, a.calibration, a.dir or work_dir())
    d = paths["int8_onnx"].parent
    cal = calibration_images(a.calibration, a.size)
    configs = [c for c in CONFIGS if not a.only or any(s in c.label for s in a.only)]
    files = {}
    for q in dict.fromkeys(c.quant for c in configs):
        files[q.name] = d / f"ort_{q.name}.onnx"
        if not files[q.name].is_file():
            print(f"quantize {q.name} ...", flush=True)
            quantize(q, paths["fp32_onnx"], files[q.name], cal, a.size)

    check = calibration_images(a.check_images, a.size, seed=99).transpose(0, 3, 1, 2).copy()
    fp32 = session(paths["fp32_onnx"], "all", {}, a.threads)
    ref = np.concatenate([fp32.run(None, {fp32.get_inputs()[0].name: check[i:i + 1]})[0] for i in range(len(check))])
    x1 = check[:1]
    calls, notes = {}, {}
    for c in configs:
        s = session(files[c.quant.name], c.level, c.entries, a.threads)
        feed = {s.get_inputs()[0].name: x1}
        calls[c.label] = (lambda s=s, feed=feed: s.run(None, feed))
        sqnr, agree = error_vs_fp32(s, ref, check)
        notes[c.label] = f"{kernels(files[c.quant.name], c.level, c.entries)}; SQNR {sqnr:.1f} dB, top-1 agree {agree:.2f}"
    tfl = TFLitePredictor(paths["int8_tflite"], threads=a.threads)
    calls["TFLite INT8 (XNNPACK)"] = predictor_invoker(tfl, x1.transpose(0, 2, 3, 1))
    cpu = cpu_info()
    load0 = loadavg()
    meds = interleaved(calls, a.rounds, a.runs, a.warmup, log=lambda m: print("  " + m[:160], flush=True))
    print(f"\n{a.model}@{a.size}: {cpu['model']} (SIMD {', '.join(cpu['simd'])}); {a.threads} thread(s), batch 1; "
          f"{a.rounds} interleaved rounds x {a.runs} runs (+{a.warmup} warm-up); load average {load0} -> {loadavg()}")
    tref, dref = meds["TFLite INT8 (XNNPACK)"], meds[CONFIGS[0].label] if CONFIGS[0] in configs else None
    print(f"{'configuration':<48}{'median ms':>24}{'/ TFLite INT8':>24}{'/ default ORT':>24}")
    for label, m in sorted(meds.items(), key=lambda kv: np.median(kv[1])):
        vs_default = fmt_ci(ratio_ci(m, dref)) if dref is not None else "—"
        print(f"{label:<48}{fmt_ci(median_ci(m)):>24}{fmt_ci(ratio_ci(m, tref)):>24}{vs_default:>24}")
        if label in notes:
            print(f"{'':<4}{notes[label]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
