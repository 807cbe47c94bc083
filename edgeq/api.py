"""edgeq from Python: the same runs as the `edgeq` command (which is a thin layer over this module).

    import edgeq
    run = edgeq.run(edgeq.example("mobilenet_v2"), out="runs/mnv2", stages=["tflite_ptq"])
    run = edgeq.quantize(keras_model, calibration=(images, labels), evaluation=(images, labels), max_accuracy_drop=1.0)
    run.ship["host"], run.artifacts["int8_tflite_ptq"].top1
    edgeq.load_run("runs/mnv2").compare(run)

A model may be a file path or in memory (a tf-keras model, a `torch.nn.Module`, an `onnx.ModelProto`); data may be an
image folder or .npz path, a pair of numpy arrays (uint8 pixels N×H×W×C, integer labels), a `tf.data.Dataset` or a
torch `DataLoader` yielding (images, labels). In-memory inputs are written into the run directory (`inputs/`) and the
complete config the run used into `config.yaml` beside the report, so `edgeq run RUN/config.yaml` repeats the run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import yaml

from edgeq.app.compare import compare_runs, load_runs
from edgeq.core.artifacts import write_bytes_atomic
from edgeq.core.config import RunConfig, config_from_dict, load_config
from edgeq.core.errors import ConfigError, DataError, EdgeqError
from edgeq.core.formats import model_input_format
from edgeq.core.image_folder import list_image_folder
from edgeq.loaders.keras import load_keras_model
from edgeq.loaders.onnx import read_onnx_input
from edgeq.loaders.pytorch import load_torch_model
from edgeq.run.pipeline import run_pipeline
from edgeq.stages import registry
from edgeq.app.in_memory import arrays, check_model_kind, save_data, save_model

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# model-family preprocessing: uint8 pixel -> (pixel - mean) / std, per channel
PRESETS: dict[str, tuple[list[float], list[float]]] = {
    "tf": ([127.5], [127.5]),  # [-1, 1]: Keras applications MobileNet/EfficientNet-lite style
    "unit": ([0.0], [255.0]),  # [0, 1]
    "imagenet": ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),  # torchvision / timm ImageNet models
    "caffe": ([103.939, 116.779, 123.68], [1.0]),  # Keras ResNet50 "caffe" mode (BGR means; edgeq feeds RGB)
}


# ------------------------------------------------------------------ the result of a run
@dataclass(frozen=True)
class ArtifactResult:
    """One artifact of a run as its report.json gives it: what it is, its accuracy with the paired test vs FP32,
    and its latency per target (ms; median with a 95 % interval)."""

    name: str
    format: str
    precision: str
    method: str
    path: Path
    size_bytes: int
    sha256: str
    top1: float | None
    top1_ci95: tuple[float, float] | None
    n: int
    drop_pt: float | None = None  # top-1 points lost against the FP32 model of its format (paired, same images)
    drop_ci95_pt: tuple[float, float] | None = None
    mcnemar_p: float | None = None
    verdict: str | None = None
    latency_ms: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def from_report(cls, run_dir: Path, e: dict) -> "ArtifactResult":
        acc = e.get("accuracy") or {}
        vs = e.get("vs_fp32") or {}
        ci = acc.get("ci95")
        dci = vs.get("drop_ci95_pt")
        return cls(name=e["name"], format=e["format"], precision=e["precision"], method=e["method"],
                   path=run_dir / e["path"], size_bytes=e["size_bytes"], sha256=e["sha256"], top1=acc.get("top1"),
                   top1_ci95=tuple(ci) if ci else None, n=acc.get("n") or 0, drop_pt=vs.get("drop_pt"),
                   drop_ci95_pt=tuple(dci) if dci else None, mcnemar_p=(vs.get("mcnemar") or {}).get("p"),
                   verdict=vs.get("verdict"), latency_ms=dict(e.get("latency_ms") or {}))


@dataclass(frozen=True)
class Run:
    """A finished run: its directory, report.json and typed artifacts. `ship` maps each target to the artifact
    edgeq would ship there (None when nothing is within the budget)."""

    path: Path
    report: dict

    @property
    def name(self) -> str:
        return self.report["model"]

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    @property
    def config_path(self) -> Path | None:
        c = self.report.get("config")
        return Path(c) if c else None

    @property
    def artifacts(self) -> dict[str, ArtifactResult]:
        return {e["name"]: ArtifactResult.from_report(self.path, e) for e in self.report["artifacts"]}

    @property
    def ship(self) -> dict[str, str | None]:
        return {t: (s or {}).get("artifact") for t, s in self.report.get("ship", {}).items()}

    def compare(self, other: "Run | str | Path", target: str = "host", max_drop: float = 0.5,
                max_latency_ratio: float = 1.10) -> list:
        """This run as the baseline against `other`, artifact by artifact (as `edgeq compare`): a list of rows
        with the paired accuracy change and the latency ratio, and the regressions past the two limits."""
        runs = load_runs([self.path, other.path if isinstance(other, Run) else Path(other)])
        return compare_runs(runs, target, max_drop, max_latency_ratio)

    def __repr__(self) -> str:
        return f"Run({self.name!r}, {str(self.path)!r}, {len(self.report['artifacts'])} artifacts, ship={self.ship})"


def load_run(path: str | Path) -> Run:
    """A finished run directory (from `edgeq run`, `edgeq.run` or `edgeq.quantize`) as a `Run`."""
    path = Path(path)
    rep = path / "report.json"
    if not rep.is_file():
        raise EdgeqError(f"{path}: no report.json; is this a finished run directory? (`edgeq run CONFIG --out {path}`)")
    try:
        return Run(path, json.loads(rep.read_text()))
    except ValueError:
        raise EdgeqError(f"{rep}: not valid JSON; rerun the run's command to rewrite it") from None


# ------------------------------------------------------------------ running
def example(name: str = "mobilenet_v2") -> Path:
    """The config of an embedded example model shipped inside the package (works from any directory)."""
    p = EXAMPLES_DIR / f"{name}.yaml"
    if not p.is_file():
        have = sorted(q.stem for q in EXAMPLES_DIR.glob("*.yaml"))
        raise ConfigError(f"no example named {name!r}; the package ships: {', '.join(have) or 'none'}")
    return p


def _config(config: str | Path | Mapping | RunConfig) -> RunConfig:
    if isinstance(config, RunConfig):
        return config.model_copy(deep=True)
    if isinstance(config, Mapping):
        return config_from_dict(dict(config), base_dir=Path.cwd(), where="config (dict)")
    return load_config(Path(config))


def run(config: str | Path | Mapping | RunConfig, *, out: str | Path | None = None,
        stages: Sequence[str] | None = None, benchmark: bool = True, log: Callable[[str], None] | None = None,
        wait: bool = True) -> Run:
    """Run a config (a YAML path, a dict of the same keys, or a RunConfig) end to end; returns the finished Run.

    Args:
        stages: run only these stages (the `--stages` of the command line); default: those the config enables.
        benchmark: False skips the latency measurements (`--no-benchmark`).
    """
    cfg = _config(config)
    select_stages(cfg, stages)
    if not benchmark:
        cfg.benchmark.enabled = False
    kw = {"log": log} if log is not None else {}
    run_dir = run_pipeline(cfg, Path(out) if out is not None else None, wait=wait, **kw)
    return load_run(run_dir)


def select_stages(cfg: RunConfig, stages: Iterable[str] | None) -> None:
    """Enable exactly `stages` (None: leave the config's choice); an unknown name is a ConfigError."""
    if stages is None:
        return
    wanted = list(stages)
    unknown = [s for s in wanted if s not in registry.names()]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(registry.names())}")
    for name in registry.names():
        getattr(cfg.stages, name).enabled = name in wanted


