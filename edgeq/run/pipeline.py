"""One pipeline run: config -> data + FP32 model -> stages -> evaluate -> benchmark -> report.

Data moves one way. A stage is `run_stage(ctx, options) -> list[Artifact]`; it takes what it needs
from the RunContext and never reaches back into the CLI or another stage. Stages, evaluation and
benchmarks whose inputs hash the same as a finished result are reused, so a killed run resumes.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeq.core import __version__
from edgeq.core import interrupt
from edgeq.core.artifacts import Artifact, Manifest, atomic_path, sha256_of, stage_key
from edgeq.core.config import RunConfig, load_config
from edgeq.core.data import Preprocess, Splits
from edgeq.core.errors import EdgeqError
from edgeq.core.formats import imported_artifact, runs_from_onnx
from edgeq.core.progress import log
from edgeq.core.results import Results
from edgeq.core.sysinfo import package_versions
from edgeq.core.tfcompat import set_seed
from edgeq.loaders import pytorch as torch_import
from edgeq.loaders.keras import check_input_shape, check_num_classes, load_keras_model
from edgeq.loaders.onnx import read_onnx_input
from edgeq.measure.calibration_check import calibration_diagnostics
from edgeq.measure.evaluate import evaluate_artifacts, warn_if_chance
from edgeq.methods.onnx.to_tf import onnx_to_keras
from edgeq.report.build import write_report
from edgeq.run.inputs import load_splits, preprocess_of
from edgeq.run.lock import run_lock
from edgeq.run.preflight import Preflight, preflight
from edgeq.stages import registry
from edgeq.stages.registry import resolve
from edgeq.targets.fleet import benchmark_devices
from edgeq.targets.host import benchmark_host
from edgeq.targets.offline_checks import check_artifacts
from edgeq.methods.shared.calibration import CalibrationImages


def log_print(msg: str) -> None:
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
    translation: dict | None = None  # how an ONNX input became the Keras model (onnx_to_tf notes)
    results: Results = field(init=False)

    def __post_init__(self):
        self.results = Results.load(self.run_dir / "results.json")

    # -- the FP32 Keras model, loaded once (for ONNX and PyTorch input: the FP32 ONNX translated by onnx2tf)
    def keras_model(self):
        if self._model is None and self.is_onnx_input:
            hwc = tuple(self.cfg.model.input_shape)
            src = self.fp32.abspath(self.run_dir)
            info = read_onnx_input(src, hwc, where=self.cfg.model.path)
            with tempfile.TemporaryDirectory(prefix=".onnx2tf-", dir=self.run_dir) as work:
                self._model, self.translation = onnx_to_keras(src, info, self.pre(self.splits.calibration.images[:20]),
                                                              Path(work), where=self.cfg.model.path)
        elif self._model is None:
            m = self.cfg.model
            self._model = load_keras_model(m.path, m.format, m.trust_lambda_layers)
            check_input_shape(self._model, m.input_shape, str(m.path))
            check_num_classes(self._model, m.num_classes, str(m.path))
        return self._model

    def calibration(self, n: int, option: str) -> CalibrationImages:
        """The first `n` calibration images (config key `option` asked for them), as every quantizer takes them."""
        return CalibrationImages.take(self.splits.calibration, self.pre, n, option)

    @property
    def is_onnx_input(self) -> bool:
        """The run's FP32 model is ONNX: given as ONNX, or exported to it from PyTorch."""
        return runs_from_onnx(self.cfg.model.format)

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

    def sample_input(self) -> np.ndarray:
        return self.pre(self.splits.eval.images[:1])


def _check_calibration(ctx: RunContext) -> None:
    """Class coverage and clipping of the calibration images against the evaluation data (report section
    `calibration`); a warning line for each problem found, as for the labels check."""
    d = calibration_diagnostics(ctx)
    ctx.results.set_section("calibration", d)
    for part in ("coverage", "clipping", "provenance"):
        w = d[part].get("warning")
        if w:
            ctx.log(f"edgeq: warning: {w}")
            ctx.results.sections.setdefault("warnings", [])
            if w not in ctx.results.sections["warnings"]:
                ctx.results.sections["warnings"].append(w)
    ctx.results.save()


def _run_stage(name: str, ctx: RunContext, options) -> list[Artifact]:
    """One stage's work: its row's run function on its options."""
    return resolve(registry.stage(name).run)(ctx, options)


def _import_fp32(ctx: RunContext) -> Artifact:
    m = ctx.cfg.model
    src = Path(m.path)
    if m.format == "pytorch":
        return _export_pytorch(ctx)
    fmt, suffix = imported_artifact(m.format, src)  # e.g. a .h5 input stays .h5 and is a keras artifact
    if m.format != "onnx":
        ctx.keras_model()  # validates the model now: bad input fails before anything is written
    elif not src.exists():
        raise EdgeqError(f"{src}: model file not found")
    filename = "fp32" + suffix

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


def run_pipeline(cfg: RunConfig, out: Path | None = None, log: Callable[[str], None] = log_print,
                 only_stages: set[str] | None = None, wait: bool = True) -> Path:
    """Run one config end to end into its run directory (checked first, locked, resumable); returns the directory."""
    t0 = time.perf_counter()

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


