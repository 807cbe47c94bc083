"""One pipeline run: config -> data + FP32 model -> stages -> evaluate -> benchmark -> report.

Data moves one way. A stage is `run_stage(ctx, options) -> list[Artifact]`; it takes what it needs
from the RunContext and never reaches back into the CLI or another stage. Stages, evaluation and
benchmarks whose inputs hash the same as a finished result are reused, so a killed run resumes.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__, interrupt
from .artifacts import Artifact, Manifest, atomic_path, sha256_of, size_of, stage_key, write_json_atomic
from .config import RunConfig, check_consistency
from .data import (FolderListing, LabelledImages, Preprocess, Splits, decode_image_folder, fashion_mnist_splits,
                   list_image_folder, load_npz, read_labels_file, split_one, split_sizes)
from .errors import ConfigError, DataError, EdgeqError
from .sysinfo import package_versions

# stage name -> "module:function"; each function is run_stage(ctx, options) -> list[Artifact]
STAGES: dict[str, str] = {
    "tflite_ptq": "edgeq.quantize.tflite_ptq_stage:run_stage",
    "onnx_ptq": "edgeq.quantize.onnx_ptq:run_stage",
    "qat": "edgeq.quantize.qat:run_stage",
    "comparison": "edgeq.quantize.compare:run_stage",
}
KERAS_ONLY_STAGES = {"tflite_ptq", "qat", "comparison"}
# stage name -> "module:function(ctx)" run after [evaluate], for stages that summarise evaluated artifacts
AFTER_EVALUATE: dict[str, str] = {"comparison": "edgeq.quantize.compare:after_evaluate"}


def log_print(msg: str) -> None:
    from .progress import log

    log(msg)


@dataclass
class RunContext:
    cfg: RunConfig
    run_dir: Path
    manifest: Manifest
    pre: Preprocess
    splits: Splits
    log: Callable[[str], None] = log_print
    fp32: Artifact | None = None  # the FP32 source artifact (keras or onnx)
    _model: Any = None
    results_path: Path = field(init=False)
    results: dict = field(init=False)

    def __post_init__(self):
        self.results_path = self.run_dir / "results.json"
        try:
            self.results = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        except ValueError:
            self.results = {}
        self.results.setdefault("evaluations", {})
        self.results.setdefault("latency", {})
        self.results.setdefault("sections", {})
        self.results.setdefault("compatibility", {})

    # -- the FP32 Keras model, loaded once
    def keras_model(self):
        if self._model is None:
            from .models import check_input_shape, check_num_classes, load_keras_model

            m = self.cfg.model
            self._model = load_keras_model(m.path, m.format, m.trust_lambda_layers)
            check_input_shape(self._model, m.input_shape, str(m.path))
            check_num_classes(self._model, m.num_classes, str(m.path))
        return self._model

    @property
    def is_onnx_input(self) -> bool:
        return self.cfg.model.format == "onnx"

    def artifact_dir(self) -> Path:
        d = self.run_dir / "artifacts"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def produce(self, name: str, filename: str, key_parts: Any, make: Callable[[Path], dict | None], *,
                fmt: str, precision: str, method: str, stage: str, params: dict,
                parent: str | None = None) -> Artifact:
        """Make artifact `name` by calling make(tmp_path) unless an identical one is already finished."""
        parent_sha = self.manifest.artifacts[parent].sha256 if parent in self.manifest.artifacts else None
        key = stage_key(name, parent_sha, key_parts, params, self.cfg.seed)
        old = self.manifest.reusable(name, key)
        if old is not None:
            self.log(f"  = {name}: reused ({old.path}, inputs unchanged)")
            return old
        t = time.perf_counter()
        target = self.artifact_dir() / filename
        with atomic_path(target) as tmp:
            notes = make(tmp) or {}
        a = Artifact.record(self.run_dir, target, name=name, format=fmt, precision=precision, method=method,
                            stage=stage, params=params, parent=parent, key=key, notes=notes)
        a.notes["seconds"] = round(time.perf_counter() - t, 1)
        self.manifest.add(a)
        self.log(f"  + {name}: {a.path} ({a.size_bytes / 1e6:.2f} MB, {a.notes['seconds']} s)")
        return a

    def set_section(self, name: str, value: Any) -> None:
        self.results["sections"][name] = value
        self.save_results()

    def save_results(self) -> None:
        write_json_atomic(self.results_path, self.results)

    def sample_input(self) -> np.ndarray:
        return self.pre(self.splits.eval.images[:1])


def preprocess_of(cfg: RunConfig) -> Preprocess:
    h, w, c = cfg.model.input_shape
    return Preprocess((h, w), c, tuple(cfg.preprocess.mean), tuple(cfg.preprocess.std))


def class_map(cfg: RunConfig) -> list[str] | None:
    """The model's class names in output order (data.classes or data.labels_file), or None."""
    d = cfg.data
    if d.classes is not None:
        return list(d.classes)
    if d.labels_file is None:
        return None
    names = read_labels_file(d.labels_file)
    if len(names) != cfg.model.num_classes:
        raise DataError(f"{d.labels_file}: lists {len(names)} class names but model.num_classes is "
                        f"{cfg.model.num_classes}; list every class of the model, one per line, in output order")
    return names


