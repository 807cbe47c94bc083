"""Paired tests of the comparison's low-bit cells (real W4A8 artifacts and simulated cells, Keras or PyTorch):
each against FP32 on the same evaluation images, and QAT against the best PTQ cell.

A simulated cell keeps its per-image predictions (`save_predictions`, beside the evaluation step's), so it is
paired as a real artifact is: exact McNemar on the discordant images, Newcombe's paired interval of the
difference, a Wilson interval of its top-1.
"""
from __future__ import annotations

import numpy as np

from edgeq.core.artifacts import atomic_path
from edgeq.core.stats import PairedTest, paired_test, wilson_interval

PTQ_METHODS = ("ptq_naive", "ptq_advanced", "ptq_litert")
LABELS = {"ptq_naive": "PTQ naive", "ptq_advanced": "PTQ advanced", "ptq_litert": "PTQ LiteRT", "qat": "QAT"}
ALPHA = 0.05


def save_predictions(ctx, key: str, predictions: np.ndarray) -> str:
    """Write a simulated cell's per-image argmax (on the comparison's evaluation images, in order) atomically;
    returns its path relative to the run directory."""
    pf = f"eval/comparison_{key[:24]}.npz"
    with atomic_path(ctx.run_dir / pf) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, predictions=np.asarray(predictions))
    return pf


def _artifact_correct(ctx, name: str | None, idx: np.ndarray) -> np.ndarray | None:
    a = ctx.manifest.artifacts.get(name) if name else None
    r = ctx.results.evaluation(a.sha256, ctx.splits.eval.fingerprint()) if a is not None else None
    if r is None or r.subset or not (ctx.run_dir / r.predictions_file).exists():
        return None
    with np.load(ctx.run_dir / r.predictions_file, allow_pickle=False) as z:
        pred = z["predictions"]
    return pred[idx] == ctx.splits.eval.labels[idx] if len(pred) == len(ctx.splits.eval) else None


def fp32_correct(ctx, idx: np.ndarray) -> tuple[str | None, np.ndarray | None]:
    """(name, per-image correctness) of the FP32 reference the table's FP32 top-1 is from: the run's FP32 model,
    else the FP32 .tflite."""
    tfl = next((a.name for a in ctx.manifest.artifacts.values() if a.format == "tflite" and a.precision == "fp32"),
               None)
    for name in (ctx.fp32.name, tfl):
        c = _artifact_correct(ctx, name, idx)
        if c is not None:
            return name, c
    return None, None


def _row_correct(ctx, row: dict, idx: np.ndarray) -> np.ndarray | None:
    if row.get("predictions_file"):
        path = ctx.run_dir / row["predictions_file"]
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            pred = z["predictions"]
        return pred == ctx.splits.eval.labels[idx] if len(pred) == len(idx) else None
    return _artifact_correct(ctx, row.get("artifact"), idx) if not row.get("simulated") else None


def _pt(t: PairedTest, sign: int = -1) -> str:
    """The paired difference in points (sign -1: candidate minus reference) with its interval and p."""
    lo, hi = sorted((sign * t.ci95[0] * 100, sign * t.ci95[1] * 100))
    p = f"p = {t.p:.2g}" if t.p >= 0.001 else "p < 0.001"
    return f"{sign * t.drop * 100 + 0.0:+.2f} pt [{lo + 0.0:+.2f}, {hi + 0.0:+.2f}] ({p})"  # + 0.0: no "-0.00"


def vs_fp32(reference: str, t: PairedTest) -> dict:
    """A row's `vs_fp32`: its paired drop against FP32 (the report's artifact `vs_fp32` keys)."""
    return {"reference": reference, "n": t.n, "drop_pt": round(t.drop * 100, 3),
            "drop_ci95_pt": [round(t.ci95[0] * 100, 3), round(t.ci95[1] * 100, 3)],
            "mcnemar": {"b": t.b, "c": t.c, "p": round(t.p, 6)}}


def pair_low_bit(ctx, rows: list[dict], idx: np.ndarray) -> tuple[list[dict], list[str]]:
    """Add `n`, `ci95` (Wilson) and `vs_fp32` (paired) to every measured TFLite row below 8 bits that has per-image
    predictions; returns per bit width the tests {bits, reference, ptq, qat, ptq_vs_fp32, qat_vs_fp32,
    qat_minus_ptq (positive: QAT better), verdict} and one verdict line each."""
    ref, fp32 = fp32_correct(ctx, idx)
    tests, lines = [], []
    for bits in sorted({r["bits"] for r in rows if isinstance(r.get("bits"), int) and r["bits"] < 8}, reverse=True):
        cells = [r for r in rows if r.get("bits") == bits and r.get("format", "tflite") == "tflite"
                 and not r.get("label") and r.get("top1") is not None]
        right = {}
        for r in cells:
            c = _row_correct(ctx, r, idx)
            if c is None:
                continue
            right[r["method"]] = c
            lo, hi = wilson_interval(int(c.sum()), len(c))
            r.update(n=int(len(c)), ci95=[round(lo, 5), round(hi, 5)])
            if fp32 is not None:
                r["vs_fp32"] = vs_fp32(ref, paired_test(fp32, c))
        if fp32 is None or not right:
            if cells:
                lines.append(f"INT{bits} paired tests: none (no per-image FP32 predictions on these images)"
                             if fp32 is None else f"INT{bits} paired tests: none (no cell kept per-image predictions)")
            continue
        t = {m: paired_test(fp32, c) for m, c in right.items()}
        n = len(next(iter(right.values())))
        parts = [f"{LABELS.get(m, m)}{' (simulated)' if _sim(cells, m) else ''} {_pt(t[m])}" for m in right]
        line = f"INT{bits}, paired against FP32 on the same {n:,} images: " + "; ".join(parts)
        ptqs = [m for m in PTQ_METHODS if m in right]
        best = max(ptqs, key=lambda m: right[m].mean(), default=None)
        g = paired_test(right["qat"], right[best]) if "qat" in right and best else None
        if g is not None:
            verdict = ("no significant difference" if g.p >= ALPHA else
                       "QAT significantly better" if g.drop > 0 else "QAT significantly worse")
            line += f"; QAT vs the best PTQ ({LABELS[best]}): {verdict}, QAT − PTQ {_pt(g, 1)}"
        tests.append({"bits": bits, "reference": ref, "ptq": best, "qat": "qat" if "qat" in right else None,
                      "ptq_vs_fp32": t[best].to_dict() if best else None,
                      "qat_vs_fp32": t["qat"].to_dict() if "qat" in t else None,
                      "qat_minus_ptq": g.to_dict() if g else None, "verdict": line + "."})
        lines.append(line + ".")
    return tests, lines


def _sim(cells: list[dict], method: str) -> bool:
    return any(r["method"] == method and r.get("simulated") for r in cells)
