"""The one schema of a pipeline run, validated up front.

Every option a stage has is a field here with a default. An unknown key or a wrong type is a one-line
`ConfigError` naming the file and the key. Relative paths are resolved against the config file's
directory (model and data) or the current directory (output).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator,
                      model_validator)

from .errors import ConfigError
from .yamlfile import read_yaml_mapping


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
            from .formats import model_input_format

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


class TflitePtqSpec(Strict):
    enabled: bool = True
    representative_images: int = Field(300, ge=1)
    input_type: Literal["int8", "uint8", "float32"] = "int8"
    output_type: Literal["int8", "uint8", "float32"] = "int8"
    per_channel: bool = True
    export_fp32: bool = True  # the FP32 .tflite baseline
    allow_float_ops: bool = False  # True permits a hybrid model (ops that stay float); never the default
    # ONNX/PyTorch input: the FP32 .tflite (always exported then) must match the FP32 ONNX within this max
    # |Δlogit| relative to the largest |logit|, or the stage fails: a translation error is not quantisation loss
    max_translation_error: float = Field(1e-3, gt=0)


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


class DistributionSpec(Strict):
    """Where the QAT fine-tune runs: this process (none), tf.distribute MirroredStrategy over the local devices,
    or MultiWorkerMirroredStrategy across processes/machines described by TF_CONFIG (see README, "QAT on a
    cluster")."""

    strategy: Literal["none", "mirrored", "multi_worker"] = "none"
    # {"cluster": {"worker": ["host:port", ...], "chief": [...]}, "task": {"type": "worker", "index": 0}}, as a
    # mapping or a JSON string; None: the TF_CONFIG environment variable of each process
    tf_config: Optional[dict] = None
    # BackupAndRestore epoch checkpoints; every worker must see the same directory (shared storage across
    # machines). None: <run directory>/qat_backup
    checkpoint_dir: Optional[Path] = None

    @field_validator("tf_config", mode="before")
    @classmethod
    def _json(cls, v):
        if isinstance(v, str):
            import json

            try:
                v = json.loads(v)
            except ValueError as e:
                raise ValueError(f"not valid JSON ({e})") from None
        return v

    @model_validator(mode="after")
    def _cluster(self):
        if self.strategy != "multi_worker":
            return self
        raw, key = self.tf_config, "tf_config"
        if raw is None:
            import json

            env = os.environ.get("TF_CONFIG", "").strip()
            if not env:
                raise ValueError("strategy multi_worker needs the cluster: set stages.qat.distribution.tf_config "
                                 "or the TF_CONFIG environment variable of each worker")
            key = "the TF_CONFIG environment variable"
            try:
                raw = json.loads(env)
            except ValueError as e:
                raise ValueError(f"{key} is not valid JSON ({e})") from None
        problem = tf_config_problem(raw)
        if problem:
            raise ValueError(f"{key}: {problem}")
        return self


def tf_config_problem(tf_config) -> str | None:
    """What is wrong with a TF_CONFIG mapping for MultiWorkerMirroredStrategy, or None."""
    if not isinstance(tf_config, dict):
        return "must be a mapping with 'cluster' and 'task'"
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
        return "'cluster' must list the 'worker' (and optionally 'chief') addresses as host:port"
    bad = set(cluster) - {"worker", "chief"}
    if bad:
        return f"'cluster' has {sorted(bad)}; MultiWorkerMirroredStrategy takes only 'worker' and 'chief'"
    if any(not isinstance(a, list) or not all(isinstance(x, str) and ":" in x for x in a) for a in cluster.values()):
        return "cluster addresses must be lists of 'host:port' strings"
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int):
        return f"'task' must be {{'type': one of {sorted(cluster)}, 'index': N}}"
    if not 0 <= task["index"] < len(cluster[task["type"]]):
        return f"task index {task['index']} is outside the {len(cluster[task['type']])} '{task['type']}' address(es)"
    return None


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
    seed: int = Field(0, ge=0)
    distribution: DistributionSpec = DistributionSpec()  # tf.distribute: mirrored or multi-worker fine-tune


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


LITERT_RECIPES = ("w8a8", "w8a8_octav", "w8a8_gptq", "w4a8", "w4a8_octav")  # rows of edgeq.quantize.litert_quant.RECIPES