def load_splits(cfg: RunConfig, pre: Preprocess) -> Splits:
    d = cfg.data
    if d.kind == "fashion_mnist":
        return fashion_mnist_splits(d.calibration_size, d.eval_size, d.train_size, d.seed, d.prefer_full_dataset)
    separate = d.calibration_path is not None and d.eval_path is not None
    listings: dict[Path, FolderListing] = {}
    if d.kind == "image_folder":  # list (cheap) and check every count before decoding any image
        classes = class_map(cfg)
        for p in ([d.calibration_path, d.eval_path] if separate else [d.path]) + ([d.train_path] if d.train_path else []):
            listings[p] = list_image_folder(p, classes, cfg.model.num_classes)
        if separate:
            _check_calibration_count(d, len(listings[d.calibration_path]))
        else:
            split_sizes(len(listings[d.path]), d.calibration_size, d.eval_size, str(d.path))

    def load(p: Path) -> LabelledImages:
        if d.kind == "npz":
            return load_npz(p)
        return decode_image_folder(listings[p], pre)

    if separate:
        cal = load(d.calibration_path)
        _check_calibration_count(d, len(cal))
        ev = load(d.eval_path)
        if cal.fingerprint() == ev.fingerprint():
            raise DataError("data.calibration_path and data.eval_path hold the same images; "
                            "calibration and evaluation images must not overlap")
        rng = np.random.default_rng(d.seed)
        cal = cal.take(rng.permutation(len(cal))[:d.calibration_size])
        whole = d.eval_size is None or d.eval_size >= len(ev)
        if not whole:
            ev = ev.take(rng.permutation(len(ev))[:d.eval_size])
        tr = load(d.train_path) if d.train_path else None
        return Splits(cal, ev, tr, f"{d.eval_path} ({len(ev)} images)", full_test_set=whole)
    splits = split_one(load(d.path), d.calibration_size, d.eval_size, d.seed)
    if d.train_path:
        splits.train = load(d.train_path)
    return splits


def _check_calibration_count(d, have: int) -> None:
    if have < d.calibration_size:
        raise DataError(f"{d.calibration_path}: {d.calibration_size} calibration images asked for "
                        f"(data.calibration_size) but only {have} found; lower it or add images")


def _check_classes(cfg: RunConfig, splits: Splits) -> None:
    for part in (splits.calibration, splits.eval):
        if len(part) and part.labels.max() >= cfg.model.num_classes:
            raise DataError(f"{part.source}: label {int(part.labels.max())} but the model has "
                            f"{cfg.model.num_classes} classes (model.num_classes); fix the labels, "
                            "or map class names to the model's indices with data.classes")


def parse_stages(text: str) -> set[str]:
    """`--stages a,b` -> {"a", "b"}; an unknown or empty name is an error listing the stages."""
    names = [n.strip() for n in text.split(",")]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise ConfigError(f"--stages: unknown stage {', '.join(repr(n) for n in unknown)}; choose from "
                          f"{', '.join(STAGES)} (comma-separated), or disable stages in the config")
    return set(names)


