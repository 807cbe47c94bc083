"""Is the calibration set fit for the deployment data? Three checks after evaluation, reported with the run:

- **class coverage**: each class's share of the calibration images against its share of the evaluation images; a
  class the calibration images hardly hold (under a quarter of its evaluation share) is named.
- **clipping**: per activation tensor of the FP32 .tflite, the range the calibration images reach against the
  evaluation images' values: the share of evaluation activations outside the calibrated range (what an INT8 model
  calibrated there would clip) and how far past it they reach; tensors where evaluation data go far past calibration
  are named (a distribution shift between the splits, or too few calibration images).
- **provenance**: evaluation images that are also calibration images (by pixel hash: a contaminated evaluation), and
  calibration drawn from another split than evaluation (named; a warning when the clipping check sees them apart).
"""
from __future__ import annotations

import numpy as np

from edgeq.core.data import LabelledImages, Preprocess
from edgeq.measure.evaluate import interpreter_keeping_all_tensors

COVERAGE_FLOOR = 0.25  # a class with under this fraction of its evaluation share among the calibration images is named
CLIP_SHARE = 0.002  # evaluation values outside the calibrated range beyond twice the control's share + this: shifted
CLIP_REACH = 0.1  # or reaching past it beyond twice the control's reach + this fraction of the range: shifted
IMAGES = 100  # calibration / evaluation images run through the FP32 graph (spread over the split)


def class_coverage(cal: LabelledImages, ev: LabelledImages, num_classes: int) -> dict:
    """Per class: share of calibration vs evaluation images; the classes the calibration images under-cover."""
    names = ev.class_names or cal.class_names
    cal_share = np.bincount(cal.labels, minlength=num_classes)[:num_classes] / max(1, len(cal))
    ev_share = np.bincount(ev.labels, minlength=num_classes)[:num_classes] / max(1, len(ev))
    rows, short = [], []
    for c in range(num_classes):
        name = names[c] if c < len(names) else str(c)
        rows.append({"class": name, "calibration_share": round(float(cal_share[c]), 4),
                     "evaluation_share": round(float(ev_share[c]), 4)})
        if ev_share[c] > 0 and cal_share[c] < COVERAGE_FLOOR * ev_share[c]:
            short.append(f"'{name}' ({cal_share[c]:.1%} of calibration images, {ev_share[c]:.1%} of evaluation)")
    warning = (f"the calibration images hardly cover {len(short)} of {num_classes} classes: {', '.join(short[:6])}"
               f"{' …' if len(short) > 6 else ''}; calibrate on images of every class the model will see"
               if short else None)
    return {"classes": rows, "under_covered": len(short), "warning": warning}


def _spread(data: LabelledImages, n: int) -> LabelledImages:
    idx = np.linspace(0, len(data) - 1, num=min(n, len(data))).astype(int)
    return data.take(np.unique(idx))


def _activations(path, x: np.ndarray):
    """Per image, every op output tensor of a float .tflite (name -> array), run op by op with all tensors kept."""
    it, inp, details = interpreter_keeping_all_tensors(path)
    outs = [(op["op_name"], op["outputs"][0]) for op in it._get_ops_details()
            if op["outputs"] and op["outputs"][0] in details and details[op["outputs"][0]]["dtype"] == np.float32]
    for img in x:
        it.set_tensor(inp["index"], img[None].astype(np.float32))
        it.invoke()
        yield [(op, details[i]["name"], it.get_tensor(i)) for op, i in outs]


def _ranges(path, x: np.ndarray) -> dict[str, list]:
    ranges: dict[str, list] = {}
    for acts in _activations(path, x):
        for op, name, v in acts:
            r = ranges.setdefault(name, [op, np.inf, -np.inf])
            r[1], r[2] = min(r[1], float(v.min())), max(r[2], float(v.max()))
    return ranges


def _beyond(path, x: np.ndarray, ranges: dict[str, list]) -> dict[str, tuple[float, float]]:
    """Per tensor: the share of values outside its range, and how far past it they reach (fraction of its width)."""
    seen = {name: [0, 0, np.inf, -np.inf] for name in ranges}  # outside, total, min, max: nothing else is kept
    for acts in _activations(path, x):
        for _, name, v in acts:
            _, lo, hi = ranges[name]
            s = seen[name]
            s[0] += int(np.count_nonzero((v < lo) | (v > hi)))
            s[1] += v.size
            s[2], s[3] = min(s[2], float(v.min())), max(s[3], float(v.max()))
    out = {}
    for name, (_, lo, hi) in ranges.items():
        n_out, total, vmin, vmax = seen[name]
        out[name] = (n_out / max(total, 1), max(0.0, vmax - hi, lo - vmin) / max(hi - lo, 1e-12))
    return out


