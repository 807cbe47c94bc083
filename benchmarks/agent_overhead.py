"""Median latency through the agent on a device vs in-process on this host, same artifact and threads.

    python benchmarks/agent_overhead.py runs/mobilenet_v2 --inventory devices.yaml --device loop-rpi \
        [--threads 1] [--rounds 6] [--runs 100] [--warmup 10]

Meant for a device that *is* this machine (a `host`-kind device, or SSH to 127.0.0.1 as in the tests):
then any difference is the agent path's overhead, not the hardware. Rounds alternate in-process and
agent (A B B A ...) so a noisy neighbour on a shared CPU hits both alike. Both time the same first
eval image with the input set once and only `invoke()` inside the timer. Every number is measured here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeq.run.pipeline import open_run  # noqa: E402
from edgeq.measure.predictors import open_predictor  # noqa: E402
from edgeq.targets.device import DeviceSession  # noqa: E402
from edgeq.core.artifacts import graph_optimization_of  # noqa: E402
from edgeq.targets.inventory import load_inventory  # noqa: E402
from edgeq.targets.fleet import inputs_file  # noqa: E402
from edgeq.targets.ssh import open_transport  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--inventory", type=Path, required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--tolerance", type=float, default=0.10, help="bar on |agent/in-process - 1| of the medians")
    a = ap.parse_args()

    ctx = open_run(a.run_dir, log=lambda m: None)
    dev = load_inventory(a.inventory).get(a.device)
    x_path = inputs_file(ctx, 1)
    x1 = np.load(x_path, allow_pickle=False)
    session = DeviceSession(dev, open_transport(dev, log=print), ctx.run_dir, log=print)
    session.hello()
    print(f"device: {session.identity()}; threads {a.threads}; {a.rounds} rounds x {a.runs} runs "
          f"(+{a.warmup} warm-up) each side")
    x_remote = session.upload(x_path)
    worst = 0.0
    rows = []
    for art in ctx.manifest.artifacts.values():
        if art.format not in ("tflite", "onnx"):
            continue
        opt = graph_optimization_of(art, ctx.cfg.stages.onnx_ptq.graph_optimization)
        kw = {"graph_optimization": opt} if art.format == "onnx" else {}
        extra = ["--graph-optimization", opt] if art.format == "onnx" else None
        pred = open_predictor(art.abspath(ctx.run_dir), art.format, threads=a.threads, **kw)
        remote = session.upload(art.abspath(ctx.run_dir), art.sha256)
        local_s: list[float] = []
        agent_s: list[float] = []
        for r in range(a.rounds):
            order = ("local", "agent") if r % 2 == 0 else ("agent", "local")
            for side in order:
                if side == "local":
                    local_s += pred.time_runs(x1, runs=a.runs, warmup=a.warmup)
                else:
                    _, ans = session.benchmark(remote, a.runs, a.warmup, a.threads, x_remote, extra=extra)
                    agent_s += ans["timing"]["samples_ms"]
        ml, ma = float(np.median(local_s)), float(np.median(agent_s))
        worst = max(worst, abs(ma / ml - 1))
        rows.append((art.name, ml, ma, ma / ml, ans["runtime"], pred.runtime))
    session.transport.close()
    print(f"{'artifact':<22} {'in-process ms':>14} {'agent ms':>10} {'agent/in-process':>17}  runtimes")
    for name, ml, ma, ratio, rt_agent, rt_local in rows:
        print(f"{name:<22} {ml:>14.4f} {ma:>10.4f} {ratio:>17.3f}  agent: {rt_agent}; in-process: {rt_local}")
    ok = worst <= a.tolerance
    print(f"largest difference of medians: {worst * 100:.1f} % ({'within' if ok else 'OVER'} the "
          f"{a.tolerance * 100:.0f} % bar)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
