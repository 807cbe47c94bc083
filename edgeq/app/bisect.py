"""`edgeq bench RUN_DIR --device NAME --bisect`: where a device's run of an INT8 TFLite artifact parts from the host's.

A few evaluation images go through the artifact twice with every tensor kept, on this host (in process) and on
the device (the agent's --tensors-out over SSH, the tensors fetched back as a plain .npz); edgeq.measure.bisect
compares them op by op. The result lands in RUN_DIR/bisect/<device>/<artifact>.json and .md, written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.core.artifacts import write_bytes_atomic, write_json_atomic
from edgeq.core.errors import ConfigError
from edgeq.measure.bisect import Bisect, HEADER, Side, compare, host_side, load_tensors, markdown, table_rows
from edgeq.targets import device_accuracy
from edgeq.targets.device import DeviceSession
from edgeq.targets.fleet import checked_inventory
from edgeq.targets.ssh import open_transport

DEFAULT_IMAGES = 4


def pick_artifact(ctx, name: str | None):
    """The named artifact (a .tflite), or the run's one INT8 TFLite artifact from plain PTQ if none is named."""
    arts = ctx.manifest.artifacts
    tflite = [a for a in arts.values() if a.format == "tflite"]
    if name is not None:
        if name not in arts:
            raise ConfigError(f"--artifact {name}: no such artifact in {ctx.run_dir} (TFLite ones: "
                              f"{', '.join(a.name for a in tflite) or 'none'})")
        if arts[name].format != "tflite":
            raise ConfigError(f"--artifact {name}: a {arts[name].format} artifact; --bisect compares .tflite "
                              f"artifacts (TFLite ones here: {', '.join(a.name for a in tflite) or 'none'})")
        return arts[name]
    int8 = [a for a in tflite if a.precision == "int8"]
    if not int8:
        raise ConfigError(f"{ctx.run_dir}: no INT8 TFLite artifact to bisect; name one with --artifact")
    return next((a for a in int8 if a.name == "int8_tflite_ptq"), int8[0])


def bisect_on_device(ctx, device_name: str, inventory: Path | None, artifact: str | None = None,
                     images: int = DEFAULT_IMAGES, host_kernels: str = "default",
                     device_kernels: str | None = None, threads: int | None = 1) -> Bisect:
    """Compare the host's and the device's op-by-op run of one artifact on the first `images` eval images."""
    from edgeq.core.config import TargetRef

    a = pick_artifact(ctx, artifact)
    if images < 1:
        raise ConfigError(f"--images {images}: give at least 1")
    n = min(images, len(ctx.splits.eval))
    d = checked_inventory(ctx.cfg, [TargetRef(device=device_name)], inventory).get(device_name)
    kernels = device_kernels or d.tflite_kernels
    out_dir = ctx.run_dir / "bisect" / d.name
    inputs = device_accuracy.chunk_file(ctx, 0, n)
    x = np.load(inputs, allow_pickle=False)
    ctx.log(f"[bisect] {a.name}: {n} eval images, host ({host_kernels} kernels) vs {d.name} ({kernels} kernels)")

    def log(msg: str) -> None:
        ctx.log(f"  [{d.name}] {msg.strip()}")

    transport = open_transport(d, log)
    try:
        session = DeviceSession(d, transport, ctx.run_dir, log)
        session.hello()
        log(f"agent ok: {session.identity()}")
        model_remote = session.upload(a.abspath(ctx.run_dir), a.sha256)
        inputs_remote = session.upload(inputs)
        local = out_dir / f"{a.name}.{d.name}.tensors.npz"
        out_dir.mkdir(parents=True, exist_ok=True)
        ans = session.op_tensors(model_remote, inputs_remote, kernels, threads, local)
    finally:
        transport.close()
    dev = Side.from_answer(d.name, ans, load_tensors(local))
    host = host_side(a.abspath(ctx.run_dir), x, host_kernels, threads)
    result = compare(a.name, host, dev)
    result.notes += [
        f"device: {session.identity()}",
        "with every tensor kept, LiteRT hands XNNPACK one op per delegate node (each tensor is written out); "
        "ops XNNPACK does not take run on LiteRT's own kernels — the kernels column says which ran each op",
        f"images: the first {n} of the evaluation split ({ctx.splits.eval.source}); the device's tensors are kept "
        f"in {local.name}"]
    write_json_atomic(out_dir / f"{a.name}.json", result.to_dict())
    write_bytes_atomic(out_dir / f"{a.name}.md", markdown(result).encode())
    return result


def print_bisect(b: Bisect) -> None:
    """The verdict and the propagation table on the console."""
    from rich.console import Console
    from rich.table import Table

    c = Console(width=120)
    for label, s in (("host", b.host), (b.device, b.device_side)):
        c.print(f"{label}: {s['runtime']}, kernels asked {s['kernels_asked']}, ran "
                + ", ".join(f"{k} {v} ops" for k, v in s["kernels_used"].items()), markup=False, highlight=False)
    for note in b.notes[:2]:  # the kept-tensors run against a plain run, per side
        c.print(note, markup=False, highlight=False)
    c.print(b.verdict, markup=False, highlight=False)
    rows = table_rows(b)
    if rows:
        t = Table(title=f"how it propagates ({b.images} images; max |Δ| in LSB of each tensor's scale)")
        for h in HEADER:
            t.add_column(h)
        for r in rows:
            t.add_row(*r)
        c.print(t)