def planned_stages(cfg: RunConfig, only_stages: set[str] | None = None) -> list[str]:
    """The stages a run will execute, in order: enabled, selected, and applicable to the input model."""
    onnx = cfg.model.format == "onnx"
    return [n for n in STAGES if getattr(cfg.stages, n).enabled and (only_stages is None or n in only_stages)
            and not (onnx and n in KERAS_ONLY_STAGES)]


# artifacts each stage writes (for the free-space estimate)
_STAGE_ARTIFACTS = {"tflite_ptq": 2, "onnx_ptq": 3, "qat": 2, "comparison": 1}


def check_output_dir(run_dir: Path, need_bytes: int) -> None:
    """The run directory can be created and written, with room for the planned artifacts (nothing is left)."""
    import tempfile

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: the run directory (--out / output.dir) is an existing file; "
                          "give a directory path")
    base = run_dir
    while not base.exists():
        if base.is_symlink():
            raise ConfigError(f"{base}: broken symlink in the run directory's path; fix it or choose another --out")
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"{run_dir}: cannot create the run directory because {base} is a file; "
                          "choose another --out")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".edgeq-write-test-", dir=base))
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot write the run directory there ({e.strerror or e}); "
                          "choose a writable --out") from None
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        raise ConfigError(f"{run_dir}: {free / 1e6:.0f} MB free on its disk but about {need_bytes / 1e6:.0f} MB "
                          "are needed (FP32 model size x planned artifacts); free space or choose another --out")


@dataclass
class Preflight:
    """What a run checked before writing anything; `edgeq validate` stops here."""

    run_dir: Path
    pre: Preprocess
    splits: Splits
    stages: list[str]
    model: Any = None  # the loaded Keras model (None for ONNX input)


def preflight(cfg: RunConfig, out: Path | None = None, only_stages: set[str] | None = None) -> Preflight:
    """Every check a run can make without converting: output dir, targets, model, data, counts. Writes nothing."""
    where = str(cfg.source or "config")
    check_consistency(cfg, where)
    stages = planned_stages(cfg, only_stages)
    run_dir = cfg.run_dir(out)
    m = cfg.model
    if not m.path.exists():
        raise ConfigError(f"{m.path}: model file not found (model.path in {where}); fix the path")
    n_artifacts = 1 + sum(_STAGE_ARTIFACTS[s] for s in stages)
    check_output_dir(run_dir, size_of(m.path) * n_artifacts)
    if cfg.targets:  # a wrong inventory or device name fails now, not after the quantisation
        from .targets.remote import check_targets

        check_targets(cfg)
    model = None
    if m.format == "onnx":
        from .quantize.onnx_ptq import check_onnx_outputs, read_onnx_input

        read_onnx_input(m.path, tuple(m.input_shape))
        check_onnx_outputs(m.path, m.num_classes)
    else:
        from .models import check_input_shape, check_num_classes, load_keras_model

        model = load_keras_model(m.path, m.format, m.trust_lambda_layers)
        check_input_shape(model, m.input_shape, str(m.path))
        check_num_classes(model, m.num_classes, str(m.path))
    pre = preprocess_of(cfg)
    splits = load_splits(cfg, pre)
    _check_classes(cfg, splits)
    if "qat" in stages:
        from .quantize.qat import training_split

        training_split(splits.train, cfg.stages.qat)
    return Preflight(run_dir, pre, splits, stages, model)


def _import_fp32(ctx: RunContext) -> Artifact:
    m = ctx.cfg.model
    src = Path(m.path)
    fmt = {"h5": "keras", "keras": "keras", "savedmodel": "savedmodel", "onnx": "onnx"}[m.format]
    if m.format != "onnx":
        ctx.keras_model()  # validates the model now: bad input fails before anything is written
    elif not src.exists():
        raise EdgeqError(f"{src}: model file not found")
    filename = "fp32" + ({"keras": src.suffix or ".keras", "savedmodel": "", "onnx": ".onnx"}[fmt])

    def copy(tmp: Path) -> dict:
        # a copy, never a hard link: overwriting the source later must not change the run's artifact
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        return {"source": str(src)}

    # keyed by the source's content, not its path or mtime: a moved project reuses, an edited model re-imports
    return ctx.produce(f"fp32_{fmt}", filename, {"source_sha256": sha256_of(src)}, copy, fmt=fmt,
                       precision="fp32", method="none", stage="import", params={})