# ------------------------------------------------------------------ a run without a YAML file
def infer_config(model: str | Path, data: str | Path | None = None, *, calibration: str | Path | None = None,
                 evaluation: str | Path | None = None, name: str | None = None,
                 input_shape: Sequence[int] | None = None, num_classes: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, preset: str | None = None,
                 labels_file: str | Path | None = None, stages: Sequence[str] | None = None,
                 max_accuracy_drop: float = 1.0, out: str | Path | None = None) -> dict:
    """The complete config of a run from a model file and data, read from them: input shape and class count from
    the model, class names from the folders (or `labels_file`), preprocessing from `mean`/`std` or a preset, the
    default stages of the model's format. Returns a plain dict (absolute paths) that `config_from_dict` takes."""
    model = Path(model).resolve()
    fmt = model_input_format(model)
    shape, classes = _model_io(model, fmt, input_shape)
    if num_classes is not None:
        if classes is not None and classes != num_classes:
            raise ConfigError(f"--num-classes {num_classes}, but {model} has {classes} outputs")
        classes = num_classes
    if classes is None:
        raise ConfigError(f"{model}: cannot read the number of classes from a {fmt} model; give --num-classes")
    if (mean is None) != (std is None):
        raise ConfigError("give both --mean and --std (or --preset), not one of them")
    if mean is None:
        preset = preset or "tf"
        if preset not in PRESETS:
            raise ConfigError(f"unknown preprocessing preset {preset!r}; choose from {', '.join(PRESETS)}")
        mean, std = PRESETS[preset]
    elif preset is not None:
        raise ConfigError("give --preset or --mean/--std, not both")
    raw_data: dict[str, Any] = _data_section(data, calibration, evaluation, labels_file)
    n_cal = raw_data.pop("_n_calibration")
    raw: dict[str, Any] = {
        "name": name or model.stem,
        "description": f"inferred by edgeq from {model.name}" + (f" and {Path(data).name}" if data else ""),
        "model": {"path": str(model), "format": fmt, "input_shape": list(shape), "num_classes": classes},
        "preprocess": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "data": raw_data,
        "max_accuracy_drop": max_accuracy_drop,
        "stages": _default_stages(fmt, n_cal, stages),
    }
    if out is not None:
        raw["output"] = {"dir": str(Path(out).resolve())}
    return raw


