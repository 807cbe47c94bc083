"""The `qat` stage's work for a PyTorch input model: NNCF QAT of the user's nn.Module, exported as a standard
QDQ ONNX (`int8_onnx_qat`) and, through the ONNX -> TensorFlow translation the PTQ routes use, a full-integer
INT8 TFLite (`int8_tflite_qat`), or the reason it was not made. Same artifact names as the Keras QAT, so the
PTQ-vs-QAT comparison finds them. In TensorRT's scheme, a second fine-tune: `int8_onnx_qat_trt` (`torch_qat_trt`).

Takes the run context (`ctx`: config, splits, preprocessing, `produce`, results) and the stage's options; the
algorithms are in `qat` and `fine_tune`. Under torchrun only rank 0 makes artifacts; the other ranks fine-tune.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from edgeq.core.artifacts import Artifact
from edgeq.core.config import QatSpec
from edgeq.core.errors import QuantizationError
from edgeq.methods.keras.fine_tune import TrainData, fine_tune_notes, training_split
from edgeq.methods.torch import qat as torch_qat
from edgeq.methods.torch import to_tflite as qat_tflite
from edgeq.methods.torch.distributed import torch_role
from edgeq.methods.torch.fine_tune import QatResult, fine_tune
from edgeq.stages.support import torch_qat_trt

SECTION_KEYS = ("fine_tune_seconds", "convert_seconds", "epochs_run", "steps", "train_images", "validation_images",
                "validation_top1_before_fine_tune", "validation_top1_after_fine_tune", "validation_loss_before",
                "fine_tune_kept", "history")
TFLITE_ROUTE = ("QAT ONNX with its int8 weights stored as their float values -> onnx2tf -> TFLite full-integer "
                "converter, made two ways and the one closer to FP32 on held-out images shipped: "
                + "; ".join(f"{k}: {v}" for k, v in qat_tflite.TRANSLATIONS.items())
                + f" (chosen by {qat_tflite.CHOICE_RULE}; never on the evaluation images)")


def run_pytorch_qat(ctx, opts: QatSpec, tflite, opset: int) -> list[Artifact]:
    """NNCF QAT of the run's PyTorch model -> int8_onnx_qat and int8_tflite_qat (or a recorded reason), and
    int8_onnx_qat_trt when `torch_qat_trt.tensorrt_wanted` (a second fine-tune, in TensorRT's scheme).

    `tflite`: the run's INT8 TFLite settings (input/output types, representative images); `opset`: of the ONNX."""
    from edgeq.loaders.pytorch import load_torch_model
    from edgeq.methods.torch.exported import trainable_module

    m = ctx.cfg.model
    loaded = load_torch_model(Path(m.path), m.factory, m.factory_base)
    module, source = trainable_module(loaded, m.path, tuple(m.input_shape))  # a .pt2 / TorchScript rebuilt
    torch_qat.nncf_module()  # fail before any work when NNCF is missing
    data = training_split(ctx.splits.train, opts)
    ranges = ctx.calibration(opts.calibration_images, "stages.qat.calibration_images")
    cal, n_cal = ranges.split, ranges.n
    n_rep = ctx.calibration(tflite.representative_images, "stages.tflite_ptq.representative_images").n
    role = torch_role()
    key = {"train": data.train.fingerprint(), "val": data.val.fingerprint() if data.val is not None else None,
           "calibration": cal.fingerprint(), "framework": "pytorch"}
    params = opts.model_dump(mode="json", exclude={"enabled", "export_onnx", "distribution", "device",
                                                   "tensorrt_artifact"})
    params.update(framework="pytorch (NNCF)", workers=role.world_size, opset=opset, pytorch_input=source)
    cache: dict = {}
    trt, trt_why = torch_qat_trt.tensorrt_wanted(ctx.cfg)

    def fine_tuned(scheme: str = "host") -> QatResult:
        if scheme not in cache:
            cache[scheme] = _fine_tune(ctx, module, data, cal.images[:n_cal], opts, role, scheme)
        return cache[scheme]

    if not role.writes:  # a torchrun worker other than rank 0: train in step with rank 0, write nothing
        fine_tuned()
        if trt:
            fine_tuned("tensorrt")
        return []
    parent = ctx.fp32.name
    hwc = tuple(m.input_shape)

    def make_onnx(tmp):
        r = fine_tuned()
        return {**_notes(r, data), **torch_qat.export_qdq_onnx(r.model, tmp, hwc, opset)}

    onnx_params = {**params, "weights": "int8 per-channel symmetric (NNCF)",
                   "activations": "uint8 per-tensor with a zero-point (NNCF MIXED preset; range init + fine-tune)"}
    out = [ctx.produce("int8_onnx_qat", "int8_qat.onnx", key, make_onnx, fmt="onnx", precision="int8",
                       method="qat", stage="qat", params=onnx_params, parent=parent)]
    qdq = out[0]

    def make_tflite(tmp):
        t = time.perf_counter()
        held = _held_out(ctx, module, data, max(n_cal, n_rep))
        blob, notes = qdq_onnx_to_tflite(ctx, qdq.abspath(ctx.run_dir), n_rep, tflite, held)
        tmp.write_bytes(blob)
        return {**{k: qdq.notes.get(k) for k in SECTION_KEYS}, **notes,
                "convert_seconds": round(time.perf_counter() - t, 1)}

    tflite_params = {**params, "input_type": tflite.input_type, "output_type": tflite.output_type,
                     "representative_images": n_rep,
                     "route": "qdq_onnx -> onnx2tf -> tflite int8, translation chosen on held-out images"}
    tflite_note = None
    try:
        out.append(ctx.produce("int8_tflite_qat", "int8_qat.tflite", {**key, "qdq_onnx": qdq.sha256}, make_tflite,
                               fmt="tflite", precision="int8", method="qat", stage="qat", params=tflite_params,
                               parent=qdq.name))
    except QuantizationError as e:
        tflite_note = f"INT8 TFLite of the QAT model not made: {e}"
        ctx.log(f"  ! {tflite_note}")
    if trt:
        out.append(torch_qat_trt.make_tensorrt_qat(ctx, lambda: fine_tuned("tensorrt"), lambda r: _notes(r, data),
                                                   key, params, hwc, opset, parent))
    notes = qdq.notes
    trt_art = next((a for a in out if a.name == torch_qat_trt.NAME), None)
    section = {"markdown": "\n".join([qat_markdown(notes, opts, n_cal, out, tflite_note),
                                      *torch_qat_trt.markdown_lines(trt_art, trt_why)]),
               "tensorrt_artifact": {"made": trt, "why": trt_why},
               **{k: notes.get(k) for k in SECTION_KEYS}, "artifacts": [a.name for a in out], "onnx": None,
               "tflite": tflite_note, "framework": "pytorch", "quantizer": notes.get("quantizer"),
               **({"distribution": notes["distribution"]} if notes.get("distribution") else {})}
    if len(out) > 1:
        section["convert_seconds"] = out[1].notes.get("convert_seconds")
    ctx.results.set_section("qat", section)
    return out


def _fine_tune(ctx, module, data: TrainData, cal_images, opts: QatSpec, role, scheme: str = "host") -> QatResult:
    """Fold, range-initialise (`torch_qat.quantize` in `scheme`), fine-tune; the TensorRT scheme checkpoints in its
    own folder (qat_backup/tensorrt), so it never resumes from the host scheme's epochs."""
    import copy

    import torch

    from edgeq.core.progress import spinner

    torch.manual_seed(opts.seed)
    teacher = copy.deepcopy(module).eval()
    student = copy.deepcopy(module).eval()
    folded = torch_qat.fold_batch_norms(student)
    t = time.perf_counter()
    with spinner(f"QAT: nncf.quantize ({len(cal_images)} calibration images, {scheme} scheme)"):
        qmodel = torch_qat.quantize(student, ctx.pre(cal_images), scheme=scheme)
    ctx.log(f"  QAT: NNCF range init on {len(cal_images)} calibration images in {time.perf_counter() - t:.1f} s; "
            f"{folded} batch norm(s) folded into their convolutions first")
    backup = ctx.cfg.stages.qat.distribution.checkpoint_dir or ctx.run_dir / "qat_backup"
    backup = backup if scheme == "host" else Path(backup) / scheme
    r = fine_tune(qmodel, teacher, data, ctx.pre, opts, ctx.log, checkpoint_dir=backup, role=role,
                  device=opts.device)
    r.quantizer = {**torch_qat.quantizer_summary(qmodel), "batch_norms_folded": folded,
                   "range_init_images": len(cal_images),
                   "range_init": torch_qat.RANGE_INIT if scheme == "host" else torch_qat.RANGE_INIT_TENSORRT,
                   "nncf": _version("nncf")}
    return r


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def _held_out(ctx, module, data: TrainData, n_used: int) -> tuple | None:
    """(preprocessed images, FP32 outputs, what they are) on which the TFLite translation is chosen: the
    fine-tune's validation images, else calibration images beyond the first `n_used` (range init and the
    converter's representative images); None when there are neither. Never the evaluation images."""
    import torch

    if data.val is not None and len(data.val):
        images, what = data.val.images, f"{len(data.val)} validation images (held out of the training split)"
    else:
        images = ctx.splits.calibration.images[n_used:]
        what = f"{len(images)} calibration images not used for range init or by the converter"
    if not len(images):
        return None
    x = ctx.pre(images)
    with torch.no_grad():
        fp32 = np.concatenate([module.eval()(torch_qat.nchw(x[i:i + 64])).numpy() for i in range(0, len(x), 64)])
    return x, fp32, what


def qdq_onnx_to_tflite(ctx, qdq_path: Path, n_rep: int, tflite, held: tuple | None) -> tuple[bytes, dict]:
    """The QAT QDQ ONNX as a full-integer INT8 TFLite (TFLITE_ROUTE): both translations made, the one chosen on
    `held` (see `_held_out`) returned; QuantizationError when it cannot be made."""
    import contextlib

    from edgeq.loaders.onnx import read_onnx_input
    from edgeq.measure.predictors import TFLitePredictor
    from edgeq.methods.onnx.to_tf import onnx_to_keras, param_floor_bytes
    from edgeq.methods.tflite import convert as tflite_convert

    hwc = tuple(ctx.cfg.model.input_shape)
    with tempfile.TemporaryDirectory(prefix=".onnx2tf-qat-", dir=ctx.run_dir) as work:
        flat = Path(work) / "qat_float_weights.onnx"
        removed = qat_tflite.qdq_to_float_onnx(qdq_path, flat)
        info = read_onnx_input(flat, hwc)
        rep = ctx.calibration(n_rep, "stages.tflite_ptq.representative_images")
        made, failed = {}, {}
        for name in qat_tflite.TRANSLATIONS:
            keep = name == qat_tflite.LEARNED
            try:
                with qat_tflite.learned_ranges_as_fake_quant() if keep else contextlib.nullcontext():
                    model, translation = onnx_to_keras(flat, info, ctx.pre(ctx.splits.calibration.images[:20]),
                                                       Path(work) / f"tf_{name}", where=qdq_path)
                blob = tflite_convert.convert_int8(model, rep.one_at_a_time(), input_type=tflite.input_type,
                                                   output_type=tflite.output_type, per_channel=True,
                                                   allow_float_ops=False, name="int8_tflite_qat",
                                                   calibration_images=n_rep)
            except QuantizationError as e:  # the other translation may still make a full-integer model
                failed[name] = str(e)
                ctx.log(f"  ! int8_tflite_qat, {name} translation not made: {e}")
                continue
            put_back = clamped = 0
            if keep:
                blob, put_back, clamped = qat_tflite.keep_learned_weight_scales(qdq_path, blob)
            scales = {**qat_tflite.learned_scales_in_tflite(qdq_path, blob), "weight_channels_put_back": put_back,
                      "weight_codes_clamped": clamped}
            made[name] = (blob, model, translation, scales)
        if not made:
            raise QuantizationError("; ".join(f"{k}: {v}" for k, v in failed.items()))
        if held is None or len(made) == 1:
            chosen, figures = next(iter(made)), {}
            on = ("the only translation made" if len(made) == 1 else
                  "no held-out images (no validation images, every calibration image used): learned scales by default")
        else:
            x, fp32, on = held
            outs = {}
            for name, (blob, *_rest) in made.items():
                path = Path(work) / f"{name}.tflite"
                path.write_bytes(blob)
                outs[name] = TFLitePredictor(path).predict(x)
            chosen, figures = qat_tflite.choose_translation(fp32, outs)
        blob, model, translation, scales = made[chosen]
        if chosen == qat_tflite.LEARNED and scales["activation_scales_missing"]:
            ctx.log(f"  ! int8_tflite_qat: the converter re-calibrated {len(scales['activation_scales_missing'])} "
                    "activation(s) instead of keeping the QAT scales")
        choice = {"chosen": chosen, "selected_on": on, "rule": qat_tflite.CHOICE_RULE,
                  "candidates": {k: {"translation": qat_tflite.TRANSLATIONS[k], **figures.get(k, {}),
                                     "learned_scales": made[k][3]} for k in made},
                  **({"not_made": failed} if failed else {})}
        ctx.log(f"  QAT TFLite: {chosen} chosen on {on}: " + "; ".join(
            f"{k} agrees with FP32 on {f['agree']}/{f['n']}, KL {f['kl']:.4g}" for k, f in figures.items()))
        notes = {"route": TFLITE_ROUTE, "qdq_nodes_removed": removed, "translation": translation,
                 "tflite_translation": choice, "learned_scales": scales,
                 **tflite_convert.int8_notes(blob, model), "size_floor": param_floor_bytes(flat)}
    return blob, notes


def _notes(r: QatResult, data: TrainData) -> dict:
    return fine_tune_notes(r, data, quantizer=r.quantizer)


def qat_markdown(notes: dict, opts: QatSpec, n_cal: int, artifacts: list, tflite_note: str | None) -> str:
    """The qat section of a PyTorch run: how the NNCF QAT ran, and what ONNX Runtime makes of its ONNX."""
    n = notes
    q = n.get("quantizer") or {}
    how = "distilled from the FP32 outputs" if opts.distill else "on the labels"
    text = (f"NNCF {q.get('nncf', '?')} QAT of the PyTorch model ({q.get('quantizers', '?')} INT8 quantizers, "
            f"{q.get('batch_norms_folded', 0)} batch norms folded first; ranges initialised on {n_cal} calibration "
            f"images; {how}, Adam lr {opts.learning_rate:g}), fine-tuned {n.get('epochs_run')} epoch(s) / "
            f"{n.get('steps')} steps on {n.get('train_images')} training images in {n.get('fine_tune_seconds')} s; "
            f"validation top-1 {n.get('validation_top1_before_fine_tune')} before fine-tuning, "
            f"{n.get('validation_top1_after_fine_tune')} after")
    if not n.get("fine_tune_kept", True):
        text += (" (no fine-tuned epoch agreed with the FP32 model on more validation images, or as many at a lower "
                 "loss, than the range-initialised model, so its weights were exported)")
    h = n.get("history") or {}
    if "kept_epoch" in h:
        text += (f"; kept epoch {h['kept_epoch']} (0 = range-initialised) by top-1 agreement with FP32 on the "
                 f"validation images: {h.get('val_agreement_before')} at epoch 0, {h.get('val_agreement')} after "
                 "each epoch")
    lines = ["## QAT (PyTorch, NNCF)", "", text + "."]
    d = n.get("distribution")
    if d:
        lines += ["", f"- fine-tune: {d.get('workers', 1)} worker(s), {d.get('backend') or 'no process group'}, "
                      f"device {d.get('device')}, resumed at epoch {d.get('resumed_at_epoch', 0)}"]
    k = n.get("ort_kernels")
    if k:
        lines += ["", f"- int8_onnx_qat in ORT (optimisation {k['graph_optimization']}): {k['integer_convs']} integer / "
                      f"{k['float_convs']} float Conv, {k['integer_matmuls']} integer / {k['float_matmuls']} float "
                      f"MatMul/Gemm, {k['batch_norms']} BatchNormalization"]
    t = next((a for a in artifacts if a.name == "int8_tflite_qat"), None)
    if t is not None:
        c = t.notes.get("tflite_translation") or {}
        lines.append(f"- int8_tflite_qat: {TFLITE_ROUTE}")
        if c:
            lines.append(f"- int8_tflite_qat translation chosen: **{c['chosen']}**, on {c['selected_on']}")
            for name, f in c["candidates"].items():
                if "agree" in f:
                    lo, hi = f["agreement_ci95"]
                    vs = next((v for key, v in f.items() if key.startswith("vs_")), None)
                    d = (f"; vs learned scales {100 * vs['difference']:+.1f} pt [{100 * vs['ci95'][0]:+.1f}, "
                         f"{100 * vs['ci95'][1]:+.1f}], p = {vs['p']:.2g}") if vs else ""
                    lines.append(f"  - {name}: agrees with FP32 top-1 on {f['agree']}/{f['n']} "
                                 f"({100 * f['agreement']:.1f} %, 95 % CI {100 * lo:.1f}-{100 * hi:.1f}), "
                                 f"KL {f['kl']:.4g}, logit MSE {f['mse']:.4g}{d}")
        ls = t.notes.get("learned_scales")
        if ls:
            lines.append(f"- int8_tflite_qat keeps {ls['activation_scales_kept']} of {ls['activation_scales']} QAT "
                         f"activation scales/zero points and {ls['weight_channels_kept']} of {ls['weight_channels']} "
                         "weight channel scales (read back from the .tflite; TFLite's int8 weights being "
                         f"[-127, 127], {ls.get('weight_codes_clamped', 0)} QAT weight code(s) of -128 held as -127 "
                         "where that keeps the channel's scale closer to NNCF's weights than re-gridding it)")
    if tflite_note:
        lines += ["", tflite_note]
    return "\n".join(lines)
