"""Per-layer int4 sensitivity of stages.mixed_precision two ways, on one finished run: `models` (one litert-quantizer
model per layer, all int8 but that layer at int4) and `substitution` (the W8A8 file with that layer's real int4 weights
patched in). Prints both costs per layer, their rank correlation (Spearman, Kendall) and the time each took.

    python benchmarks/mixed_sensitivity.py RUN_DIR     # a run with fp32_tflite (stages.tflite_ptq export_fp32)

Same images and options as the stage (the run config's stages.mixed_precision): calibration_images calibrate,
sensitivity_images of the held-back ones measure. Nothing here touches the evaluation split.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(run_dir: str) -> dict:
    from scipy.stats import kendalltau, spearmanr

    from edgeq.methods.shared import mixed_precision as mp
    from edgeq.methods.shared.calibration import held_back
    from edgeq.methods.tflite import int4_substitution, litert
    from edgeq.run.pipeline import open_run
    from edgeq.stages.mixed_precision import _predict

    ctx = open_run(Path(run_dir), log=lambda m: None)
    opts = ctx.cfg.stages.mixed_precision
    fp32 = next(a for a in ctx.manifest.artifacts.values() if a.format == "tflite" and a.precision == "fp32")
    blob = fp32.abspath(ctx.run_dir).read_bytes()
    cal = ctx.splits.calibration
    n = opts.calibration_images
    held = held_back(cal, n, opts.holdout_images)
    ns = min(opts.sensitivity_images, len(held))
    x, hx = ctx.pre(cal.images[:n]), ctx.pre(held.images)[:ns]
    ranges = litert.calibrate_ranges(blob, x, name="bench")
    op_types = {o: t for o, (t, _, _) in litert.weight_layers(blob).items()}
    layers = [o for o, t in op_types.items() if t in litert.INT4_OPS]
    base = {o: "int8" for o in op_types}

    def plan(p: dict) -> bytes:
        return litert.quantize_plan(blob, p, op_types, x, range_method=opts.range_method, ranges=ranges,
                                    name="bench")[0]

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        ref = _predict(work / "fp32.tflite", blob, hx)

        def kl(data: bytes) -> float:
            return float(mp.output_kl(ref, _predict(work / "m.tflite", data, hx)).mean())

        int8 = plan(base)
        kl8 = kl(int8)
        t0 = time.perf_counter()
        int4 = plan({o: "int4" if o in layers else "int8" for o in op_types})
        sub = int4_substitution.substitution(int8, int4, layers)
        by_sub = {o: kl(sub.model(o)) - kl8 for o in layers}
        t_sub = time.perf_counter() - t0
        t0 = time.perf_counter()
        by_models = {o: kl(plan({**base, o: "int4"})) - kl8 for o in layers}
        t_models = time.perf_counter() - t0
    a = np.array([by_models[o] for o in layers])
    b = np.array([by_sub[o] for o in layers])
    k = max(1, len(layers) // 4)
    top = len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k]))
    out = {"run": str(run_dir), "layers": len(layers), "sensitivity_images": ns,
           "spearman": round(float(spearmanr(a, b).statistic), 4), "kendall": round(float(kendalltau(a, b).statistic), 4),
           f"top_{k}_overlap": top, "seconds_models": round(t_models, 1),
           "seconds_substitution": round(t_sub, 1),
           "per_layer": [{"layer": o, "models": round(by_models[o], 6), "substitution": round(by_sub[o], 6)}
                         for o in layers]}
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    r = main(sys.argv[1])
    print(json.dumps({k: v for k, v in r.items() if k != "per_layer"}, indent=1))
    Path(sys.argv[1], "mixed_sensitivity.json").write_text(json.dumps(r, indent=1))