def _resolve(spec: str) -> Callable:
    """'package.module:function' -> the function, imported on first use (heavy imports stay lazy)."""
    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)


def _run_stage(name: str, ctx: RunContext, options) -> list[Artifact]:
    return _resolve(STAGES[name])(ctx, options)


def evaluate_artifacts(ctx: RunContext, artifacts: list[Artifact]) -> None:
    from .evaluate import agreement, evaluate
    from .runtime import KerasPredictor, open_predictor

    ev = ctx.splits.eval
    fp = ev.fingerprint()
    preds: dict[str, np.ndarray] = {}
    labels = ctx.run_dir / "eval" / "labels.npz"  # with the predictions, lets `edgeq compare` pair two runs
    if not labels.exists():
        labels.parent.mkdir(exist_ok=True)
        with atomic_path(labels) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, labels=ev.labels.astype(np.int32), fingerprint=np.array(fp))
    for a in artifacts:
        k = f"{a.sha256}:{fp}"
        cached = ctx.results["evaluations"].get(k)
        if cached is not None and (ctx.run_dir / cached["predictions_file"]).exists():
            with np.load(ctx.run_dir / cached["predictions_file"], allow_pickle=False) as z:
                preds[a.name] = z["predictions"]
            ctx.log(f"  = {a.name}: top-1 {cached['top1']:.4f} (reused)")
            continue
        if a.format in ("keras", "savedmodel"):
            if not ctx.cfg.evaluate.keras_baseline:
                continue
            pred = KerasPredictor(ctx.keras_model())
        else:
            pred = open_predictor(a.abspath(ctx.run_dir), a.format, threads=os.cpu_count(),
                                  **({"optimization": ort_level(ctx, a)} if a.format == "onnx" else {}))
        r = evaluate(pred, ev, ctx.pre, ctx.splits.dataset, ctx.cfg.evaluate.batch_size, label=f"evaluate {a.name}")
        pf = f"eval/{a.name}.npz"
        (ctx.run_dir / "eval").mkdir(exist_ok=True)
        with atomic_path(ctx.run_dir / pf) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, predictions=r.predictions)
        preds[a.name] = r.predictions
        ctx.results["evaluations"][k] = {**r.to_dict(), "artifact": a.name, "predictions_file": pf,
                                         "predictor": pred.describe()}
        ctx.save_results()
        ctx.log(f"  * {a.name}: top-1 {r.top1:.4f} top-5 {r.top5} on {r.n} images ({r.seconds} s)")
    # agreement of every artifact's top-1 with its FP32 reference (the FP32 of the same format if any)
    fp32_by_fmt = {a.format: a.name for a in artifacts if a.precision == "fp32" and a.name in preds}
    base = ctx.fp32.name if ctx.fp32 and ctx.fp32.name in preds else next(iter(fp32_by_fmt.values()), None)
    for a in artifacts:
        if a.name not in preds or base is None:
            continue
        ref = fp32_by_fmt.get(a.format, base)
        k = f"{a.sha256}:{fp}"
        ctx.results["evaluations"][k]["agreement"] = {"reference": ref, "top1_agreement": agreement(preds[a.name], preds[ref])}
    ctx.save_results()
    per_layer_errors(ctx, artifacts)


