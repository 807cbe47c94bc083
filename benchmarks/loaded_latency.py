"""Do edgeq's latency ratios survive a busy machine? The default MobileNetV2 timed twice, the second
time with a CPU-bound busy loop on another core for the whole benchmark.

    python benchmarks/loaded_latency.py [--config models/mobilenet_v2.yaml] [--out runs/loaded]

Run 1 (`quiet`) makes the artifacts (stages tflite_ptq and onnx_ptq) and times them interleaved.
Run 2 (`loaded`) is a copy of run 1's directory rerun with `--stages` unchanged: every artifact and
evaluation is reused and only the host benchmark is measured again, while a busy-loop process spins.
It prints, per format, the INT8/FP32 ratio with its 95 % interval from both runs, whether they
overlap, and whether the loaded run marked itself noisy. Every figure is measured here.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def busy_loop(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def edgeq_run(config: Path, out: Path, stages: str) -> None:
    cmd = [sys.executable, "-m", "edgeq", "run", str(config), "--out", str(out), "--stages", stages]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "EDGEQ_PROGRESS": "plain", "CUDA_VISIBLE_DEVICES": ""})
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")


def ratios(out: Path) -> dict[str, dict]:
    rep = json.loads((out / "report.json").read_text())
    got = {}
    for a in rep["artifacts"]:
        h = a["latency_ms"].get("host") or {}
        if a["precision"] == "int8" and h.get("ratio_to_fp32"):
            got[a["name"]] = {**h["ratio_to_fp32"], "noisy": h.get("noisy"), "noisy_reason": h.get("noisy_reason"),
                              "median": h["median"], "median_ci95": h.get("median_ci95")}
    return {"ratios": got, "conditions": rep["conditions"]["host"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "models" / "mobilenet_v2.yaml")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "loaded_latency")
    ap.add_argument("--stages", default="tflite_ptq,onnx_ptq")
    a = ap.parse_args()
    quiet, loaded = a.out / "quiet", a.out / "loaded"
    edgeq_run(a.config, quiet, a.stages)
    shutil.rmtree(loaded, ignore_errors=True)
    shutil.copytree(quiet, loaded)
    stop = mp.Event()
    spinner = mp.Process(target=busy_loop, args=(stop,), daemon=True)
    spinner.start()
    try:
        edgeq_run(a.config, loaded, a.stages)
    finally:
        stop.set()
        spinner.join(5)
    q, lo = ratios(quiet), ratios(loaded)
    print(f"cpu: {q['conditions']['cpu']} ({q['conditions']['cores']} cores), threads {q['conditions']['threads']}")
    for name, c in (("quiet", q), ("loaded", lo)):
        print(f"{name}: load average before {c['conditions']['loadavg_before']}, after {c['conditions']['loadavg_after']}; "
              f"busy processes {[(p['name'], p['cpu_percent']) for p in c['conditions']['busy_processes'] or []]}")
    print(f"{'artifact':<22} {'quiet ratio [95% CI]':>24} {'loaded ratio [95% CI]':>24}  overlap  loaded noisy")
    ok = True
    for art, rq in q["ratios"].items():
        rl = lo["ratios"].get(art)
        if rl is None or not rq["ci95"] or not rl["ci95"]:
            print(f"{art:<22} no interval in one of the runs")
            ok = False
            continue
        overlap = rq["ci95"][0] <= rl["ci95"][1] and rl["ci95"][0] <= rq["ci95"][1]
        ok &= overlap or bool(rl["noisy"])
        print(f"{art:<22} {rq['value']:>8.3f} [{rq['ci95'][0]:.3f}, {rq['ci95'][1]:.3f}] "
              f"{rl['value']:>8.3f} [{rl['ci95'][0]:.3f}, {rl['ci95'][1]:.3f}]  {'yes' if overlap else 'NO':>7}  "
              f"{'yes: ' + rl['noisy_reason'] if rl['noisy'] else 'no'}")
    print("bar (intervals overlap, or the loaded run says it is noisy):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
