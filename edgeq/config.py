"""The one schema of a pipeline run, validated up front.

Every option a stage has is a field here with a default. An unknown key or a wrong type is a one-line
`ConfigError` naming the file and the key. Relative paths are resolved against the config file's
directory (model and data) or the current directory (output).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(Strict):
    path: Path
    format: Optional[Literal["keras", "h5", "savedmodel", "onnx"]] = None  # inferred from the path if omitted
    input_shape: tuple[int, int, int]  # H, W, C of one image
    num_classes: int = Field(gt=1)
    family: str = "custom"  # mobilenet_v2 | resnet50 | custom: informational, recorded in the report
    trust_lambda_layers: bool = False  # .h5 with Lambda layers runs Python from the file: opt in explicitly

    @model_validator(mode="after")
    def _infer_format(self):
        if self.format is None:
            p = self.path
            fmt = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".onnx": "onnx"}.get(p.suffix.lower())
            if fmt is None and (p.suffix == "" or p.is_dir()):
                fmt = "savedmodel"
            if fmt is None:
                raise ValueError(f"cannot tell the model format from '{p.name}'; set model.format")
            object.__setattr__(self, "format", fmt)
        return self


class PreprocessSpec(Strict):
    """float_input = (uint8_pixels - mean) / std, per channel (one value = all channels)."""

    mean: list[float] = [127.5]
    std: list[float] = [127.5]

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v):
        if any(s == 0 for s in v):
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
    seed: int = 0

    @model_validator(mode="after")
    def _paths(self):
        if self.kind != "fashion_mnist" and self.path is None and (self.calibration_path is None or self.eval_path is None):
            raise ValueError(f"data.kind={self.kind} needs data.path, or both data.calibration_path and data.eval_path")
        return self


class TflitePtqSpec(Strict):
    enabled: bool = True
    representative_images: int = Field(300, ge=1)
    input_type: Literal["int8", "uint8", "float32"] = "int8"
    output_type: Literal["int8", "uint8", "float32"] = "int8"
    per_channel: bool = True
    export_fp32: bool = True  # the FP32 .tflite baseline
    allow_float_ops: bool = False  # True permits a hybrid model (ops that stay float); never the default


class OnnxPtqSpec(Strict):
    """ONNX export + ONNX Runtime static quantization. "auto" host options are chosen from this CPU's int8
    features (see edgeq.quantize.onnx_ptq.host_int8_scheme); they never affect the TensorRT artifact."""

    enabled: bool = False
    opset: int = Field(17, ge=13, le=18)  # 13+: per-channel Q/DQ; 18: newest tf2onnx 1.17 writes
    quant_format: Literal["qdq", "qoperator"] = "qdq"  # host artifact only; the TensorRT one is always QDQ
    per_channel: bool = True  # host artifact only
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    activation_type: Literal["auto", "int8", "uint8"] = "auto"  # host artifact
    weight_type: Literal["auto", "int8", "uint8"] = "auto"  # host artifact
    symmetric: Literal["auto", True, False] = "auto"  # host artifact: activations with zero-point 0
    reduce_range: Literal["auto", True, False] = "auto"  # host artifact: 7-bit weights
    exclude_nodes: list[str] = []  # node names left in float, in both INT8 models
    calibration_images: int = Field(300, ge=1)
    tensorrt_artifact: bool = True  # also keep a symmetric int8 QDQ model for TensorRT/Jetson
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"  # ORT level for evaluation/benchmark


class QatSpec(Strict):
    """Quantisation-aware fine-tuning with tfmot, exported as full-integer INT8 (TFLite, and ONNX when
    stages.onnx_ptq is on). Train/validation images come from the training split, never calibration/eval."""

    enabled: bool = False
    epochs: int = Field(1, ge=0)  # a longer fine-tune is this one value
    steps_per_epoch: Optional[int] = Field(None, ge=1)  # None: one pass over train_images
    train_images: Optional[int] = Field(None, ge=1)  # None: the whole training split
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(3e-5, gt=0)
    validation_images: int = Field(500, ge=0)  # held out of the training split, for early stopping
    early_stop_patience: int = Field(1, ge=0)  # 0: no early stop
    distill: bool = True  # loss against the FP32 model's soft outputs instead of the labels
    calibrate_ranges: bool = True  # start activation ranges from calibration images, not tfmot's [-6, 6]
    calibration_images: int = Field(256, ge=1)
    # final Dense+softmax: logits range floor = lowest best calibration logit - ln 256 (what an int8
    # softmax output can show) instead of the lowest logit of any class; see qat.fit_softmax_input_range
    narrow_logits_range: bool = False
    passthrough_layers: list[str] = []  # layer names or classes left unquantised during fine-tuning
    export_onnx: bool = True  # INT8 QDQ ONNX of the QAT model when stages.onnx_ptq is enabled
    seed: int = 0


class ComparisonSpec(Strict):
    """PTQ naive vs PTQ advanced vs QAT at each bit width, against FP32. 8 bits: real INT8 artifacts;
    fewer bits: simulated (fake-quantised) kernels in the Keras model, float activations."""

    enabled: bool = False
    bits: list[int] = [8, 4]
    eval_images: Optional[int] = Field(None, ge=1)  # None: the whole evaluation split
    calibration_images: int = Field(256, ge=1)  # for bias correction
    low_bit_qat: bool = True  # fine-tune simulated low-bit kernels (straight-through estimator)
    low_bit_qat_steps: Optional[int] = Field(None, ge=1)  # None: the qat stage's epochs x steps
    low_bit_qat_learning_rate: float = Field(1e-4, gt=0)
    tolerance_points: float = Field(0.5, ge=0)  # a drop within this is "not needed" in the verdict

    @field_validator("bits")
    @classmethod
    def _bits(cls, v):
        if not v or any(b < 2 or b > 8 for b in v):
            raise ValueError("comparison bits must be between 2 and 8")
        return sorted(set(v), reverse=True)


class StagesSpec(Strict):
    tflite_ptq: TflitePtqSpec = TflitePtqSpec()
    onnx_ptq: OnnxPtqSpec = OnnxPtqSpec()
    qat: QatSpec = QatSpec()
    comparison: ComparisonSpec = ComparisonSpec()


class EvaluateSpec(Strict):
    enabled: bool = True
    batch_size: int = Field(64, ge=1)
    keras_baseline: bool = True  # evaluate the FP32 Keras model itself too


class BenchmarkSpec(Strict):
    """Artifacts on one target are timed interleaved: `rounds` rounds, each artifact in turn taking
    `warmup` untimed then `runs` timed single-image inferences (see edgeq.targets.interleave)."""

    enabled: bool = True
    runs: int = Field(100, ge=1)  # timed runs per artifact per round
    warmup: int = Field(10, ge=0)  # untimed runs per artifact per round
    rounds: int = Field(10, ge=1)  # >= 6 for a 95 % interval of the median over rounds
    threads: int = Field(1, ge=1)
    noisy_limit: float = Field(0.10, gt=0)  # a median whose 95 % interval spans more than this fraction is `noisy`
    reuse: bool = False  # keep earlier figures when CPU, threads, rounds and artifacts match (--reuse-benchmarks)


class TargetRef(Strict):
    device: str  # a name in the inventory
    rounds: Optional[int] = Field(None, ge=1)
    runs: Optional[int] = None
    warmup: Optional[int] = None
    threads: Optional[int] = None


class OutputSpec(Strict):
    dir: Optional[Path] = None  # default: runs/<name>


class RunConfig(Strict):
    name: str
    description: str = ""
    seed: int = 0
    # the accuracy budget: the most top-1 (percentage points) an artifact may lose against FP32 and still
    # be shipped; verdicts and the "what to ship" line per target follow from it
    max_accuracy_drop: float = Field(1.0, ge=0)
    model: ModelSpec
    preprocess: PreprocessSpec = PreprocessSpec()
    data: DataSpec = DataSpec()
    stages: StagesSpec = StagesSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    benchmark: BenchmarkSpec = BenchmarkSpec()
    inventory: Optional[Path] = None
    targets: list[TargetRef] = []
    output: OutputSpec = OutputSpec()
    source: Optional[Path] = Field(None, exclude=True)  # the file this came from

    def run_dir(self, override: Path | None = None) -> Path:
        return Path(override or self.output.dir or Path("runs") / self.name)


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int) or True)


def format_validation_error(e: ValidationError, where: str) -> str:
    parts = []
    for err in e.errors():
        key = _loc(err) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        elif err["type"] == "missing":
            parts.append(f"missing key '{key}'")
        else:
            parts.append(f"'{key}': {err['msg']} (got {err.get('input')!r:.60})")
    return f"{where}: " + "; ".join(parts)


def read_yaml_mapping(path: Path | str, what: str = "config file", expect: str = "a mapping of keys") -> dict:
    """A YAML file whose top level is a mapping, or a one-line ConfigError naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{at} not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected {expect} at the top level")
    return raw


def load_config(path: Path | str) -> RunConfig:
    path = Path(path)
    return config_from_dict(read_yaml_mapping(path), base_dir=path.parent, where=str(path))


def config_from_dict(raw: dict, base_dir: Path = Path("."), where: str = "config") -> RunConfig:
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None
    base = Path(base_dir)

    def rel(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p))

    cfg.model.path = rel(cfg.model.path)
    for f in ("path", "calibration_path", "eval_path", "train_path"):
        setattr(cfg.data, f, rel(getattr(cfg.data, f)))
    cfg.inventory = rel(cfg.inventory)
    cfg.source = Path(where) if where != "config" else None
    return cfg