def per_layer_errors(ctx: RunContext, artifacts: list[Artifact], images: int = 8) -> None:
    """SQNR of every INT8 TFLite op output against the FP32 TFLite baseline, on real eval images."""
    from .evaluate import per_layer_error

    fp32 = next((a for a in artifacts if a.format == "tflite" and a.precision == "fp32"), None)
    if fp32 is None:
        return
    x = ctx.pre(ctx.splits.eval.images[:images])
    store = ctx.results.setdefault("per_layer", {})
    for a in artifacts:
        if a.format != "tflite" or a.precision == "fp32":
            continue
        k = f"{fp32.sha256}:{a.sha256}:{ctx.splits.eval.fingerprint()}:{images}"
        if k not in store:
            try:
                layers, n_ops = per_layer_error(fp32.abspath(ctx.run_dir), a.abspath(ctx.run_dir), x)
                store[k] = {"artifact": a.name, "reference": fp32.name, "images": len(x), "layers": layers,
                            "ops_matched": len(layers), "ops_total": n_ops}
                if len(layers) < n_ops / 2:
                    store[k].update(layers=None, reason=(
                        f"per-layer error not measured: only {len(layers)} of {n_ops} ops line up by name with "
                        f"{fp32.name} (a re-wrapped graph, e.g. QAT); compare at the model output instead"))
            except (ValueError, RuntimeError, ImportError) as e:
                store[k] = {"artifact": a.name, "reference": fp32.name, "layers": None,
                            "reason": f"per-layer error not measured: {str(e).splitlines()[0][:200]}"}
            ctx.save_results()
        worst = sorted(store[k]["layers"] or [], key=lambda r: r["sqnr_db"])[:1]
        if worst:
            ctx.log(f"  * {a.name}: per-layer SQNR over {len(store[k]['layers'])} ops, worst "
                    f"{worst[0]['sqnr_db']:.1f} dB at {worst[0]['op']} ({worst[0]['layers'][:60]})")


def ort_level(ctx: RunContext, a: Artifact) -> str:
    """The ONNX Runtime graph-optimisation level an artifact runs at: its own if it names one, else the config's."""
    from .targets.host import ort_level as level

    return level(a, ctx.cfg.stages.onnx_ptq.graph_optimization)


def _warn_if_chance(ctx: RunContext) -> None:
    """Loud warning when the FP32 reference scores near chance: the labels probably are not the model's classes."""
    k = ctx.cfg.model.num_classes
    fp32 = [e for e in ctx.results["evaluations"].values()
            if ctx.fp32 is not None and e.get("artifact") == ctx.fp32.name and e.get("top1") is not None]
    if not fp32:
        return
    top1 = fp32[-1]["top1"]
    if top1 <= CHANCE_FACTOR / k:
        msg = (f"edgeq: warning: the FP32 model's top-1 is {top1:.4f}, near chance for {k} classes ({1 / k:.4f}): "
               "labels probably do not match the model's classes; give the model's class names in output order "
               "as data.classes (or data.labels_file)")
        ctx.log(msg)
        import sys

        print(msg, file=sys.stderr, flush=True)
        ctx.set_section("warnings", [msg.removeprefix("edgeq: warning: ")])


CHANCE_FACTOR = 1.5  # FP32 top-1 at or below 1.5x chance (1/num_classes) is "near chance"


def run_pipeline(cfg: RunConfig, out: Path | None = None, log: Callable[[str], None] = log_print,
                 only_stages: set[str] | None = None, wait: bool = True) -> Path:
    t0 = time.perf_counter()
    from .tfcompat import set_seed

    def checked_log(msg: str) -> None:  # every progress line is also a point where Ctrl-C stops the run
        interrupt.check()
        log(msg)

    run_dir = cfg.run_dir(out)
    checked_log(f"edgeq {__version__}: {cfg.name} -> {run_dir}")
    pf = preflight(cfg, out, only_stages)  # everything checkable fails here, before any write
    set_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir, wait):
        return _run_locked(cfg, run_dir, pf, checked_log, only_stages, t0)