class LitertQuantSpec(Strict):
    """LiteRT Quantizer (litert-quantizer) over the run's FP32 .tflite (stages.tflite_ptq.export_fp32): one
    fully integer artifact per recipe. w8a8*: int8 weights and activations; w4a8*: int4 weights on CONV_2D and
    FULLY_CONNECTED (the ops LiteRT's int4 kernels take), int8 depthwise weights, int8 activations. The suffix
    names the range/rounding method: none = min-max, octav = OCTAV optimal clipping, gptq = GPTQ rounding of
    FULLY_CONNECTED weights (OCTAV elsewhere)."""

    enabled: bool = False
    recipes: list[Literal[LITERT_RECIPES]] = ["w8a8_gptq", "w4a8", "w4a8_octav"]
    calibration_images: int = Field(200, ge=1)  # the first N of the calibration split
    # accuracy budget -> float fallback: when the w8a8 (min-max) model's top-1 drop on the held-back slice (the
    # calibration images after the first calibration_images; never the evaluation split) exceeds
    # max_accuracy_drop, its most sensitive ops are left float by a selective recipe -> int8_tflite_fallback
    # (a hybrid model: not for full-integer targets such as the Edge TPU)
    fallback: bool = False
    holdout_images: int = Field(200, ge=20)
    fallback_candidates: int = Field(8, ge=1)  # ops (most SQNR lost first) whose solo fallback is measured
    max_float_ops: int = Field(8, ge=1)

    @field_validator("recipes")
    @classmethod
    def _recipes(cls, v):
        if not v:
            raise ValueError("name at least one recipe, or set enabled: false")
        return list(dict.fromkeys(v))


class OnnxFallbackSpec(Strict):
    """Accuracy budget -> float fallback for the host INT8 ONNX (int8_onnx_ptq): when its top-1 drop on a
    held-back slice of the calibration split (images the quantizer did not calibrate on; never the
    evaluation split) exceeds max_accuracy_drop, the most sensitive nodes are left float (ORT
    nodes_to_exclude), fewest first, until the drop is within the budget -> artifact int8_onnx_fallback."""

    enabled: bool = False
    holdout_images: int = Field(200, ge=20)  # calibration-split images after the ones ORT calibrated on
    candidates: int = Field(8, ge=1)  # nodes (lowest output SQNR first) whose solo fallback is measured
    max_float_nodes: int = Field(8, ge=1)  # give up (and say so) rather than keep more nodes float


class StagesSpec(Strict):
    tflite_ptq: TflitePtqSpec = TflitePtqSpec()
    litert_quant: LitertQuantSpec = LitertQuantSpec()
    onnx_ptq: OnnxPtqSpec = OnnxPtqSpec()
    onnx_fallback: OnnxFallbackSpec = OnnxFallbackSpec()
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


def load_config(path: Path | str) -> RunConfig:
    """A validated RunConfig from a YAML file, or one ConfigError line naming the file and the key."""
    path = Path(path)
    return config_from_dict(read_yaml_mapping(path), base_dir=path.parent, where=str(path))


def config_from_dict(raw: dict, base_dir: Path = Path("."), where: str = "config") -> RunConfig:
    try:
        cfg = RunConfig.model_validate(raw)
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
    from .formats import runs_from_onnx

    counts = [("stages.onnx_ptq.calibration_images", s.onnx_ptq.calibration_images, s.onnx_ptq.enabled),
              ("stages.tflite_ptq.representative_images", s.tflite_ptq.representative_images, s.tflite_ptq.enabled)]
    if not runs_from_onnx(cfg.model.format):
        # QAT and the comparison convert with the TFLite PTQ representative images too
        needs_rep = s.tflite_ptq.enabled or s.qat.enabled or s.comparison.enabled
        counts = [("stages.tflite_ptq.representative_images", s.tflite_ptq.representative_images, needs_rep),
                  *counts,
                  ("stages.qat.calibration_images", s.qat.calibration_images, s.qat.enabled and s.qat.calibrate_ranges),
                  ("stages.comparison.calibration_images", s.comparison.calibration_images, s.comparison.enabled)]
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
