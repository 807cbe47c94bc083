"""The `edgeq` command. Thin: parse, call the pipeline, print progress and a summary table.

Each command imports what it runs inside its function: `edgeq --help` and `edgeq report` stay fast (importing every
layer at the top took `edgeq --help` from 0.22 s to 1.8 s, measured); import-linter still sees these imports.

Errors a user can act on (EdgeqError) become one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeq.core import __version__
from edgeq.core.errors import EdgeqError
from edgeq.core.interrupt import Interrupted, stop_on_signals


def _selected(args):
    """The config with the command line's --no-benchmark / --reuse-benchmarks / --stages applied, and the stage
    selection."""
    from edgeq.core.config import load_config
    from edgeq.run.preflight import parse_stages
    from edgeq.stages import registry

    cfg = load_config(args.config)
    wanted = parse_stages(args.stages) if args.stages is not None else None
    if getattr(args, "no_benchmark", False):
        cfg.benchmark.enabled = False
    if getattr(args, "reuse_benchmarks", False):
        cfg.benchmark.reuse = True
    if wanted is not None:
        for name in registry.names():
            getattr(cfg.stages, name).enabled = name in wanted
    return cfg, wanted


def _cmd_run(args) -> int:
    from edgeq.api import example
    from edgeq.app.qat_workers import run_keras_qat_worker, run_torch_qat_worker
    from edgeq.methods.keras import distribute
    from edgeq.report.terminal import print_summary
    from edgeq.run.pipeline import run_pipeline

    if args.model is not None:
        return _run_without_config(args)
    if args.example is not None:
        if args.config is not None:
            raise EdgeqError("give a config or --example NAME, not both")
        args.config = str(example(args.example))
    elif args.config is None:
        raise EdgeqError("give a config (edgeq run models/NAME.yaml), --example mobilenet_v2, or a model and its "
                         "images (edgeq run --model my.onnx --data images/)")
    cfg, _ = _selected(args)
    out = Path(args.out) if args.out else None
    dist = cfg.stages.qat.distribution
    if cfg.stages.qat.enabled and cfg.model.format == "pytorch":
        from edgeq.methods.torch.distributed import torch_role

        role = torch_role()  # under torchrun: rank 0 runs the whole run, the other ranks only fine-tune with it
        if role.distributed and not role.writes:
            return run_torch_qat_worker(cfg, out, role)
    if cfg.stages.qat.enabled and dist.strategy != "none":
        distribute.start(dist)  # MultiWorkerMirroredStrategy must come before any other TensorFlow op
        role = distribute.worker_role(dist)
        if not role.is_chief:
            return run_keras_qat_worker(cfg, out, role)
    run_dir = run_pipeline(cfg, out, wait=not args.no_wait)
    rep = json.loads((run_dir / "report.json").read_text())
    print_summary(rep)
    print(f"report: {run_dir / 'report.md'} | {run_dir / 'report.html'} | {run_dir / 'report.json'}")
    return 0


def _run_without_config(args) -> int:
    """`edgeq run --model M --data D`: the config read from the model and the data, written to RUN/config.yaml."""
    from edgeq.api import run_inferred
    from edgeq.report.terminal import print_summary

    if args.config is not None or args.example is not None:
        raise EdgeqError("--model runs without a config: drop the config / --example, or drop --model")

    def floats(v: str) -> list[float]:
        return [float(x) for x in v.split(",")]

    try:
        kw = {"input_shape": [int(x) for x in args.input_shape.split(",")] if args.input_shape else None,
              "mean": floats(args.mean) if args.mean else None, "std": floats(args.std) if args.std else None}
    except ValueError:
        raise EdgeqError("--input-shape takes H,W,C integers and --mean/--std comma-separated numbers, e.g. "
                         "--mean 123.7,116.3,103.5") from None
    stages = args.stages.split(",") if args.stages else None
    r = run_inferred(args.model, args.data, out=args.out, benchmark=not args.no_benchmark, name=args.name,
                     num_classes=args.num_classes, preset=args.preset, labels_file=args.labels_file,
                     calibration=args.calibration, evaluation=args.evaluation, stages=stages, **kw)
    print_summary(r.report)
    print(f"config: {r.path / 'config.yaml'} (`edgeq run` it to repeat the run)")
    print(f"report: {r.path / 'report.md'} | {r.path / 'report.html'} | {r.path / 'report.json'}")
    return 0


def _cmd_schema(args) -> int:
    from edgeq.core.config import config_schema

    print(json.dumps(config_schema(), indent=2))
    return 0


def _cmd_validate(args) -> int:
    """Every check `edgeq run` makes before converting (model, data, counts, output dir, targets); writes nothing."""
    from edgeq.run.preflight import preflight

    cfg, wanted = _selected(args)
    pf = preflight(cfg, Path(args.out) if args.out else None, wanted)
    print(f"{args.config}: ok ({cfg.name}, model {cfg.model.path}, {cfg.model.format}; "
          f"{len(pf.splits.calibration)} calibration / {len(pf.splits.eval)} eval images; "
          f"stages {', '.join(pf.stages) or 'none'}; run directory {pf.run_dir})")
    return 0


def _cmd_train_reference(args) -> int:
    from edgeq.app.train_reference import RECIPES, train

    if args.name not in RECIPES:
        raise EdgeqError(f"unknown reference model {args.name!r}; choose from {', '.join(RECIPES)}")
    train(args.name, Path(args.out), args.train_images, args.epochs)
    return 0


def _cmd_report(args) -> int:
    from edgeq.report.terminal import print_summary

    p = Path(args.run_dir) / "report.json"
    if not p.exists():
        raise EdgeqError(f"{p}: no report; run `edgeq run CONFIG --out {args.run_dir}` first")
    print_summary(json.loads(p.read_text()))
    return 0


def _cmd_bench(args) -> int:
    from edgeq.core.config import TargetRef
    from edgeq.report.build import write_report
    from edgeq.report.terminal import print_device_table, print_summary
    from edgeq.run.pipeline import open_run
    from edgeq.targets.fleet import benchmark_devices

    ctx = open_run(Path(args.run_dir), Path(args.config) if args.config else None)
    names = args.device or [t.device for t in ctx.cfg.targets]
    if not names:
        raise EdgeqError("name the devices to benchmark on: --device NAME (or list them under `targets:` in the config)")
    if args.bisect:
        return _bisect(ctx, args, names)
    if args.artifact or args.images is not None or args.device_kernels or args.host_kernels != "default":
        raise EdgeqError("--artifact, --images, --host-kernels and --device-kernels go with --bisect")
    refs = [TargetRef(device=d, runs=args.runs, warmup=args.warmup, threads=args.threads, rounds=args.rounds,
                      accuracy=args.accuracy) for d in names]
    ctx.log(f"[benchmark: devices] {ctx.run_dir}")
    benchmark_devices(ctx, list(ctx.manifest.artifacts.values()), refs,
                      Path(args.inventory) if args.inventory else None)
    rep = write_report(ctx)
    print_summary(rep)
    print_device_table(rep)
    print(f"report: {ctx.run_dir / 'report.md'} | {ctx.run_dir / 'report.json'}")
    measured = {t for e in rep["artifacts"] for t, s in e["latency_ms"].items() if s.get("median") is not None}
    missing = [d for d in dict.fromkeys(names) if d not in measured]
    if missing:
        print(f"edgeq: nothing measured on {', '.join(missing)} (reasons in the devices table and report.md); "
              "exit status 3", file=sys.stderr)
        return 3
    return 0


def _bisect(ctx, args, names: list[str]) -> int:
    from edgeq.app.bisect import DEFAULT_IMAGES, bisect_on_device, print_bisect

    for name in dict.fromkeys(names):
        b = bisect_on_device(ctx, name, Path(args.inventory) if args.inventory else None, args.artifact,
                             DEFAULT_IMAGES if args.images is None else args.images, args.host_kernels, args.device_kernels, args.threads or 1)
        print_bisect(b)
        print(f"bisect: {ctx.run_dir / 'bisect' / name / (b.artifact + '.json')} | .md")
    return 0


def _device_from_inventory(ctx_cfg, inventory: str | None, name: str):
    from edgeq.targets.inventory import load_inventory

    path = Path(inventory) if inventory else (ctx_cfg.inventory if ctx_cfg is not None else None)
    if path is None:
        raise EdgeqError(f"--device {name}: no inventory; pass --inventory FILE (or set `inventory:` in the run's config)")
    return load_inventory(path).get(name)


def _cmd_bundle(args) -> int:
    from edgeq.app.bundle import make_bundle, upload_bundle
    from edgeq.run.pipeline import open_run

    ctx = open_run(Path(args.run_dir), Path(args.config) if args.config else None)
    tarball = make_bundle(ctx, args.artifact, Path(args.out) if args.out else None)
    if args.device:
        device = _device_from_inventory(ctx.cfg, args.inventory, args.device)
        upload_bundle(ctx, tarball, device, ctx.log)
    return 0


def _cmd_sweep(args) -> int:
    from edgeq.app.sweep import sweep

    out = Path(args.out)
    s = sweep([Path(c) for c in args.configs], Path(args.inventory) if args.inventory else None, args.device, out,
              jobs=args.jobs, accuracy=args.accuracy, remeasure=args.remeasure, backend=args.backend,
              address=args.address)
    print((out / "sweep.md").read_text())
    print(f"sweep: {out / 'sweep.md'} | {out / 'sweep.json'}")
    failed = [m["model"] for m in s["models"] if m["status"] != "ok"]
    if failed:
        print(f"edgeq: sweep: {', '.join(failed)} failed (see sweep.md); exit status 3", file=sys.stderr)
        return 3
    return 0


def _cmd_clean(args) -> int:
    from edgeq.targets.fleet import clean_device

    device = _device_from_inventory(None, args.inventory, args.device)
    print(json.dumps(clean_device(device, print)))
    return 0


def _cmd_compare(args) -> int:
    from edgeq.app.compare import compare_runs, load_runs, print_comparison, to_json
    from edgeq.core.artifacts import write_json_atomic

    runs = load_runs([Path(p) for p in args.runs])
    rows = compare_runs(runs, args.target, args.max_drop, args.max_latency_ratio)
    if not rows:
        raise EdgeqError(f"no artifact name is common to {runs[0].path} and the other runs: nothing to compare")
    print_comparison(runs, rows, args.target)
    if args.json:
        write_json_atomic(Path(args.json), to_json(runs, rows, args.target))
    bad = [r for r in rows if r.regressions]
    if bad and args.fail_on_regression:
        names = ", ".join(sorted({r.artifact for r in bad}))
        print(f"edgeq: regression in {names} (see above); failing as --fail-on-regression asks", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeq", description="FP32 image classifier -> evaluated, benchmarked INT8 "
                                "edge artifacts (TFLite, ONNX) with a report.")
    p.add_argument("--version", action="version", version=f"edgeq {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the pipeline of one model config")
    r.add_argument("config", nargs="?", help="models/<name>.yaml (or --example NAME, or --model + --data)")
    r.add_argument("--example", metavar="NAME", help="an example shipped in the package: mobilenet_v2")
    r.add_argument("--model", help="run without a config: the model file (.keras/.h5/SavedModel, .onnx, .pt/.pt2)")
    r.add_argument("--data", help="with --model: an image folder (<class>/<images>) or .npz, split into "
                   "calibration and evaluation images")
    r.add_argument("--calibration", help="with --model: calibration images (folder or .npz), with --evaluation")
    r.add_argument("--evaluation", help="with --model: labelled evaluation images (folder or .npz)")
    r.add_argument("--name", help="with --model: the run's name (default: the model file's name)")
    r.add_argument("--input-shape", help="with --model: H,W,C where the model does not say (PyTorch)")
    r.add_argument("--num-classes", type=int, help="with --model: where the model does not say")
    r.add_argument("--labels-file", help="with --model: class names in the model's output order, one per line")
    r.add_argument("--preset", help="with --model: preprocessing of a model family: tf ([-1,1], the default), "
                   "unit ([0,1]), imagenet (torchvision mean/std), caffe")
    r.add_argument("--mean", help="with --model: per-channel mean of (pixel - mean) / std, e.g. 123.7,116.3,103.5")
    r.add_argument("--std", help="with --model: per-channel std, e.g. 58.4,57.1,57.4")
    r.add_argument("--out", help="run directory (default: output.dir or runs/<name>)")
    r.add_argument("--stages", help="comma-separated stages to run (default: those enabled in the config)")
    r.add_argument("--no-benchmark", action="store_true", help="skip latency benchmarks")
    r.add_argument("--reuse-benchmarks", action="store_true", help="keep earlier host latency figures when the CPU, "
                   "threads, rounds and artifacts are unchanged (default: re-measure)")
    r.add_argument("--no-wait", action="store_true", help="refuse, instead of waiting, when another run holds --out")
    r.set_defaults(fn=_cmd_run)
    sc = sub.add_parser("schema", help="print the JSON Schema of a run config (for editors and checks)")
    sc.set_defaults(fn=_cmd_schema)

    v = sub.add_parser("validate", help="check a config as `edgeq run` would (model, data, counts, output "
                       "directory), without converting or writing anything")
    v.add_argument("config")
    v.add_argument("--out", help="the run directory the run would use")
    v.add_argument("--stages", help="the stages the run would use")
    v.set_defaults(fn=_cmd_validate)
    t = sub.add_parser("train-reference", help="train an embedded default FP32 model (Fashion-MNIST)")
    t.add_argument("name", help="mobilenet_v2 | resnet50")
    t.add_argument("--out", default="models")
    t.add_argument("--train-images", type=int)
    t.add_argument("--epochs", type=int)
    t.set_defaults(fn=_cmd_train_reference)
    rp = sub.add_parser("report", help="print the summary table of a finished run")
    rp.add_argument("run_dir")
    rp.set_defaults(fn=_cmd_report)
    b = sub.add_parser("bench", help="benchmark a finished run's artifacts on inventory devices (SSH + agent)")
    b.add_argument("run_dir")
    b.add_argument("--device", action="append", help="device name in the inventory (repeatable; default: the "
                   "config's `targets:`)")
    b.add_argument("--inventory", help="devices YAML (default: the run config's `inventory:`)")
    b.add_argument("--config", help="the run's config, if it moved since the run")
    b.add_argument("--runs", type=int)
    b.add_argument("--warmup", type=int)
    b.add_argument("--threads", type=int)
    b.add_argument("--rounds", type=int, help="interleaved rounds per artifact (default: the config's benchmark.rounds)")
    b.add_argument("--accuracy", type=int, metavar="N", help="also run N eval images through each device's own "
                   "runtime: on-device top-1, agreement with this host's run, paired test (accuracy_on_device)")
    b.add_argument("--bisect", action="store_true", help="instead of timing: run a few eval images through one "
                   "TFLite artifact op by op on this host and on the device, every tensor kept, and name the first op "
                   "whose output differs (in LSB) and how it propagates; RUN_DIR/bisect/<device>/<artifact>.json/.md")
    b.add_argument("--artifact", help="with --bisect: the artifact (default: the run's INT8 TFLite PTQ artifact)")
    b.add_argument("--images", type=int, help="with --bisect: eval images to compare (default 4)")
    kernels = ["default", "builtin", "reference"]
    b.add_argument("--host-kernels", choices=kernels, default="default", help="with --bisect: this host's TFLite "
                   "kernels (default: XNNPACK where it takes the op, as the host's evaluation runs)")
    b.add_argument("--device-kernels", choices=kernels, help="with --bisect: the device's TFLite kernels "
                   "(default: the inventory's tflite_kernels, itself default)")
    b.set_defaults(fn=_cmd_bench)
    bu = sub.add_parser("bundle", help="one artifact as a deployable directory + tarball (model, labels, "
                        "preprocessing, agent, classify.py, README); --device uploads and checks it there")
    bu.add_argument("run_dir")
    bu.add_argument("--artifact", required=True, help="artifact name (see the run's report)")
    bu.add_argument("--out", help="where to write it (default: RUN_DIR/bundles)")
    bu.add_argument("--device", help="inventory device to upload it to (unpacked under its workdir's bundles/)")
    bu.add_argument("--inventory", help="devices YAML (default: the run config's `inventory:`)")
    bu.add_argument("--config", help="the run's config, if it moved since the run")
    bu.set_defaults(fn=_cmd_bundle)
    sw = sub.add_parser("sweep", help="many model configs: every pipeline, then every artifact on every device "
                        "(one queue per device, devices in parallel), one combined report")
    sw.add_argument("configs", nargs="+", help="model configs, e.g. models/*.yaml")
    sw.add_argument("--inventory", help="devices YAML (without it: host only)")
    sw.add_argument("--device", action="append", help="inventory device (repeatable; default: every device in it)")
    sw.add_argument("--out", default="runs/sweep", help="sweep directory: one run directory per model + sweep.md/json")
    sw.add_argument("--jobs", type=int, default=1, help="model pipelines run at once (default 1; each uses the "
                    "benchmark's threads and TensorFlow's own)")
    sw.add_argument("--accuracy", type=int, metavar="N", help="also N eval images on each device (accuracy_on_device)")
    sw.add_argument("--remeasure", action="store_true", help="time devices again even where the runs hold figures")
    sw.add_argument("--backend", choices=["local", "ray"], default="local", help="local: threads and subprocesses "
                    "here (default); ray: every pipeline and device job a Ray task, devices as cluster resources "
                    "(docs/ray.md; pip install 'edgeq[ray]')")
    sw.add_argument("--address", metavar="auto|HOST:PORT", help="the Ray cluster to join (default: start one here "
                    "declaring every swept device); --out must be a directory every node sees")
    sw.set_defaults(fn=_cmd_sweep)
    cl = sub.add_parser("clean", help="remove everything edgeq copied to a device (its workdir)")
    cl.add_argument("--device", required=True)
    cl.add_argument("--inventory", required=True, help="devices YAML")
    cl.set_defaults(fn=_cmd_clean)
    c = sub.add_parser("compare", help="finished runs side by side (the first is the baseline); a CI gate with "
                       "--fail-on-regression")
    c.add_argument("runs", nargs="+", help="run directories, or a directory holding runs")
    c.add_argument("--target", default="host", help="whose latency to compare (host or a device name)")
    c.add_argument("--fail-on-regression", action="store_true", help="exit 1 when an artifact loses top-1 "
                   "significantly beyond --max-drop, or its latency ratio's interval lies above --max-latency-ratio")
    c.add_argument("--max-drop", type=float, default=0.5, help="points of top-1 (default 0.5)")
    c.add_argument("--max-latency-ratio", type=float, default=1.10, help="default 1.10")
    c.add_argument("--json", help="also write the comparison as JSON to this file")
    c.set_defaults(fn=_cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    import errno
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stop_on_signals():
            return args.fn(args)
    except EdgeqError as e:
        print(f"edgeq: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        status = e.exit_status if isinstance(e, Interrupted) else 130
        name = e.signal_name if isinstance(e, Interrupted) else "SIGINT"
        print(f"edgeq: interrupted ({name}); finished artifacts are kept and the same command resumes the run",
              file=sys.stderr)
        return status
    except OSError as e:  # disk full, read-only or vanished paths mid-run: what, where, what to do
        where = f"{e.filename}: " if e.filename else ""
        hint = {errno.ENOSPC: "the disk is full; free space and rerun (finished artifacts are kept)",
                errno.EROFS: "the file system is read-only; choose a writable --out",
                errno.EACCES: "permission denied; choose a writable --out or fix the permissions"}.get(
            e.errno, "check the path and rerun (finished artifacts are kept)")
        print(f"edgeq: error: {where}{e.strerror or e}; {hint}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line; EDGEQ_DEBUG=1 shows the traceback
        if os.environ.get("EDGEQ_DEBUG"):
            raise
        msg = " ".join(str(e).split())[:300]
        print(f"edgeq: error: unexpected {e.__class__.__name__}: {msg} (an edgeq bug: please report it with the "
              "output of the same command run with EDGEQ_DEBUG=1)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
