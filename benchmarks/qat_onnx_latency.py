"""QAT INT8 ONNX against PTQ INT8 ONNX (and FP32 ONNX) of a default model: ORT kernels, agreement and latency.

    python benchmarks/qat_onnx_latency.py [models/resnet50.yaml] [--rounds 12] [--runs 30] [--eval 1000]
                                          [--steps 0]

No reference training: the committed model is wrapped with tfmot (`wrap_for_qat`), its activation ranges are
calibrated on the config's calibration images and, with --steps N, fine-tuned for N steps (the stage's own
fine_tune_qat, distillation as configured). It is exported exactly as the qat stage does
(`qat.export_qat_onnx`: tf2onnx, batch-norm fold, re-quantization after MaxPool/Pad, int8 weights); the PTQ INT8
ONNX is made as the onnx_ptq stage does (host scheme, the config's calibration images). The script prints what
ORT's optimiser makes of each model (integer vs float Conv/MatMul/Add), top-1 and agreement with the QAT Keras
model on evaluation images, and the latency of FP32, PTQ and QAT ONNX timed in alternating rounds (1 thread,
batch 1) with the QAT/PTQ ratio per round and its 95 % interval.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from _common import fmt_ci, interleaved, median_ci, predictor_invoker, ratio_ci

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "models" / "resnet50.yaml"))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval", type=int, default=1000, help="evaluation images for top-1 / agreement")
    ap.add_argument("--steps", type=int, default=0, help="QAT fine-tune steps (0: ranges calibrated only)")
    a = ap.parse_args(argv)

    from edgeq.core.config import load_config
    from edgeq.run.inputs import load_splits, preprocess_of
    from edgeq.loaders.keras import load_keras_model
    from edgeq.methods.onnx.from_keras import INPUT_NAME, keras_to_onnx
    from edgeq.loaders.onnx import OnnxInput
    from edgeq.methods.onnx.ort_int8 import (host_op_types, ort_kernel_summary, prepare, quantize_onnx, resolve_host_scheme)
    from edgeq.stages.qat import export_qat_onnx
    from edgeq.methods.keras.qat import calibrate_ranges, wrap_for_qat
    from edgeq.measure.predictors import KerasPredictor, OnnxPredictor
    from edgeq.core.sysinfo import cpu_info, loadavg
    from edgeq.core.tfcompat import set_seed

    cfg = load_config(a.config)
    set_seed(cfg.seed)
    pre = preprocess_of(cfg)
    splits = load_splits(cfg, pre)
    model = load_keras_model(cfg.model.path, cfg.model.format)
    hwc = tuple(cfg.model.input_shape)
    cal = splits.calibration
    ptq_opts, qat_opts = cfg.stages.onnx_ptq, cfg.stages.qat
    work = Path(tempfile.mkdtemp(prefix="qat_onnx_"))
    paths = {"fp32_onnx": work / "fp32.onnx", "int8_onnx_ptq": work / "ptq.onnx", "int8_onnx_qat": work / "qat.onnx"}

    keras_to_onnx(model, paths["fp32_onnx"], ptq_opts.opset)
    scheme, _ = resolve_host_scheme(ptq_opts, cpu_info())
    info = OnnxInput(INPUT_NAME, [None, hwc[2], hwc[0], hwc[1]], "NCHW", None)
    quantize_onnx(prepare(paths["fp32_onnx"], info, hwc, work, "fp32_onnx"), paths["int8_onnx_ptq"], scheme,
                  pre(cal.images[:ptq_opts.calibration_images]), input_name=INPUT_NAME, nchw=True, batch=None,
                  calibration_method=ptq_opts.calibration_method, exclude_nodes=[],
                  op_types=host_op_types(scheme.quant_format), name="int8_onnx_ptq")

    if a.steps:
        from edgeq.methods.keras.fine_tune import fine_tune_qat, training_split

        opts = qat_opts.model_copy(update={"steps_per_epoch": a.steps, "epochs": 1, "early_stop_patience": 0})
        r = fine_tune_qat(model, training_split(splits.train, opts), pre,
                          pre(cal.images[:qat_opts.calibration_images]), opts, print)
        qmodel = r.model
    else:
        qmodel = wrap_for_qat(model, qat_opts.passthrough_layers)
        calibrate_ranges(qmodel, pre(cal.images[:qat_opts.calibration_images]))
    notes = export_qat_onnx(qmodel, paths["int8_onnx_qat"], ptq_opts.opset)
    print(f"QAT export: {notes['batch_norms_folded']} batch norms folded, re-quantized after "
          f"{len(notes['requantized_after'])} MaxPool/Pad chains, {notes['int8_weight_tensors']} int8 weight tensors "
          f"(largest requantisation change {notes['weight_requantisation_max_abs_change']:.2g})")

    x = pre(splits.eval.images[:a.eval])
    y = splits.eval.labels[:a.eval]
    ref = KerasPredictor(qmodel).predict(x).argmax(1)
    preds = {n: OnnxPredictor(p, threads=a.threads, graph_optimization="all") for n, p in paths.items()}
    print(f"\n{cfg.name} {hwc}: ORT kernels at optimisation 'all', top-1 on {len(x)} evaluation images")
    for n, p in paths.items():
        k = ort_kernel_summary(p, "all")
        got = preds[n].predict(x).argmax(1)
        print(f"  {n:<15} Conv int/float {k['integer_convs']}/{k['float_convs']}, MatMul/Gemm int/float "
              f"{k['integer_matmuls']}/{k['float_matmuls']}, Add int/float {k['integer_adds']}/{k['float_adds']}, "
              f"BatchNormalization {k['batch_norms']}, Transpose {k['transposes']}; top-1 {np.mean(got == y):.4f}, "
              f"agreement with the QAT Keras model {np.mean(got == ref):.4f}")

    load0 = loadavg()
    meds = interleaved({n: predictor_invoker(p, x[:1]) for n, p in preds.items()}, a.rounds, a.runs, a.warmup,
                       log=lambda m: print("  " + m, flush=True))
    print(f"\n{a.threads} thread(s), batch 1; {a.rounds} interleaved rounds x {a.runs} runs (+{a.warmup} warm-up); "
          f"load average {load0} -> {loadavg()}")
    for n in paths:
        print(f"  {n:<15} {fmt_ci(median_ci(meds[n])):>26} ms   x FP32 "
              f"{fmt_ci(ratio_ci(meds[n], meds['fp32_onnx'])):>24}")
    print(f"  QAT ONNX / PTQ ONNX: {fmt_ci(ratio_ci(meds['int8_onnx_qat'], meds['int8_onnx_ptq']))} "
          "(median of per-round ratios [95 % interval])")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
