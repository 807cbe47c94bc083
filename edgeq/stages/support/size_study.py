"""Would more calibration images help? `stages.tflite_ptq.size_study`: the full-integer INT8 TFLite made again from
the first 16 / 32 / ... calibration images (the TFLite converter route, every other option as the stage's), each a
real .tflite evaluated on the whole evaluation set and paired, image by image, with the largest size's model and with
the FP32 .tflite (exact McNemar, Newcombe intervals; Holm across the sizes compared with the largest).

Opt-in (each size is a conversion and an evaluation): the models are kept under `size_study/`, never in the manifest,
so they are neither timed nor candidates to ship.
"""
from __future__ import annotations

import json

import numpy as np

from edgeq.core.artifacts import atomic_path, sha256_of, write_bytes_atomic, write_json_atomic
from edgeq.core.stats import holm, paired_test, wilson_interval
from edgeq.measure.evaluate import evaluate, evaluate_chunked
from edgeq.measure.predictors import open_predictor
from edgeq.methods.tflite import convert as tflite_ptq

ALPHA = 0.05
OPTION = "stages.tflite_ptq.size_study"


def _predictions(ctx, name: str) -> np.ndarray | None:
    """The stored evaluation predictions of the run's artifact `name`, or None."""
    a = ctx.manifest.artifacts.get(name)
    r = ctx.results.evaluation(a.sha256, ctx.splits.eval.fingerprint()) if a else None
    if r is None or not (ctx.run_dir / r.predictions_file).exists():
        return None
    with np.load(ctx.run_dir / r.predictions_file, allow_pickle=False) as z:
        return z["predictions"]


def _predictions_for(ctx, n: int) -> np.ndarray:
    """Evaluation predictions of the INT8 .tflite calibrated on the first n calibration images; model and predictions
    kept under size_study/ and reused while what they depend on (images, options, model, evaluation set) is the same."""
    opts = ctx.cfg.stages.tflite_ptq
    cal = ctx.calibration(n, OPTION)
    folder = ctx.run_dir / "size_study"
    path, pred_file, keys_file = folder / f"int8_ptq_cal{n}.tflite", folder / f"int8_ptq_cal{n}.npz", folder / "keys.json"
    key = {**cal.key, "input_type": opts.input_type, "output_type": opts.output_type, "per_channel": opts.per_channel,
           "allow_float_ops": opts.allow_float_ops, "model": ctx.fp32.sha256, "eval": ctx.splits.eval.fingerprint()}
    keys = json.loads(keys_file.read_text()) if keys_file.exists() else {}
    if path.exists() and pred_file.exists() and keys.get(str(n)) == {**key, "sha256": sha256_of(path)}:
        with np.load(pred_file, allow_pickle=False) as z:
            return z["predictions"]
    data = tflite_ptq.convert_int8(ctx.keras_model(), cal.one_at_a_time(), input_type=opts.input_type,
                                   output_type=opts.output_type, per_channel=opts.per_channel,
                                   allow_float_ops=opts.allow_float_ops, name=f"int8 ({n} calibration images)",
                                   calibration_images=n)
    folder.mkdir(exist_ok=True)
    write_bytes_atomic(path, data)
    pred = _evaluate(ctx, path)
    with atomic_path(pred_file) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, predictions=pred)
    keys[str(n)] = {**key, "sha256": sha256_of(path)}
    write_json_atomic(keys_file, keys)
    return pred


def _evaluate(ctx, path) -> np.ndarray:
    ev, e = ctx.splits.eval, ctx.cfg.evaluate
    label = f"evaluate {path.name}"
    if e.workers > 1 and len(ev) > e.batch_size:
        return evaluate_chunked(path, "tflite", ev, ctx.pre, ctx.splits.dataset, e.batch_size, e.workers,
                                label=label).predictions
    return evaluate(open_predictor(path, "tflite"), ev, ctx.pre, ctx.splits.dataset, e.batch_size,
                    label=label).predictions


def _test_dict(t) -> dict:
    return {"drop_pt": round(t.drop * 100, 3), "drop_ci95_pt": [round(t.ci95[0] * 100, 3), round(t.ci95[1] * 100, 3)],
            "b": t.b, "c": t.c, "p": round(t.p, 6)}