def _run_locked(cfg: RunConfig, run_dir: Path, pf: Preflight, log: Callable[[str], None],
                only_stages: set[str] | None, t0: float) -> Path:
    splits = pf.splits
    log(f"  data: {len(splits.calibration)} calibration, {len(splits.eval)} eval "
        f"({splits.dataset})" + (f", {len(splits.train)} train" if splits.train is not None else ""))
    header = {"edgeq_version": __version__, "model": cfg.name, "config": str(cfg.source.resolve()) if cfg.source else None,
              "seed": cfg.seed, "versions": package_versions()}
    manifest = Manifest(run_dir, header)
    ctx = RunContext(cfg, run_dir, manifest, pf.pre, splits, log)
    ctx._model = pf.model  # loaded and checked by the preflight
    before = _work_done(ctx)
    try:
        ctx.fp32 = _import_fp32(ctx)
        produced: list[Artifact] = [ctx.fp32]
        ran: list[str] = []
        for name in STAGES:
            opts = getattr(cfg.stages, name)
            if not opts.enabled or (only_stages is not None and name not in only_stages):
                continue
            if ctx.is_onnx_input and name in KERAS_ONLY_STAGES:
                log(f"[{name}] skipped: the input model is ONNX; only ONNX stages apply")
                ctx.results["sections"].setdefault("skipped", {})[name] = "input model is ONNX"
                continue
            log(f"[{name}]")
            produced += _run_stage(name, ctx, opts)
            ran.append(name)
        # keep only artifacts of this config (an earlier run in the same dir may have made others)
        keep = {a.name for a in produced}
        manifest.artifacts = {n: a for n, a in manifest.artifacts.items() if n in keep}
        manifest.save()
        arts = list(manifest.artifacts.values())
        if cfg.evaluate.enabled:
            log("[evaluate]")
            evaluate_artifacts(ctx, arts)
            _warn_if_chance(ctx)
        for name in (n for n in ran if n in AFTER_EVALUATE):
            _resolve(AFTER_EVALUATE[name])(ctx)
        if cfg.benchmark.enabled:
            log("[benchmark: host]")
            from .targets.host import benchmark_host

            benchmark_host(ctx, arts)
        if cfg.targets:
            log("[benchmark: devices]")
            from .targets.remote import benchmark_devices

            benchmark_devices(ctx, arts)
    finally:
        ctx.save_results()
    from .report import write_report

    # wall_seconds: the last run that made something; a rerun that reused everything keeps it and adds its own
    seconds = round(time.perf_counter() - t0, 1)
    if _work_done(ctx) != before or "wall_seconds" not in ctx.results:
        ctx.results["wall_seconds"] = seconds
    ctx.results["wall_seconds_last_run"] = seconds
    ctx.save_results()
    interrupt.check()  # a Ctrl-C swallowed inside TensorFlow still stops the run before the report
    write_report(ctx)
    return run_dir


def _work_done(ctx: RunContext) -> tuple:
    """What the run directory holds (artifacts by key, evaluation and latency entries): changes if a run made something."""
    return (sorted((a.name, a.key, a.sha256) for a in ctx.manifest.artifacts.values()),
            sorted(ctx.results["evaluations"]), sorted(k for k, v in ctx.results["latency"].items() if v.get("stats")))


LOCK_NAME = ".edgeq.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, wait: bool = True):
    """One run at a time per run directory: flock on run_dir/.edgeq.lock (released by the kernel if the holder
    dies, so a stale lock never blocks); the holder's pid is written in it for the message."""
    import fcntl
    import sys

    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            if not wait:
                raise EdgeqError(f"{run_dir}: another edgeq run (pid {holder}) is writing this run directory; "
                                 "wait for it to finish, or choose another --out") from None
            print(f"edgeq: {run_dir} is in use by another edgeq run (pid {holder}); waiting for it to finish "
                  "(--no-wait refuses instead)", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def open_run(run_dir: Path, config: Path | None = None, log: Callable[[str], None] = log_print) -> RunContext:
    """The RunContext of a finished run directory (its manifest names the config), e.g. for `edgeq bench`."""
    from .config import load_config

    run_dir = Path(run_dir)
    mpath = run_dir / "manifest.json"
    if not mpath.is_file():
        raise EdgeqError(f"{run_dir}: no manifest.json; run `edgeq run CONFIG --out {run_dir}` first")
    try:
        header = {k: v for k, v in json.loads(mpath.read_text()).items() if k != "artifacts"}
    except ValueError:
        raise EdgeqError(f"{mpath}: not valid JSON") from None
    src = Path(config) if config else (Path(header["config"]) if header.get("config") else None)
    if src is None or not src.is_file():
        raise EdgeqError(f"{run_dir}: the run's config {src or '(unrecorded)'} is not found from here; "
                         "pass --config FILE")
    cfg = load_config(src)
    pre = preprocess_of(cfg)
    ctx = RunContext(cfg, run_dir, Manifest(run_dir, header), pre, load_splits(cfg, pre), log)
    fp32 = [a for a in ctx.manifest.artifacts.values() if a.stage == "import"]
    ctx.fp32 = fp32[0] if fp32 else None
    return ctx