def _export_pytorch(ctx: RunContext) -> Artifact:
    """A PyTorch input becomes the run's FP32 ONNX (`fp32_onnx`), exported by edgeq and checked against PyTorch."""
    m = ctx.cfg.model
    src = Path(m.path)
    module = ctx._model if ctx._model is not None else torch_import.load_torch_model(src, m.factory, m.factory_base)
    check_x = ctx.pre(ctx.splits.calibration.images[:16])

    def export(tmp: Path) -> dict:
        notes = torch_import.export_onnx(module, tmp, tuple(m.input_shape), m.opset)
        notes["max_abs_diff_vs_torch"] = torch_import.max_abs_diff_vs_torch(module, tmp, check_x)
        notes["checked_on"] = f"{len(check_x)} calibration images"
        return {"source": str(src), "source_format": "pytorch", **notes}

    key = {"source_sha256": sha256_of(src), "opset": m.opset, "factory": m.factory}
    fp32 = ctx.produce("fp32_onnx", "fp32.onnx", key, export, fmt="onnx", precision="fp32", method="none",
                       stage="import", params={"opset": m.opset, "source_format": "pytorch"})
    ctx._model = None  # the stages' Keras model is the ONNX's translation, made on first use
    return fp32


@contextmanager
def _timed(phases: dict[str, float], phase: str):
    """Add the wall time of the block to phases[phase] (also when it raises: a failed stage's time counts)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        phases[phase] = round(phases.get(phase, 0.0) + time.perf_counter() - t, 2)


def _run_locked(cfg: RunConfig, run_dir: Path, pf: Preflight, log: Callable[[str], None],
                only_stages: set[str] | None, t0: float) -> Path:
    # where the run's time goes, phase by phase in the order run; "preflight" is config, data and model checks
    phases: dict[str, float] = {"preflight": round(time.perf_counter() - t0, 2)}
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
        with _timed(phases, "import"):
            ctx.fp32 = _import_fp32(ctx)
        produced: list[Artifact] = [ctx.fp32]
        ran: list[registry.Stage] = []
        for row in registry.STAGES:
            name = row.name
            opts = getattr(cfg.stages, name)
            if not opts.enabled or (only_stages is not None and name not in only_stages):
                continue
            why = registry.skip_reason(name, cfg.model)
            if why:
                log(f"[{name}] skipped: {why}")
                ctx.results.sections.setdefault("skipped", {})[name] = why
                continue
            log(f"[{name}]")
            with _timed(phases, name):
                produced += _run_stage(name, ctx, opts)
            ran.append(row)
        with _timed(phases, "offline_checks"):
            check_artifacts(ctx, produced)  # TensorRT readiness of the INT8 ONNX artifacts, from the targets side
        # keep only artifacts of this config (an earlier run in the same dir may have made others)
        keep = {a.name for a in produced}
        manifest.artifacts = {n: a for n, a in manifest.artifacts.items() if n in keep}
        manifest.save()
        arts = list(manifest.artifacts.values())
        if cfg.evaluate.enabled:
            log("[evaluate]")
            with _timed(phases, "evaluate"):
                evaluate_artifacts(ctx, arts)
                warn_if_chance(ctx)
            with _timed(phases, "calibration_check"):
                _check_calibration(ctx)
        for row in (r for r in ran if r.after_evaluate):
            with _timed(phases, f"{row.name}:after_evaluate"):
                resolve(row.after_evaluate)(ctx)
        if cfg.benchmark.enabled:
            log("[benchmark: host]")
            with _timed(phases, "benchmark:host"):
                benchmark_host(ctx, arts)
        if cfg.targets:
            log("[benchmark: devices]")
            with _timed(phases, "benchmark:devices"):
                benchmark_devices(ctx, arts)
    finally:
        ctx.results.stage_seconds_last_run = phases  # a failed run keeps where its time went
        ctx.results.save()

    # wall_seconds: the last run that made something; a rerun that reused everything keeps it and adds its own
    seconds = round(time.perf_counter() - t0, 1)
    if _work_done(ctx) != before or ctx.results.wall_seconds is None:
        ctx.results.wall_seconds = seconds
        ctx.results.stage_seconds = ctx.results.stage_seconds_last_run
    ctx.results.wall_seconds_last_run = seconds
    ctx.results.save()
    interrupt.check()  # a Ctrl-C swallowed inside TensorFlow still stops the run before the report
    write_report(ctx)
    return run_dir


def _work_done(ctx: RunContext) -> tuple:
    """What the run directory holds (artifacts by key, evaluation and latency entries): changes if a run made something."""
    return (sorted((a.name, a.key, a.sha256) for a in ctx.manifest.artifacts.values()),
            sorted(ctx.results.evaluations), ctx.results.measured_latency_keys())


def open_run(run_dir: Path, config: Path | None = None, log: Callable[[str], None] = log_print) -> RunContext:
    """The RunContext of a finished run directory (its manifest names the config), e.g. for `edgeq bench`."""
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
