"""FP32 + INT8 TFLite export time: edgeq's conversion functions against the direct-converter script a user writes.

    python benchmarks/export_time.py [--model mobilenet_v2|resnet50] [--size 224] [--images 100] [--pairs 2]

Both sides convert the same random-weight application (built the same way from the same seed in a fresh
process, so no side profits from what the other traced) with the same representative images (seeded noise):
- direct: `TFLiteConverter.from_keras_model` twice (FP32; INT8 full-integer with int8 I/O, one image per
  representative sample), the tutorial script;
- edgeq: `tflite_ptq.convert_fp32` + `tflite_ptq.convert_int8` (what the tflite_ptq stage calls), including
  its fully-integer check.
Each side runs in its own subprocess, in alternating order (A B, B A, ...), `--pairs` times; the ratio
edgeq / direct is computed per pair. The INT8 models are compared op by op and on the images (largest output
difference), so "faster" cannot hide a different model.

With --qat it times the INT8 conversion of the tfmot QAT model instead (wrapped with edgeq's wrap_for_qat, ranges
calibrated on the images; no fine-tune: it does not change the conversion's work) — direct
`from_keras_model` vs edgeq's `convert_int8` — and edgeq's PTQ INT8 conversion of the same network, for the
QAT / PTQ conversion-time ratio.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _direct_int8(model, rep) -> bytes:
    """What the script a user writes today does: the converter's full-integer INT8 from the Keras model."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert()


def child(kind: str, model_name: str, size: int, images: int, out: Path) -> dict:
    from _common import build, calibration_images

    model = build(model_name, size)
    cal = calibration_images(images, size)
    rep = lambda: ([cal[i:i + 1]] for i in range(len(cal)))  # noqa: E731
    if kind.startswith("qat"):
        from edgeq.methods.keras.qat import calibrate_ranges, wrap_for_qat

        model = wrap_for_qat(model)
        calibrate_ranges(model, cal)
    t = time.perf_counter()
    if kind in ("qat_direct", "qat_edgeq", "ptq_edgeq"):
        from edgeq.methods.tflite import convert as tflite_ptq

        if kind == "qat_direct":
            int8 = _direct_int8(model, rep)
        else:
            int8 = tflite_ptq.convert_int8(model, rep, calibration_images=images)
        seconds = time.perf_counter() - t
        (out / f"{kind}_int8.tflite").write_bytes(int8)
        return {"seconds": seconds}
    if kind == "direct":
        import tensorflow as tf

        fp32 = tf.lite.TFLiteConverter.from_keras_model(model).convert()
        int8 = _direct_int8(model, rep)
    else:
        from edgeq.methods.tflite import convert as tflite_ptq

        fp32 = tflite_ptq.convert_fp32(model)
        int8 = tflite_ptq.convert_int8(model, rep, calibration_images=images)
    seconds = time.perf_counter() - t
    (out / f"{kind}_fp32.tflite").write_bytes(fp32)
    (out / f"{kind}_int8.tflite").write_bytes(int8)
    return {"seconds": seconds}


def compare(out: Path, size: int) -> str:
    import numpy as np

    from _common import calibration_images
    from edgeq.measure.predictors import TFLitePredictor
    from edgeq.methods.tflite.convert import tensor_summary

    x = calibration_images(16, size, seed=7)
    lines = []
    for p in ("fp32", "int8"):
        a, b = out / f"direct_{p}.tflite", out / f"edgeq_{p}.tflite"
        same_ops = tensor_summary(a.read_bytes())["ops"] == tensor_summary(b.read_bytes())["ops"]
        diff = float(np.max(np.abs(TFLitePredictor(a).predict(x) - TFLitePredictor(b).predict(x))))
        lines.append(f"{p.upper()}: same op counts {same_ops}, largest output difference on {len(x)} images "
                     f"{diff:.3g}, sizes {a.stat().st_size} / {b.stat().st_size} bytes")
    return "; ".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=100, help="representative images")
    ap.add_argument("--pairs", type=int, default=2, help="alternating direct/edgeq pairs")
    ap.add_argument("--qat", action="store_true", help="time QAT INT8 conversion (direct vs edgeq) and PTQ INT8")
    ap.add_argument("--child", choices=["direct", "edgeq", "qat_direct", "qat_edgeq", "ptq_edgeq"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    if a.child:
        print(json.dumps(child(a.child, a.model, a.size, a.images, a.out)))
        return 0

    import tempfile

    import numpy as np

    from edgeq.core.stats import median_interval
    from edgeq.core.sysinfo import loadavg

    out = a.out or Path(tempfile.mkdtemp(prefix="export_time_"))
    kinds = ["qat_direct", "qat_edgeq", "ptq_edgeq"] if a.qat else ["direct", "edgeq"]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    load0 = loadavg()
    for i in range(a.pairs):
        for kind in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:  # rotating order
            proc = subprocess.run([sys.executable, __file__, "--child", kind, "--model", a.model, "--size",
                                   str(a.size), "--images", str(a.images), "--out", str(out)],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{kind} failed:\n{proc.stderr[-3000:]}")
            times[kind].append(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])
            print(f"pair {i + 1}: {kind} {times[kind][-1]:.1f} s", flush=True)
    print(f"\n{a.model}@{a.size}, {a.images} representative images, {a.pairs} rotating rounds, each conversion in a "
          f"fresh process; load average {load0} -> {loadavg()}")
    what = "INT8 conversion s (each round)" if a.qat else "FP32 + INT8 export s (each round)"
    print(f"{'':<12}{what:>40}{'median':>10}")
    for k, v in times.items():
        print(f"{k:<12}{', '.join(f'{s:.1f}' for s in v):>40}{np.median(v):>10.1f}")
    pairs = [("qat_edgeq", "qat_direct"), ("qat_edgeq", "ptq_edgeq"), ("qat_direct", "ptq_edgeq")] if a.qat \
        else [("edgeq", "direct")]
    for num, den in pairs:
        ratios = [n / d for n, d in zip(times[num], times[den])]
        iv = (f" [95 % interval {median_interval(ratios)[1]:.3g}, {median_interval(ratios)[2]:.3g}]"
              if len(ratios) >= 6 else " (fewer than 6 rounds: no 95 % interval; per round " +
              ", ".join(f"{r:.3g}" for r in ratios) + ")")
        print(f"{num} / {den}: {np.median(ratios):.3g}{iv}")
    if not a.qat:
        print(compare(out, a.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