def run_inferred(model: str | Path, data: str | Path | None = None, *, out: str | Path | None = None,
                 benchmark: bool = True, log: Callable[[str], None] | None = None, **kw) -> Run:
    """`edgeq run --model M --data D`: infer the config, write it to RUN/config.yaml, run it."""
    raw = infer_config(model, data, out=out, **kw)
    cfg = config_from_dict(raw, where="the inferred config")  # every check before anything is written
    run_dir = cfg.run_dir().resolve()
    raw.setdefault("output", {"dir": str(run_dir)})
    path = run_dir / "config.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(path, raw, "edgeq from the model and the data")
    return run(path, benchmark=benchmark, log=log)


def _write_config(path: Path, raw: dict, by: str) -> None:
    head = f"# written by {by}; `edgeq run {path}` repeats the run\n"
    write_bytes_atomic(path, (head + yaml.safe_dump(raw, sort_keys=False)).encode())


def _model_io(path: Path, fmt: str, input_shape: Sequence[int] | None) -> tuple[tuple[int, int, int], int | None]:
    """(H, W, C) and the class count a model file declares."""
    if fmt == "onnx":
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
        out = [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
        hwc = tuple(input_shape) if input_shape else _hwc_of(dims, path)
        read_onnx_input(path, hwc, where=str(path))  # the same checks a run makes
        return hwc, (out[-1] or None) if out else None
    if fmt in ("keras", "h5", "savedmodel"):
        m = load_keras_model(path, fmt)
        shp = tuple(int(d) for d in m.input_shape[1:]) if None not in m.input_shape[1:] else None
        hwc = tuple(input_shape) if input_shape else shp
        if hwc is None or len(hwc) != 3:
            raise ConfigError(f"{path}: the model's input shape {m.input_shape} is not (None, H, W, C); give --input-shape")
        return hwc, int(m.output_shape[-1])
    if not input_shape:  # pytorch: TorchScript and state_dicts do not say what they take
        raise ConfigError(f"{path}: a PyTorch file does not record its input size; give --input-shape H,W,C")
    import torch

    h, w, c = input_shape
    net = load_torch_model(path, None, path.resolve().parent)  # TorchScript / torch.export: no code of the file runs
    with torch.no_grad():
        out = net(torch.zeros(1, c, h, w))
    return tuple(input_shape), int(out.shape[-1]) if getattr(out, "ndim", 0) == 2 else None


def _hwc_of(dims: list[int], path: Path) -> tuple[int, int, int]:
    if len(dims) != 4 or not all(dims[1:]):
        raise ConfigError(f"{path}: the input's shape {dims} is not fixed 4-D; give --input-shape H,W,C")
    return (dims[2], dims[3], dims[1]) if dims[1] in (1, 3) else (dims[1], dims[2], dims[3])


def _count_images(p: Path) -> int:
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return len(z[[k for k in z.files if k.endswith("labels")][0]])
    return len(list_image_folder(p))


def _data_section(data, calibration, evaluation, labels_file) -> dict:
    if data is None and (calibration is None or evaluation is None):
        raise ConfigError("give the images: --data DIR|FILE.npz (split into calibration and evaluation), or both "
                          "--calibration and --evaluation")
    first = Path(data or calibration)
    kind = "npz" if first.suffix == ".npz" else "image_folder"
    out: dict[str, Any] = {"kind": kind}
    if data is not None:
        n = _count_images(Path(data))
        if n < 4:
            raise DataError(f"{data}: {n} images; a run needs at least 4 (half calibrate, half evaluate)")
        out.update(path=str(Path(data).resolve()), calibration_size=min(300, n // 2))
        out["_n_calibration"] = min(300, n // 2)
    else:
        n = _count_images(Path(calibration))
        out.update(calibration_path=str(Path(calibration).resolve()), eval_path=str(Path(evaluation).resolve()),
                   calibration_size=min(300, n))
        out["_n_calibration"] = min(300, n)
    if labels_file is not None:
        out["labels_file"] = str(Path(labels_file).resolve())
    return out


def _default_stages(fmt: str, n_cal: int, stages: Sequence[str] | None) -> dict:
    """The default stages of a model format: INT8 TFLite and INT8 ONNX (ONNX Runtime) for every input."""
    wanted = list(stages) if stages is not None else ["tflite_ptq", "onnx_ptq"]
    unknown = [s for s in wanted if s not in registry.names()]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(registry.names())}")
    out: dict[str, dict] = {s: {"enabled": s in wanted} for s in registry.names()}
    out["tflite_ptq"]["representative_images"] = n_cal
    out["onnx_ptq"]["calibration_images"] = n_cal
    out["litert_quant"]["calibration_images"] = n_cal
    return out


# ------------------------------------------------------------------ models and data in memory
def quantize(model: Any, *, calibration: Any, evaluation: Any, input_shape: Sequence[int] | None = None,
             num_classes: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             preset: str | None = None, name: str = "model", stages: Sequence[str] | None = None,
             max_accuracy_drop: float = 1.0, out: str | Path | None = None, benchmark: bool | Mapping = True,
             log: Callable[[str], None] | None = None, **options: Any) -> Run:
    """Quantize a model in memory or on disk and judge every artifact on `evaluation`, as `edgeq run` does.

    Args:
        model: a tf-keras model, a `torch.nn.Module` (needs `input_shape`), an `onnx.ModelProto`, or a model file.
        calibration, evaluation: an image folder / .npz path, a pair (uint8 images N×H×W×C, integer labels), a
            `tf.data.Dataset` or a torch `DataLoader` of (images, labels); float images must lie in [0, 1]
            (they are stored as uint8 pixels and normalised by `mean`/`std` like every other input).
        benchmark: False skips latency; a mapping sets the `benchmark:` options, e.g. {"rounds": 5, "runs": 50}.
        options: more config sections merged over the inferred config (`evaluate={...}`, `seed=1`), and each
            stage's options as `stage_options={"onnx_ptq": {"advanced": True}}`.
    """
    run_dir = Path(out or Path("runs") / name).resolve()
    inputs = run_dir / "inputs"
    shape = tuple(input_shape) if input_shape else None
    cal_data = arrays(calibration, "calibration")  # every check on the data before anything is written
    ev_data = arrays(evaluation, "evaluation")
    check_model_kind(model, shape)
    inputs.mkdir(parents=True, exist_ok=True)
    model_path = save_model(model, inputs, shape)
    cal = save_data(cal_data, inputs / "calibration.npz")
    ev = save_data(ev_data, inputs / "evaluation.npz")
    raw = infer_config(model_path, calibration=cal, evaluation=ev, name=name, input_shape=shape,
                       num_classes=num_classes, mean=mean, std=std, preset=preset, stages=stages,
                       max_accuracy_drop=max_accuracy_drop, out=run_dir)
    stage_options = options.pop("stage_options", {}) or {}
    for stage, opts in stage_options.items():
        if stage not in raw["stages"]:
            raise ConfigError(f"stage_options: unknown stage {stage!r}; choose from {', '.join(registry.names())}")
        raw["stages"][stage].update(opts)
    if isinstance(benchmark, Mapping):
        options["benchmark"] = {**options.get("benchmark", {}), **benchmark}
        benchmark = True
    for key, value in options.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, Mapping) else value
    cfg = config_from_dict(raw, where="edgeq.quantize")
    path = run_dir / "config.yaml"
    _write_config(path, raw, "edgeq.quantize")
    del cfg
    return run(path, benchmark=benchmark, log=log)
