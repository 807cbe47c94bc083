"""`edgeq bundle RUN --artifact NAME [--device X]`: one artifact as a directory + tarball a device can run with
nothing else than its runtime (the runtime Docker image, or numpy + an interpreter):

    model file | labels.txt | preprocess.json | agent.py | classify.py | sample.npy + sample_outputs.npy
    | bundle.json (manifest entry, measured figures, edgeq version) | README.md

`classify.py --check` runs the bundled sample images and compares with the outputs edgeq recorded on this
machine, so a deployment proves itself. `--device` uploads the tarball content-addressed and unpacks it in
the device's workdir under bundles/<name>/.
"""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np

from edgeq.core import __version__
from edgeq.core.artifacts import atomic_path
from edgeq.core.errors import EdgeqError
from edgeq.core.formats import FORMATS
from edgeq.measure.evaluate import host_predictor
from edgeq.report.build import build_report
from edgeq.targets.device import AGENT_SOURCE, DeviceSession
from edgeq.targets.ssh import open_transport, quote_argv, remote_workdir, stderr_tail

CLASSIFY_SOURCE = Path(__file__).resolve().parent.parent / "ondevice" / "classify.py"
SAMPLES = 16


def bundle_name(artifact) -> str:
    return f"{artifact.name}-{artifact.sha256[:8]}"


def _labels(ctx) -> list[str]:
    names = list(ctx.splits.eval.class_names or ctx.cfg.data.classes or [])
    n = ctx.cfg.model.num_classes
    return names if len(names) == n else [str(i) for i in range(n)]


def _readme(name: str, artifact, pre: dict, rep_entry: dict | None) -> str:
    model = Path(artifact.path).name
    figures = ""
    if rep_entry:
        acc = (rep_entry.get("accuracy") or {}).get("top1")
        host = (rep_entry.get("latency_ms") or {}).get("host") or {}
        figures = (f"\nMeasured by edgeq on the run's machine: top-1 {acc:.4f} on {rep_entry.get('n_eval')} eval images"
                   if acc is not None else "")
        figures += f", host median {host['median']:.4g} ms (batch 1)" if host.get("median") else ""
        figures += ". Full figures: bundle.json.\n" if figures else ""
    h, w, c = pre["input_shape"]
    return f"""# {name}

`{artifact.name}` of edgeq run `{artifact.path}` ({artifact.format}, {artifact.precision}, {artifact.method}),
sha256 `{artifact.sha256}`.
{figures}
Input: {h}x{w}x{c} pixels, `(pixel - mean) / std` with mean {pre['mean']}, std {pre['std']}
({pre['layout']} inside the model; classify.py and agent.py feed NHWC and handle the quantisation).

## Run it on the device

Needs python3 with numpy and one interpreter: `pip install ai-edge-litert` (or tflite-runtime;
onnxruntime for .onnx; openvino for an OpenVINO IR directory). Nothing from edgeq beyond this directory.

```sh
python3 classify.py --check                  # the bundled samples against edgeq's outputs: "ok": true
python3 classify.py photo.jpg --top 5        # image files (needs Pillow), or a uint8 .npy (N, {h}, {w}, {c})
python3 agent.py --model {model} --runs 100 --threads 4     # latency, one JSON object
```

With edgeq's runtime image (docker/runtime.Dockerfile: numpy + ai-edge-litert + the agent, no TensorFlow):

```sh
docker run --rm -v "$PWD:/bundle" edgeq/runtime:arm64 python3 /bundle/classify.py --check
docker run --rm -v "$PWD:/bundle" edgeq/runtime:arm64 --model /bundle/{model} --runs 100 --threads 4
```

Coral Edge TPU: compile first (`edgetpu_compiler {model}`), then
`python3 classify.py --check --delegate libedgetpu.so.1` with the `_edgetpu.tflite` named in bundle.json's
`model_file`.
"""


