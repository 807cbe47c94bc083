"""The one schema of a pipeline run, validated up front (the stages' options are in edgeq.core.options).

Every option a stage has is a field here with a default. An unknown key or a wrong type is a one-line
`ConfigError` naming the file and the key. Relative paths are resolved against the config file's
directory (model and data) or the current directory (output).
"""
from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Literal, Mapping, Optional

from pydantic import Field, PositiveInt, ValidationError, create_model, field_validator, model_validator

from edgeq.core.errors import ConfigError
from edgeq.core.formats import model_input_format, runs_from_onnx
from edgeq.core.options import (LITERT_RECIPES, ComparisonSpec, DistributionSpec, LitertQuantSpec, OnnxFallbackSpec,  # noqa: F401
                                OnnxPtqSpec, QatSpec, StagesSpec, Strict, TflitePtqSpec, stage_options, stages_spec,
                                tf_config_problem)
from edgeq.core.yamlfile import read_yaml_mapping



class ModelSpec(Strict):
    path: Path
    format: Optional[Literal["keras", "h5", "savedmodel", "onnx", "pytorch"]] = None  # inferred from the path if omitted
    input_shape: tuple[PositiveInt, PositiveInt, PositiveInt]  # H, W, C of one image
    num_classes: int = Field(gt=1)
    family: str = "custom"  # mobilenet_v2 | resnet50 | custom: informational, recorded in the report
    trust_lambda_layers: bool = False  # .h5 with Lambda layers runs Python from the file: opt in explicitly
    # pytorch: a TorchScript file, a torch.export .pt2, or a state_dict with `factory` ("package.module:function"
    # returning the nn.Module; imported from the model file's directory or sys.path); exported to ONNX at `opset`
    factory: Optional[str] = None
    opset: int = Field(17, ge=13, le=21)

    @model_validator(mode="after")
    def _infer_format(self):
        if self.format is None:
            object.__setattr__(self, "format", model_input_format(self.path))
        if self.factory is not None and self.format != "pytorch":
            raise ValueError(f"model.factory is for PyTorch state_dict files; this model is {self.format}")
        return self

    @property
    def factory_base(self) -> Path:
        """Where a `factory` module is looked for first: the model file's directory."""
        return Path(self.path).resolve().parent


class PreprocessSpec(Strict):
    """float_input = (uint8_pixels - mean) / std, per channel (one value = all channels)."""

    mean: list[float] = [127.5]
    std: list[float] = [127.5]

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v, info):
        if not v:
            raise ValueError(f"{info.field_name} needs 1 value (all channels) or one per channel")
        if any(not math.isfinite(x) for x in v):
            raise ValueError(f"{info.field_name} must hold finite numbers")
        if info.field_name == "std" and any(x == 0 for x in v):
            raise ValueError("std must not contain 0")
        return v


class DataSpec(Strict):
    kind: Literal["fashion_mnist", "image_folder", "npz"] = "fashion_mnist"
    path: Optional[Path] = None  # one labelled set, split deterministically into calibration/eval/train
    calibration_path: Optional[Path] = None  # or separate sets (take precedence over `path`)
    eval_path: Optional[Path] = None
    train_path: Optional[Path] = None
    calibration_size: int = Field(300, ge=1)
    eval_size: Optional[int] = Field(None, ge=1)  # None: all available evaluation images
    train_size: Optional[int] = Field(None, ge=1)
    prefer_full_dataset: bool = True  # fashion_mnist: the Debian package when installed, else the shipped sample
    seed: int = Field(0, ge=0)
    # image_folder class map, in the model's output order: folder name -> index. Without one, folder names that
    # are all numbers are the indices themselves, else sorted folder names (their count must be num_classes).
    classes: Optional[list[str]] = None
    labels_file: Optional[Path] = None  # the same as a text file: one class name per line, model order

    @model_validator(mode="after")
    def _paths(self):
        if self.kind != "fashion_mnist" and self.path is None and (self.calibration_path is None or self.eval_path is None):
            raise ValueError(f"data.kind={self.kind} needs data.path, or both data.calibration_path and data.eval_path")
        if self.classes is not None and self.labels_file is not None:
            raise ValueError("give the class map once: data.classes or data.labels_file, not both")
        if self.classes is not None:
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if dup:
                raise ValueError(f"data.classes names {dup} more than once; each class name once, in model order")
        return self