def clipping(fp32_tflite, cal: LabelledImages, ev: LabelledImages, pre: Preprocess, images: int = IMAGES) -> dict:
    """Per activation tensor: the range half the calibration images reach; how much of the evaluation images'
    activations fall outside it (what an INT8 model calibrated there clips) and how far past it they reach, against
    the same figures for the other half of the calibration images — a sample of the same distribution, so the
    control for how much any fresh sample exceeds a calibrated range. A tensor where evaluation data exceed it
    clearly more than the control does (twice its share + 0.2 %, or twice its reach + 10 % of the range) is
    shifted; two or more shifted tensors give the warning."""
    if len(cal) < 8 or len(ev) < 4:
        return {"reason": f"{len(cal)} calibration and {len(ev)} evaluation images are too few to set ranges and "
                          "measure them against a control (8 and 4 at least)"}
    half = len(cal) // 2
    ranged, control = cal.take(np.arange(half)), cal.take(np.arange(half, len(cal)))
    ranges = _ranges(fp32_tflite, pre(_spread(ranged, images).images))
    ctrl = _beyond(fp32_tflite, pre(_spread(control, images).images), ranges)
    evals = _beyond(fp32_tflite, pre(_spread(ev, images).images), ranges)
    rows = []
    for name, (op, lo, hi) in ranges.items():
        share, reach = evals[name]
        c_share, c_reach = ctrl[name]
        rows.append({"tensor": name[:120], "op": op, "calibrated_range": [round(lo, 5), round(hi, 5)],
                     "outside_share": round(share, 5), "reach_past": round(reach, 4),
                     "control_outside_share": round(c_share, 5), "control_reach_past": round(c_reach, 4),
                     "shifted": share > 2 * c_share + CLIP_SHARE or reach > 2 * c_reach + CLIP_REACH})
    shifted = sorted((r for r in rows if r["shifted"]), key=lambda r: -(r["outside_share"] - r["control_outside_share"]))
    warning = (f"evaluation activations reach past the calibrated range clearly more than fresh calibration images "
               f"do in {len(shifted)} of {len(rows)} tensors (the calibration images do not span what evaluation "
               "data reach): " + "; ".join(
                   f"{r['tensor'].split(';')[0]} ({r['outside_share']:.2%} outside vs {r['control_outside_share']:.2%}, "
                   f"up to {r['reach_past']:.0%} of its range past it vs {r['control_reach_past']:.0%})"
                   for r in shifted[:5]) + "; calibrate on images like the deployment data"
               if len(shifted) >= 2 else None)
    return {"images": {"range": min(images, len(ranged)), "control": min(images, len(control)),
                       "evaluation": min(images, len(ev))},
            "tensors": len(rows), "shifted": len(shifted), "worst": shifted[:10], "warning": warning}


def provenance(cal: LabelledImages, ev: LabelledImages, same_pool: bool, clip: dict) -> dict:
    """Where the calibration and evaluation images come from: evaluation images that are also calibration images
    (same pixels: the evaluation is contaminated), and calibration taken from another split than evaluation (named;
    a warning when the clipping check also finds their activations apart)."""
    cal_h = cal.image_hashes()
    overlap = sum(h in cal_h for h in ev.image_hash_list())
    out = {"calibration_source": cal.source, "evaluation_source": ev.source, "same_split": same_pool,
           "overlap": overlap, "note": None, "warning": None}
    warnings = []
    if overlap:
        warnings.append(f"evaluation contaminated: {overlap} of the {len(ev)} evaluation images are also calibration "
                        "images (same pixels), so INT8 accuracy is measured partly on images its ranges were set on; "
                        "remove the duplicates from one of the two sets")
    if not same_pool:
        where = f"calibration images come from {cal.source}, evaluation images from {ev.source} (another split)"
        if clip.get("warning"):
            warnings.append(f"{where}, and their activations differ ({clip['shifted']} of {clip['tensors']} tensors "
                            "apart, see clipping): calibrate on images drawn like the evaluation/deployment data")
        else:
            out["note"] = where + ("; the clipping check finds their activation ranges alike" if "tensors" in clip
                                   else "; their activation ranges were not compared")
    out["warning"] = "; ".join(warnings) or None
    return out


def calibration_diagnostics(ctx) -> dict | None:
    """Both checks for a run (None without an FP32 .tflite to run the clipping check on: coverage alone then)."""
    cal, ev = ctx.splits.calibration, ctx.splits.eval
    out = {"coverage": class_coverage(cal, ev, ctx.cfg.model.num_classes)}
    fp32 = next((a for a in ctx.manifest.artifacts.values() if a.format == "tflite" and a.precision == "fp32"), None)
    if fp32 is not None:
        out["clipping"] = clipping(fp32.abspath(ctx.run_dir), cal, ev, ctx.pre)
    else:
        out["clipping"] = {"reason": "no FP32 .tflite in this run (stages.tflite_ptq.export_fp32) to measure on"}
    out["provenance"] = provenance(cal, ev, ctx.splits.same_pool, out["clipping"])
    return out
