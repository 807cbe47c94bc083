"""Accuracy on the device itself: N evaluation images through the device's own runtime/delegate, in chunks,
compared with this host's run of the same artifact on the same images (paired exact McNemar).

An Edge TPU-compiled model or an ARM build can differ from the host's emulation; this measures it. The images
go up content-addressed like everything else (a chunk already there is not sent again). The outcome lives
in report.json under `accuracy_on_device.<device>.<artifact>`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.core.artifacts import atomic_path
from edgeq.core.errors import first_line
from edgeq.core.stats import paired_test, wilson_interval
from edgeq.measure.evaluate import host_predictor

CHUNK = 200  # images per agent call: bounded JSON answers, and progress a user can follow


def chunk_file(ctx, start: int, n: int) -> Path:
    """Eval images [start, start + n) preprocessed (float32 NHWC) as a plain .npy for the agent."""
    p = ctx.run_dir / "devices" / f"eval-{start}-{n}.npy"
    if not p.exists():
        x = np.ascontiguousarray(ctx.pre(ctx.splits.eval.images[start:start + n]), np.float32)
        with atomic_path(p) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, x, allow_pickle=False)
    return p


def chunks(total: int, size: int = CHUNK) -> list[tuple[int, int]]:
    return [(s, min(size, total - s)) for s in range(0, total, size)]


def device_outputs(ctx, session, target, dep, n: int, threads: int | None, log) -> np.ndarray:
    """The device's float outputs for the first n eval images, one agent call per chunk."""
    outs = []
    for start, k in chunks(n):
        if hasattr(target, "outputs"):  # a device scored by its own tool (trtexec), not by the agent
            f = chunk_file(ctx, start, k)
            outs.append(target.outputs(dep, np.load(f, allow_pickle=False), f.parent))
            log(f"accuracy: {start + k}/{n} images")
            continue
        remote = session.upload(chunk_file(ctx, start, k))
        target.benchmark(dep, 1, 0, threads, remote, return_outputs=True)
        y = np.asarray(target.last_answer.get("outputs"), np.float32)
        if y.shape[0] != k:
            raise ValueError(f"the agent returned {y.shape[0]} outputs for {k} images")
        outs.append(y)
        log(f"accuracy: {start + k}/{n} images")
    return np.concatenate(outs)


def host_outputs(ctx, artifact, n: int) -> np.ndarray:
    """This host's outputs of the same artifact on the same images (the reference the device is held to)."""
    p = host_predictor(ctx, artifact)
    return np.concatenate([p.predict(ctx.pre(ctx.splits.eval.images[s:s + k])) for s, k in chunks(n)])


def summarise(artifact, labels: np.ndarray, y_device: np.ndarray, y_host: np.ndarray) -> dict:
    """Top-1 on the device with its Wilson interval, the host's on the same images, their agreement, and the
    paired test (host as the reference: `drop` > 0 means the device is less accurate)."""
    dev_ok, host_ok = y_device.argmax(1) == labels, y_host.argmax(1) == labels
    n = int(len(labels))
    k_dev, k_host = int(dev_ok.sum()), int(host_ok.sum())
    test = paired_test(host_ok, dev_ok).to_dict()
    agree = float(np.mean(y_device.argmax(1) == y_host.argmax(1)))
    same = test["b"] == 0 and test["c"] == 0
    if same:
        verdict = f"device and host agree on every image's correctness (top-1 agreement {agree:.1%})"
    else:
        verdict = (f"device {'less' if test['drop'] > 0 else 'more'} accurate than host by {abs(test['drop']) * 100:.2f} "
                   f"pt [{test['ci95'][0] * 100:.2f}, {test['ci95'][1] * 100:.2f}] (McNemar p = {test['p']:.2g}"
                   f"{', significant' if test['p'] < 0.05 else ''})")
    return {"artifact": artifact.name, "sha256": artifact.sha256, "n": n,
            "top1": k_dev / n, "top1_ci95": list(wilson_interval(k_dev, n)),
            "host_top1": k_host / n, "host_top1_ci95": list(wilson_interval(k_host, n)),
            "top1_agreement_with_host": agree, "max_abs_diff_vs_host": round(float(np.abs(y_device - y_host).max()), 6),
            "paired_vs_host": test, "verdict": verdict}


def measure(ctx, session, target, deps: dict, n: int, threads: int | None, log) -> dict[str, dict]:
    """accuracy_on_device entries of one device: artifact name -> summary (or {"reason": ...})."""
    n = min(n, len(ctx.splits.eval))
    labels = ctx.splits.eval.labels[:n]
    out = {}
    for name, (a, dep) in deps.items():
        log(f"accuracy of {name} on {n} eval images through the device's runtime")
        try:
            y_dev = device_outputs(ctx, session, target, dep, n, threads, log)
        except Exception as e:  # noqa: BLE001 - recorded per artifact; the device's other figures stand

            out[name] = {"artifact": name, "sha256": a.sha256, "n": 0, "reason": f"not measured: {first_line(e)}"}
            log(f"! {name}: accuracy not measured: {first_line(e)}")
            continue
        out[name] = summarise(a, labels, y_dev, host_outputs(ctx, a, n))
        log(f"* {name}: top-1 on device {out[name]['top1']:.2%} vs host {out[name]['host_top1']:.2%}: "
            f"{out[name]['verdict']}")
    return out
