"""Side-by-side host latency of every runnable artifact of a finished run, interleaved.

    python benchmarks/latency.py runs/resnet50 [--threads 1] [--rounds 10] [--runs 30]

Artifacts are timed in alternating rounds (A B C A B C ...) so a noisy neighbour on a shared CPU
hits all of them alike; the figures are medians over all rounds and the ratios are against the FP32
artifact of the same format. Nothing is hard-coded: every number is measured by this script.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeq.runtime import open_predictor  # noqa: E402
from edgeq.sysinfo import cpu_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    a = ap.parse_args()
    man = json.loads((a.run_dir / "manifest.json").read_text())
    arts = [x for x in man["artifacts"] if x["format"] in ("tflite", "onnx")]
    preds = {x["name"]: open_predictor(a.run_dir / x["path"], x["format"], threads=a.threads) for x in arts}
    shape = [d if d and d > 0 else 1 for d in next(iter(preds.values())).input_shape]
    x1 = np.random.default_rng(0).uniform(-1, 1, [1, *shape[1:]]).astype(np.float32)
    samples: dict[str, list[float]] = {n: [] for n in preds}
    for n, p in preds.items():
        p.time_runs(x1, runs=1, warmup=a.warmup)
    for _ in range(a.rounds):
        for n, p in preds.items():
            samples[n] += p.time_runs(x1, runs=a.runs, warmup=0)
    cpu = cpu_info()
    print(f"{man['model']}: {cpu['model']} (SIMD {', '.join(cpu['simd'])}), {a.threads} thread(s), "
          f"{a.rounds}x{a.runs} interleaved runs")
    fp32 = {x["format"]: x["name"] for x in arts if x["precision"] == "fp32"}
    print(f"{'artifact':<22}{'precision':>10}{'median ms':>12}{'p90 ms':>10}{'x FP32':>9}{'size MB':>10}")
    for x in arts:
        s = np.asarray(samples[x["name"]])
        ref = fp32.get(x["format"])
        ratio = np.median(s) / np.median(samples[ref]) if ref else float("nan")
        print(f"{x['name']:<22}{x['precision']:>10}{np.median(s):>12.3f}{np.percentile(s, 90):>10.3f}"
              f"{ratio:>9.3f}{x['size_bytes'] / 1e6:>10.2f}")


if __name__ == "__main__":
    main()