def make_bundle(ctx, artifact_name: str, out: Path | None = None) -> Path:
    """Write the bundle directory and <dir>.tar.gz (each atomically); returns the tarball's path."""
    a = ctx.manifest.artifacts.get(artifact_name)
    if a is None:
        raise EdgeqError(f"{ctx.run_dir}: no artifact named {artifact_name!r}; choose from "
                         f"{', '.join(ctx.manifest.artifacts)}")
    row = FORMATS.get(a.format)
    if row is None or not row.agent_runtimes:
        takes = ", ".join(f.name for f in FORMATS.values() if f.agent_runtimes)
        raise EdgeqError(f"{artifact_name} is a {a.format} artifact; a bundle carries a deployment model that the "
                         f"device's runtime runs ({takes})")
    name = bundle_name(a)
    out = Path(out) if out else ctx.run_dir / "bundles"
    final, tarball = out / name, out / f"{name}.tar.gz"
    src = a.abspath(ctx.run_dir)
    if not (src.is_dir() if row.directory else src.is_file()):
        raise EdgeqError(f"{src}: the artifact's file is missing; rerun `edgeq run` to make it again")
    pre = {"input_shape": list(ctx.cfg.model.input_shape), "mean": list(ctx.cfg.preprocess.mean),
           "std": list(ctx.cfg.preprocess.std), "resize": "bilinear", "pixels": "uint8 RGB (grey replicated)",
           "layout": "NCHW" if a.notes.get("input_layout") == "NCHW" else "NHWC"}
    images = ctx.pre.resize(ctx.splits.eval.images[:SAMPLES])
    sample_out = host_predictor(ctx, a).predict(ctx.pre.normalize(images))
    rep = build_report(ctx)
    entry = next((e for e in rep["artifacts"] if e["name"] == a.name), None)
    if entry is not None:
        entry = {**entry, "n_eval": rep["dataset"]["n_eval"]}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as tmp:
        tmp.mkdir()
        if row.directory:  # an OpenVINO IR: model.xml + model.bin, as the agent reads it
            shutil.copytree(src, tmp / src.name)
        else:
            shutil.copyfile(src, tmp / src.name)
        shutil.copyfile(AGENT_SOURCE, tmp / "agent.py")
        shutil.copyfile(CLASSIFY_SOURCE, tmp / "classify.py")
        (tmp / "labels.txt").write_text("\n".join(_labels(ctx)) + "\n")
        (tmp / "preprocess.json").write_text(json.dumps(pre, indent=1))
        for fname, arr in (("sample.npy", images), ("sample_outputs.npy", sample_out.astype(np.float32))):
            with open(tmp / fname, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        info = {"bundle": name, "artifact": a.name, "model_file": src.name, "edgeq_version": __version__,
                "run": str(ctx.run_dir), "model": ctx.cfg.name, "manifest_entry": a.to_dict(), "report_entry": entry,
                "sample_images": len(images)}
        (tmp / "bundle.json").write_text(json.dumps(info, indent=1, default=str))
        (tmp / "README.md").write_text(_readme(name, a, pre, entry))
    with atomic_path(tarball) as tmp:
        with tarfile.open(tmp, "w:gz") as tf:
            tf.add(final, arcname=name)
    ctx.log(f"bundle: {final} ({sum(p.stat().st_size for p in final.rglob('*') if p.is_file()) / 1e6:.2f} MB) "
            f"and {tarball}")
    return tarball


def upload_bundle(ctx, tarball: Path, device, log) -> str:
    """Copy the tarball to the device (content-addressed) and unpack it into <workdir>/bundles/; returns the
    bundle directory there. Checked by running its classify.py --check with the device's python."""
    transport = open_transport(device, log)
    try:
        session = DeviceSession(device, transport, ctx.run_dir, log)
        remote_tar = session.upload(tarball)
        name = tarball.name[:-len(".tar.gz")]
        base = f"{remote_workdir(device)}/bundles" if not device.is_local else str(tarball.parent / "deployed")
        for argv in (["mkdir", "-p", base], ["tar", "-xzf", remote_tar, "-C", base]):
            r = transport.run(argv)
            if r.returncode != 0:
                raise EdgeqError(f"{device.name}: `{quote_argv(argv)}` failed ({stderr_tail(r.stderr, 2)})")
        where = f"{base}/{name}"
        r = transport.run([device.python, f"{where}/classify.py", "--check"])
        ans = next((json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")), None)
        if r.returncode != 0 or not ans:
            raise EdgeqError(f"{device.name}: the bundle's check failed there (exit {r.returncode}): "
                             f"{stderr_tail(r.stderr, 3) or r.stdout.strip()[-300:]}")
        log(f"bundle on {device.name}: {where} (check: {ans['check']['images']} sample images, top-1 agreement "
            f"{ans['check']['top1_agreement_with_edgeq']:.0%}, runtime {ans['runtime']})")
        return where
    finally:
        transport.close()
