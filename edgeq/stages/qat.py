"""The `qat` stage: quantisation-aware fine-tuning with tfmot, exported as full-integer INT8 (a PyTorch input
model: NNCF's PyTorch QAT instead, `edgeq.stages.support.torch_qat`).

The FP32 model is wrapped with `tfmot.quantization.keras.quantize_model` (`tfmot_qat`), its activation
ranges are initialised from calibration images, it is fine-tuned on the training split (`fine_tune`; early
stop on a held-out part of it) and converted with the same full-integer check as the PTQ path; when the run
makes ONNX, the QAT model is exported to INT8 QDQ ONNX too (`onnx_export`).
"""
from __future__ import annotations

import time

from edgeq.core.artifacts import Artifact
from edgeq.core.config import QatSpec
from edgeq.methods.tflite import convert as tflite_ptq
from edgeq.methods.keras.fine_tune import QatResult, TrainData, fine_tune_notes, fine_tune_qat, training_split
from edgeq.methods.onnx.from_keras import add_weight_qdq, keras_to_onnx, missing_exporter
from edgeq.methods.onnx.ort_int8 import ort_kernel_summary
from edgeq.stages.support.inputs import QatInputs, qat_inputs
from edgeq.methods.keras.qat import check_supported
from edgeq.stages.support.torch_qat_trt import KERAS_NOTE as KERAS_TRT_NOTE

SECTION_KEYS = ("fine_tune_seconds", "convert_seconds", "epochs_run", "steps", "train_images", "validation_images",
                "validation_top1_before_fine_tune", "validation_top1_after_fine_tune", "validation_loss_before",
                "fine_tune_kept", "history")


def run_stage(ctx, opts: QatSpec, inputs: QatInputs | None = None) -> list[Artifact]:
    """The tfmot QAT model as INT8 TFLite, and as INT8 QDQ ONNX when the run makes ONNX (`inputs.onnx`).

    `inputs`: the TFLite conversion and ONNX export settings this stage shares with the others; by default
    resolved from the run's config (`stage_inputs.qat_inputs`)."""
    inputs = inputs or qat_inputs(ctx.cfg)
    if ctx.cfg.model.format == "pytorch":  # NNCF QAT of the nn.Module -> the same two artifact names
        from edgeq.stages.support.torch_qat import run_pytorch_qat

        return run_pytorch_qat(ctx, opts, inputs.tflite, inputs.onnx.opset if inputs.onnx else ctx.cfg.model.opset)
    model = ctx.keras_model()
    check_supported(model, opts.passthrough_layers)  # fail before any training
    data = training_split(ctx.splits.train, opts)
    cal = ctx.splits.calibration
    ranges = ctx.calibration(opts.calibration_images, "stages.qat.calibration_images") if opts.calibrate_ranges else None
    n_cal = ranges.n if ranges else 0
    rep = ctx.calibration(inputs.tflite.representative_images, "stages.tflite_ptq.representative_images")
    n_rep = rep.n
    key = {"train": data.train.fingerprint(), "val": data.val.fingerprint() if data.val is not None else None,
           "calibration": cal.fingerprint()}
    # where the cluster runs and checkpoints does not change the artifact; the strategy (replica count) does
    params = opts.model_dump(exclude={"enabled", "export_onnx", "distribution", "device", "tensorrt_artifact"})
    if opts.distribution.strategy != "none":
        params["distribution"] = opts.distribution.strategy
    params.update(input_type=inputs.tflite.input_type, output_type=inputs.tflite.output_type,
                  representative_images=n_rep)
    cache: dict = {}

    def fine_tuned() -> QatResult:
        if "r" not in cache:
            calibration = ranges.array() if ranges else None
            backup = opts.distribution.checkpoint_dir or ctx.run_dir / "qat_backup"
            cache["r"] = fine_tune_qat(model, data, ctx.pre, calibration, opts, ctx.log, checkpoint_dir=backup)
        return cache["r"]

    def make_tflite(tmp):
        r = fine_tuned()
        t = time.perf_counter()
        blob = tflite_ptq.convert_int8(r.model, rep.one_at_a_time(),
                                       input_type=inputs.tflite.input_type, output_type=inputs.tflite.output_type,
                                       per_channel=True, allow_float_ops=False, name="int8_tflite_qat",
                                       calibration_images=n_rep)
        tmp.write_bytes(blob)
        return {**_notes(r, data), "convert_seconds": round(time.perf_counter() - t, 1),
                **tflite_ptq.int8_notes(blob, model)}

    parent = ctx.fp32.name
    out = [ctx.produce("int8_tflite_qat", "int8_qat.tflite", key, make_tflite, fmt="tflite", precision="int8",
                       method="qat", stage="qat", params=params, parent=parent)]
    onnx_note = None
    why_not = missing_exporter() if inputs.onnx and opts.export_onnx else None
    if why_not:
        onnx_note = f"INT8 ONNX of the QAT model not made: {why_not}"
        ctx.log(f"  ! {onnx_note}")
    elif inputs.onnx and opts.export_onnx:
        opset = inputs.onnx.opset

        def make_onnx(tmp):
            r = fine_tuned()
            return {**_notes(r, data), **export_qat_onnx(r.model, tmp, opset)}

        onnx_params = {**params, "opset": opset, "weights": "int8 per-channel (DequantizeLinear)"}
        out.append(ctx.produce("int8_onnx_qat", "int8_qat.onnx", key, make_onnx, fmt="onnx", precision="int8",
                               method="qat", stage="qat", params=onnx_params, parent=parent))
    if opts.tensorrt_artifact:  # asked for explicitly: say why a Keras run does not make it
        onnx_note = " ".join(filter(None, [onnx_note, f"{KERAS_TRT_NOTE}."]))
        ctx.log(f"  ! {KERAS_TRT_NOTE}")
    notes = out[0].notes
    ctx.results.set_section("qat", {**{k: notes.get(k) for k in SECTION_KEYS}, "artifacts": [a.name for a in out],
                                    "onnx": onnx_note, "distill": opts.distill, "learning_rate": opts.learning_rate,
                                    "calibrate_ranges": opts.calibrate_ranges, "calibration_images": n_cal})
    return out


def export_qat_onnx(qmodel, path, opset: int, name: str = "int8_onnx_qat") -> dict:
    """A tfmot QAT model as INT8 QDQ ONNX that ONNX Runtime runs as integer kernels; returns its notes, with
    what ORT's CPU optimiser makes of it (`ort_kernels`: integer vs float convolutions, matmuls, adds).

    tf2onnx turns tfmot's activation FakeQuant nodes into QuantizeLinear/DequantizeLinear pairs; add_weight_qdq
    folds the batch norms it left, re-quantizes after MaxPool/Pad and stores the weights as int8."""
    notes = {**keras_to_onnx(qmodel, path, opset, name=name), **add_weight_qdq(path)}
    notes["ort_kernels"] = ort_kernel_summary(path, "all")
    return notes


def _notes(r: QatResult, data: TrainData) -> dict:
    return fine_tune_notes(r, data)