class EvaluateSpec(Strict):
    enabled: bool = True
    batch_size: int = Field(64, ge=1)
    # evaluate the FP32 Keras model itself too; false: only where an artifact has no FP32 of its own format to be
    # judged against (an FP32 .tflite / ONNX export is the same model, evaluated anyway)
    keras_baseline: bool = True
    # local processes that evaluate one artifact file in contiguous, batch-aligned chunks (the Keras model always
    # evaluates in-process); predictions are merged in order, so they equal a single process's
    workers: int = Field(1, ge=1)


class BenchmarkSpec(Strict):
    """Artifacts on one target are timed interleaved: `rounds` rounds, each artifact in turn taking
    `warmup` untimed then `runs` timed single-image inferences (see edgeq.targets.interleave)."""

    enabled: bool = True
    runs: int = Field(50, ge=1)  # timed runs per artifact per round
    warmup: int = Field(10, ge=0)  # untimed runs per artifact per round
    rounds: int = Field(20, ge=1)  # >= 6 for a 95 % interval of the median; many short rounds resist one slow one
    threads: int = Field(1, ge=1)
    # an artifact whose round would take longer (a precision on reference kernels) gets fewer runs per round,
    # at least `min_runs`; every round still times every artifact in turn, so ratios stay per round. null: no cap
    max_round_seconds: Optional[float] = Field(0.5, gt=0)
    min_runs: int = Field(5, ge=1)
    # accepted for configs written before noisy followed decisions (targets.interleave): no longer flags anything
    noisy_limit: float = Field(0.10, gt=0)
    reuse: bool = False  # keep earlier figures when CPU, threads, rounds and artifacts match (--reuse-benchmarks)


class TargetRef(Strict):
    device: str  # a name in the inventory
    rounds: Optional[int] = Field(None, ge=1)
    runs: Optional[int] = None
    warmup: Optional[int] = None
    threads: Optional[int] = None
    accuracy: Optional[int] = Field(None, ge=1)  # eval images run through the device's own runtime


class OutputSpec(Strict):
    dir: Optional[Path] = None  # default: runs/<name>


class RunConfig(Strict):
    name: str  # also the run directory runs/<name>: a plain name, never a path
    description: str = ""
    seed: int = Field(0, ge=0)
    # the accuracy budget: the most top-1 (percentage points) an artifact may lose against FP32 and still
    # be shipped; verdicts and the "what to ship" line per target follow from it
    max_accuracy_drop: float = Field(1.0, ge=0)
    # per class: the most recall (points) one class may lose against FP32 when that loss is significant after Holm's
    # correction across the classes; None: classes are tested and reported, but only the overall budget decides
    max_class_drop: Optional[float] = Field(None, ge=0)
    model: ModelSpec
    preprocess: PreprocessSpec = PreprocessSpec()
    data: DataSpec = DataSpec()
    stages: StagesSpec = Field(default_factory=StagesSpec)  # its fields: the stage table's (`run_config_model`)
    evaluate: EvaluateSpec = EvaluateSpec()
    benchmark: BenchmarkSpec = BenchmarkSpec()
    inventory: Optional[Path] = None
    targets: list[TargetRef] = []
    output: OutputSpec = OutputSpec()
    source: Optional[Path] = Field(None, exclude=True)  # the file this came from

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str):
        if not v.strip():
            raise ValueError("name must not be empty")
        if "/" in v or "\\" in v or "\x00" in v or v.strip() in (".", "..") or v.startswith("~"):
            raise ValueError("name must be a plain name (it names the run directory runs/<name>), not a path; "
                             "use output.dir or --out to choose where the run goes")
        if len(v.encode()) > 200:
            raise ValueError(f"name is {len(v.encode())} bytes long; a directory name must be at most 200")
        return v

    def run_dir(self, override: Path | None = None) -> Path:
        return Path(override or self.output.dir or Path("runs") / self.name)


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ()))


