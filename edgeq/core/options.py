"""The stages' options (`stages:` of a run config): one spec per stage, every option with its default.

Part of the run schema in edgeq.core.config, which re-exports these names; `Strict` is the base every config
section shares (unknown keys and wrong types refused). Which stages exist is the stages layer's table
(edgeq.stages.registry, one row per stage naming its options class here): it hands that table over with
`use_stage_table`, and `stages_spec` builds the `stages:` section from it, so a row added later is validated too.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from edgeq.core.errors import EdgeqError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    # opt-in: the INT8 model made again from the first N calibration images for each N here (e.g. [16, 32, 64, 128,
    # 300]), each evaluated and paired with the largest and with FP32: would more calibration images help?
    size_study: list[int] = []

    @field_validator("size_study")
    @classmethod
    def _positive_sizes(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError(f"sizes must be at least 1 image, got {v}")
        return sorted(set(v))


class OnnxPtqSpec(Strict):
    """ONNX export + ONNX Runtime static quantization. "auto" host options are chosen from this CPU's int8
    features (see edgeq.stages.onnx_ptq.host_int8_scheme); they never affect the TensorRT artifact."""

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
    # int8_onnx_ptq_adv (host scheme): per-tensor range method (min-max / percentile / entropy / MSE) chosen by each
    # tensor's measured quantisation error, and cross-layer equalisation for a Keras input; each kept only where it
    # lowers the output error against FP32 on `selection_images` calibration images past the calibrated ones
    advanced: bool = False
    selection_images: int = Field(200, ge=16)


class DistributionSpec(Strict):
    """Where the QAT fine-tune runs: this process (none), tf.distribute MirroredStrategy over the local devices,
    or MultiWorkerMirroredStrategy across processes/machines described by TF_CONFIG (see docs/cluster-qat.md, "QAT on a
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
    export_onnx: bool = True  # INT8 QDQ ONNX of the QAT model when stages.onnx_ptq is enabled (PyTorch: always)
    seed: int = Field(0, ge=0)
    distribution: DistributionSpec = DistributionSpec()  # tf.distribute: mirrored or multi-worker fine-tune
    # PyTorch QAT (NNCF): auto = this worker's CUDA device when PyTorch sees one, else the CPU (Keras: unused)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # PyTorch QAT: also make int8_onnx_qat_trt, a second NNCF fine-tune in TensorRT's scheme (int8 zero-point 0
    # activations, float biases), compared with onnx_ptq's int8_onnx_trt. None: made when stages.onnx_ptq runs with
    # tensorrt_artifact on (that PTQ artifact is what it is compared with). Keras: not made (said so in the report)
    tensorrt_artifact: Optional[bool] = None


class ComparisonSpec(Strict):
    """PTQ naive vs PTQ advanced vs QAT at each bit width, against FP32. 8 bits: real INT8 artifacts;
    fewer bits: simulated (fake-quantised) kernels in the Keras model, float activations."""

    enabled: bool = False
    bits: list[int] = [8, 4]
    eval_images: Optional[int] = Field(None, ge=1)  # None: the whole evaluation split
    calibration_images: int = Field(256, ge=1)  # for bias correction and equalisation ranges
    # INT8 advanced PTQ: also try cross-layer equalisation (Keras pairs joined by ReLU/BN/padding/pooling) and
    # keep whichever INT8 model has the lower output error against FP32 on `selection_images` held-back
    # calibration images (never the evaluation split)
    equalize: bool = True
    selection_images: int = Field(200, ge=16)
    # INT4 advanced cell as a real W4A8 .tflite: GPTQ-rounded Conv2D/Dense kernels through litert-quantizer
    # (int4_tflite_ptq_adv); false: simulated. LiteRT runs int4 convolutions on reference kernels, so evaluating it
    # on a large model is slow (ResNet-50: minutes)
    int4_artifact: bool = True
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


# rows of edgeq.methods.tflite.litert.RECIPES
LITERT_RECIPES = ("w8a8", "w8a8_octav", "w8a8_gptq", "w8a8_auto", "w4a8", "w4a8_octav", "w4a8_auto")


class LitertQuantSpec(Strict):
    """LiteRT Quantizer (litert-quantizer) over the run's FP32 .tflite (stages.tflite_ptq.export_fp32): one
    fully integer artifact per recipe. w8a8*: int8 weights and activations; w4a8*: int4 weights on CONV_2D and
    FULLY_CONNECTED (the ops LiteRT's int4 kernels take), int8 depthwise weights, int8 activations. The suffix
    names the range/rounding method: none = min-max, octav = OCTAV optimal clipping, gptq = GPTQ rounding of
    FULLY_CONNECTED weights (OCTAV elsewhere), auto = min-max or OCTAV chosen per op by measured error (the per-op
    model kept only where its output error on held-back calibration images beats both uniform ones)."""

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


class PrecisionSpec(Strict):
    """Other precisions beside INT8, each a real artifact evaluated and timed like the others: TFLite FP16 weights
    (fp16_tflite), dynamic-range INT8 (dynamic_tflite: int8 weights, float activations), 16x8 (int16x8_tflite:
    int16 activations, int8 weights) and ONNX INT16-activation QDQ (int16_onnx, from the run's FP32 ONNX; needs
    stages.onnx_ptq for a Keras input). A variant a runtime has no fast kernels for says so in its notes, and
    what-to-ship passes it over on a CPU unless it is the only one within the budget."""

    enabled: bool = False
    tflite: list[Literal["fp16", "dynamic", "int16x8"]] = ["fp16", "dynamic", "int16x8"]
    onnx: list[Literal["int16"]] = ["int16"]
    # calibration images of int16x8 / int16 (the first N of the calibration split); None: as many as the INT8
    # TFLite (stages.tflite_ptq.representative_images), the same images
    representative_images: Optional[int] = Field(None, ge=1)
    # the variants CPU runtimes run on reference kernels (int16x8 ~40x FP32, int16 ~20-35x) are evaluated on a
    # fixed subset of this many evaluation images, drawn with the run's seed; their paired test against FP32 is
    # on exactly those images and the report says "evaluated on N of M images". null: every evaluation image
    eval_images: dict[Literal["int16x8", "int16"], Optional[int]] = {"int16x8": 500, "int16": 500}

    @field_validator("eval_images")
    @classmethod
    def _enough(cls, v):
        for k, n in v.items():
            if n is not None and n < 50:
                raise ValueError(f"eval_images.{k}: {n} images are too few for a paired test; give at least 50 "
                                 "(or null for every evaluation image)")
        return v

    @field_validator("tflite", "onnx")
    @classmethod
    def _unique(cls, v):
        return list(dict.fromkeys(v))


NNCF_ROUTES = ("openvino", "onnx", "openvino_ac")  # int8_openvino_nncf, int8_onnx_nncf, int8_openvino_nncf_ac


class NncfPtqSpec(Strict):
    """NNCF + OpenVINO as a toolchain beside edgeq's own routes (needs edgeq[openvino]). The run's FP32 ONNX becomes
    an FP32 OpenVINO IR (fp32_openvino); then per route: `openvino` nncf.quantize on the IR -> int8_openvino_nncf;
    `onnx` nncf.quantize on the ONNX -> int8_onnx_nncf (QDQ ONNX, timed on ONNX Runtime); `openvino_ac`
    nncf.quantize_with_accuracy_control with max_accuracy_drop as its budget, validated on `validation_images`
    held-back calibration images (never the evaluation split) -> int8_openvino_nncf_ac. The NNCF options below are
    passed through as NNCF names them."""

    enabled: bool = False
    routes: list[Literal[NNCF_ROUTES]] = ["openvino", "onnx"]
    calibration_images: int = Field(300, ge=1)  # NNCF's subset_size, the first N of the calibration split
    preset: Optional[Literal["performance", "mixed"]] = None  # None: NNCF's default (performance for a CNN)
    fast_bias_correction: bool = True  # False: NNCF's full BiasCorrection (slower)
    model_type: Optional[Literal["transformer"]] = None
    validation_images: int = Field(200, ge=16)  # openvino_ac: held-back calibration images
    # the FP32 IR run at bf16 / f16 as artifacts of their own (bf16_openvino, f16_openvino), made only where this CPU
    # has the instructions (OpenVINO's capabilities), else recorded as not made with the reason
    precision_variants: list[Literal["bf16", "f16"]] = []

    @field_validator("routes")
    @classmethod
    def _routes(cls, v):
        if not v:
            raise ValueError("name at least one route, or set enabled: false")
        return list(dict.fromkeys(v))


class MixedPrecisionSpec(Strict):
    """A precision per weight layer (CONV_2D / FULLY_CONNECTED: int4 or int8 weights; DEPTHWISE_CONV_2D: int8;
    float where allow_float) -> the smallest .tflite whose drop on held-back calibration images (never the
    evaluation split) stays within max_accuracy_drop -> artifact mixed_tflite. Needs the run's FP32 .tflite."""

    enabled: bool = False
    objective: Literal["size"] = "size"  # minimise the weight bytes
    # float layers make a hybrid model: leave false for full-integer targets (Edge TPU, TensorRT INT8 builds)
    allow_float: bool = False
    calibration_images: int = Field(200, ge=1)  # the first N of the calibration split
    holdout_images: int = Field(300, ge=20)  # the calibration images after those: every plan is measured on them
    sensitivity_images: int = Field(300, ge=4)  # of the held-back ones: single-layer output KL against FP32
    range_method: Literal["minmax", "octav"] = "octav"
    search_rounds: int = Field(6, ge=1)  # solver runs of the error-budget bisection (each one real model)
    # per-layer int4 cost: `models` quantizes one all-int8-but-that-layer model per layer (litert-quantizer each);
    # `substitution` patches the real int4 weights of one uniform W4A8 model into a copy of the W8A8 file, one
    # layer at a time (no quantization per layer: for large models, e.g. ResNet-50; docs/mixed_precision.md)
    sensitivity: Literal["models", "substitution"] = "models"


class StagesSpec(Strict):
    """The `stages:` section: one field per stage (its name -> its options, defaults when absent), built from the
    stage table by `stages_spec`; an unknown stage key is refused like any unknown key."""


def stages_spec(options: Mapping[str, type[Strict]]) -> type[StagesSpec]:
    """The StagesSpec model of a stage table (stage name -> options class), in the table's order."""
    return _stages_spec(tuple(options.items()))


@functools.cache
def _stages_spec(items: tuple[tuple[str, type[Strict]], ...]) -> type[StagesSpec]:
    return create_model("StagesSpec", __base__=StagesSpec,
                        **{name: (cls, Field(default_factory=cls)) for name, cls in items})


# core imports no other edgeq layer, so the stages layer hands its table over (a function: rows added later count);
# the package's __init__ imports edgeq.stages.registry, so every user of edgeq has it set
_stage_table: Callable[[], Mapping[str, type[Strict]]] | None = None


def use_stage_table(table: Callable[[], Mapping[str, type[Strict]]]) -> None:
    """Set where config validation finds the stages (name -> options class): edgeq.stages.registry calls this."""
    global _stage_table
    _stage_table = table


def stage_options() -> Mapping[str, type[Strict]]:
    """The stage table config validation uses (stage name -> options class)."""
    if _stage_table is None:
        raise EdgeqError("no stage table: import edgeq.stages.registry before validating a run config")
    return _stage_table()