def size_curve(labels: np.ndarray, preds: dict[int, np.ndarray], fp32: np.ndarray | None) -> dict:
    """The curve from each size's predictions: top-1 with its Wilson interval, the paired drop against the largest
    size (Holm across the smaller sizes) and against FP32, and a verdict on whether more images would help."""
    sizes = sorted(preds)
    top = sizes[-1]
    right = {n: preds[n] == labels for n in sizes}
    vs_top = {n: paired_test(right[top], right[n]) for n in sizes[:-1]}
    adjusted = dict(zip(vs_top, holm([t.p for t in vs_top.values()])))
    rows = []
    for n in sizes:
        k = int(right[n].sum())
        row = {"images": n, "top1": round(k / len(labels), 5),
               "top1_ci95": [round(x, 5) for x in wilson_interval(k, len(labels))]}
        if n in vs_top:
            row["vs_largest"] = {**_test_dict(vs_top[n]), "p_holm": round(adjusted[n], 6)}
        if fp32 is not None:
            row["vs_fp32"] = _test_dict(paired_test(fp32 == labels, right[n]))
        rows.append(row)
    worse = [n for n in vs_top if adjusted[n] < ALPHA and vs_top[n].drop > 0]
    enough = next((n for n in sizes if all(m < n for m in worse)), top)
    if len(sizes) == 1:
        verdict = f"one size only ({top} images): add smaller sizes to see a curve"
    else:
        last = vs_top[sizes[-2]]
        # drop = top-1 of the largest minus that of the one before: what the last step bought
        t = _test_dict(last)  # the table's rounding, so the verdict quotes the table
        verdict = (f"{sizes[-2]} -> {top} images changed top-1 by {t['drop_pt']:+.2f} pt "
                   f"[{t['drop_ci95_pt'][0]:+.2f}, {t['drop_ci95_pt'][1]:+.2f}] (exact McNemar p = {last.p:.2g})")
        if worse:
            verdict += (f"; fewer than {enough} images cost accuracy significantly ({', '.join(map(str, worse))}: "
                        f"Holm across {len(vs_top)} sizes)")
        else:
            verdict += f"; no smaller size is significantly worse than {top} (Holm across {len(vs_top)} sizes)"
        verdict += ("; the curve is still rising at its end: more images may help" if last.p < ALPHA and last.drop > 0
                    else "; more images are unlikely to help by more than that interval's upper end")
    return {"rows": rows, "largest": top, "n_eval": int(len(labels)), "enough_from": enough, "verdict": verdict}


def markdown(d: dict) -> str:
    """The curve as a report.md section."""
    lines = ["## Calibration size study", "",
             f"The full-integer INT8 TFLite (TFLite converter) calibrated on the first N calibration images, each "
             f"evaluated on the same {d['n_eval']:,} images: top-1 with its 95 % Wilson interval; paired drop "
             f"(Newcombe 95 %, exact McNemar) against the {d['largest']}-image model (p Holm-adjusted across the "
             "smaller sizes) and against FP32. One draw of images per size (the first N of the calibration split).", "",
             "| images | top-1 % [95% CI] | drop vs largest pt [CI] | p (Holm) | drop vs FP32 pt [CI] | p |",
             "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        lo, hi = r["top1_ci95"]
        v, f = r.get("vs_largest"), r.get("vs_fp32")
        lines.append(f"| {r['images']} | {r['top1'] * 100:.2f} [{lo * 100:.2f}, {hi * 100:.2f}] | "
                     + (f"{v['drop_pt']:+.2f} [{v['drop_ci95_pt'][0]:+.2f}, {v['drop_ci95_pt'][1]:+.2f}] | "
                        f"{v['p_holm']:.2g}" if v else "— (reference) | —")
                     + (f" | {f['drop_pt']:+.2f} [{f['drop_ci95_pt'][0]:+.2f}, {f['drop_ci95_pt'][1]:+.2f}] | "
                        f"{f['p']:.2g} |" if f else " | — | — |"))
    return "\n".join(lines + ["", f"Verdict: {d['verdict']}."])


def after_evaluate(ctx) -> None:
    """Run the study when `stages.tflite_ptq.size_study` lists sizes (report section `calibration_size_study`)."""
    sizes = sorted(set(ctx.cfg.stages.tflite_ptq.size_study))
    if not sizes or not ctx.cfg.evaluate.enabled:
        return
    ctx.log(f"[calibration size study: {', '.join(map(str, sizes))} images]")
    preds = {}
    for n in sizes:
        preds[n] = _predictions_for(ctx, n)
        ctx.log(f"  * {n} calibration images: top-1 {(preds[n] == ctx.splits.eval.labels).mean():.4f}")
    d = size_curve(ctx.splits.eval.labels, preds, _predictions(ctx, "fp32_tflite"))
    ptq = _predictions(ctx, "int8_tflite_ptq")
    rep_n = ctx.cfg.stages.tflite_ptq.representative_images
    if ptq is not None and rep_n in preds:  # the same inputs must give the run's own INT8 model's predictions
        d["matches_int8_tflite_ptq"] = bool((preds[rep_n] == ptq).all())
    d["markdown"] = markdown(d)
    ctx.results.set_section("calibration_size_study", d)
    ctx.log(f"  {d['verdict']}")