SECRET_KEYS = re.compile(r"key_file|password|passphrase|secret|token|private", re.I)


def looks_like_secret(value) -> bool:
    """True for text that could be key material: a PEM block, or a long run of base64 that is no existing file.

    A missing file that merely looks like base64 is refused either way; the test only decides what is echoed."""
    if not isinstance(value, str):
        return False
    v = value.strip()
    if "PRIVATE KEY" in v or "-----BEGIN" in v or "\n" in v:
        return True
    if len(v) < 40 or not re.fullmatch(r"[A-Za-z0-9+/=\s]+", v):
        return False
    mixed = all(re.search(p, v) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    try:
        is_file = Path(v).is_file()
    except (OSError, ValueError):
        is_file = False
    return mixed and not is_file


def _shown(err: dict) -> str:
    """' (got ...)' for a scalar input that is safe to echo; nothing for mappings, lists or possible secrets."""
    value = err.get("input")
    if isinstance(value, (dict, list, tuple)) or SECRET_KEYS.search(_loc(err)) or looks_like_secret(value):
        return ""
    return " (got " + " ".join(f"{value!r:.60}".split()) + ")"


def format_validation_error(e: ValidationError, where: str) -> str:
    parts = []
    for err in e.errors():
        key = _loc(err) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        elif err["type"] == "missing":
            parts.append(f"missing key '{key}'")
        else:
            msg = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
            parts.append(f"'{key}': {msg}{_shown(err)}")
    return f"{where}: " + "; ".join(parts)


def expand_path(p: Path, key: str, where: str) -> Path:
    """`~` and `$VARS` expanded; a variable that is not set is an error, not a literal '$X' directory."""
    s = str(p)
    if "$" in s:
        s = os.path.expandvars(s)
        m = re.search(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", s)
        if m:
            raise ConfigError(f"{where}: '{key}' uses ${m.group(1)}, which is not set in the environment; "
                              "set it or write the path out")
    return Path(os.path.expanduser(s))


def config_schema() -> dict:
    """The JSON Schema of a run config (`edgeq schema`): every section and option with its default."""
    schema = run_config_model().model_json_schema(mode="validation")  # with the stage table's sections
    schema["properties"].pop("source", None)  # set by edgeq from the file a config came from, never written
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edgeq run config"
    return schema


def load_config(path: Path | str) -> RunConfig:
    """A validated RunConfig from a YAML file, or one ConfigError line naming the file and the key."""
    path = Path(path)
    return config_from_dict(read_yaml_mapping(path), base_dir=path.parent, where=str(path))


def run_config_model(stages: Mapping[str, type[Strict]] | None = None) -> type[RunConfig]:
    """The RunConfig model whose `stages:` has one field per stage of `stages` (default: the stage table)."""
    return _run_config_model(stages_spec(stage_options() if stages is None else stages))


@functools.cache
def _run_config_model(spec: type[StagesSpec]) -> type[RunConfig]:
    return create_model("RunConfig", __base__=RunConfig, stages=(spec, Field(default_factory=spec)))


def config_from_dict(raw: dict, base_dir: Path = Path("."), where: str = "config") -> RunConfig:
    try:
        cfg = run_config_model().model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None
    base = Path(base_dir)

    def rel(p: Path | None, key: str) -> Path | None:
        if p is None:
            return None
        p = expand_path(p, key, where)
        return p if p.is_absolute() else (base / p)

    cfg.model.path = rel(cfg.model.path, "model.path")
    for f in ("path", "calibration_path", "eval_path", "train_path", "labels_file"):
        setattr(cfg.data, f, rel(getattr(cfg.data, f), f"data.{f}"))
    cfg.inventory = rel(cfg.inventory, "inventory")
    dist = cfg.stages.qat.distribution
    if dist.checkpoint_dir is not None:
        dist.checkpoint_dir = expand_path(dist.checkpoint_dir, "stages.qat.distribution.checkpoint_dir", where)
    if cfg.output.dir is not None:
        cfg.output.dir = expand_path(cfg.output.dir, "output.dir", where)
    cfg.source = Path(where) if where != "config" else None
    check_consistency(cfg, where)
    return cfg


def check_consistency(cfg: RunConfig, where: str) -> None:
    """Rules across sections (pydantic checks one field at a time): a ConfigError naming the keys."""
    c = cfg.model.input_shape[2]
    for key in ("mean", "std"):
        v = getattr(cfg.preprocess, key)
        if len(v) not in (1, c):
            raise ConfigError(f"{where}: preprocess.{key} has {len(v)} values but the model has {c} channels "
                              f"(model.input_shape {list(cfg.model.input_shape)}); give 1 value or {c}")
    d, s = cfg.data, cfg.stages

    counts = [("stages.onnx_ptq.calibration_images", s.onnx_ptq.calibration_images, s.onnx_ptq.enabled),
              ("stages.tflite_ptq.representative_images", s.tflite_ptq.representative_images, s.tflite_ptq.enabled)]
    if not runs_from_onnx(cfg.model.format) or (cfg.model.format == "pytorch" and cfg.model.factory):
        # QAT and the comparison convert with the TFLite PTQ representative images too (a PyTorch state_dict
        # + factory runs them as well: NNCF QAT)
        needs_rep = s.tflite_ptq.enabled or s.qat.enabled or s.comparison.enabled
        counts = [("stages.tflite_ptq.representative_images", s.tflite_ptq.representative_images, needs_rep),
                  *counts,
                  ("stages.qat.calibration_images", s.qat.calibration_images, s.qat.enabled and s.qat.calibrate_ranges),
                  ("stages.comparison.calibration_images", s.comparison.calibration_images, s.comparison.enabled)]
    counts.append(("stages.tflite_ptq.size_study", max(s.tflite_ptq.size_study, default=0), s.tflite_ptq.enabled))
    pr = s.precision  # 16x8 / int16 calibrate on the INT8 TFLite's images unless representative_images is set
    counts.append(("stages.precision.representative_images",
                   pr.representative_images or s.tflite_ptq.representative_images, pr.enabled))
    counts.append(("stages.nncf_ptq.calibration_images", s.nncf_ptq.calibration_images, s.nncf_ptq.enabled))
    lq = s.litert_quant
    counts.append(("stages.litert_quant.calibration_images", lq.calibration_images + (lq.holdout_images if lq.fallback
                                                                                       else 0), lq.enabled))
    fp32_tflite = s.tflite_ptq.enabled and (s.tflite_ptq.export_fp32 or runs_from_onnx(cfg.model.format))
    if s.litert_quant.enabled and not fp32_tflite:
        raise ConfigError(f"{where}: stages.litert_quant quantizes the run's FP32 .tflite, which stages.tflite_ptq "
                          "makes: set stages.tflite_ptq.enabled and export_fp32 to true, or disable litert_quant")
    if s.onnx_fallback.enabled and not s.onnx_ptq.enabled:
        raise ConfigError(f"{where}: stages.onnx_fallback falls back from the INT8 ONNX that stages.onnx_ptq makes: "
                          "enable stages.onnx_ptq, or disable onnx_fallback")
    if s.onnx_fallback.enabled and s.onnx_ptq.enabled and \
            s.onnx_ptq.calibration_images + s.onnx_fallback.holdout_images > d.calibration_size:
        raise ConfigError(f"{where}: stages.onnx_fallback.holdout_images ({s.onnx_fallback.holdout_images}) are taken "
                          f"from the calibration split after the {s.onnx_ptq.calibration_images} ORT calibrates on, but "
                          f"data.calibration_size is {d.calibration_size}; raise data.calibration_size to at least "
                          f"{s.onnx_ptq.calibration_images + s.onnx_fallback.holdout_images} or lower holdout_images")
    for key, n, on in counts:
        if on and n > d.calibration_size:
            raise ConfigError(f"{where}: {key} is {n} but the calibration split has {d.calibration_size} images "
                              f"(data.calibration_size); lower {key.rsplit('.', 1)[1]} or raise data.calibration_size")
    if d.classes is not None and len(d.classes) != cfg.model.num_classes:
        raise ConfigError(f"{where}: data.classes lists {len(d.classes)} names but model.num_classes is "
                          f"{cfg.model.num_classes}; list every class of the model, in its output order")
