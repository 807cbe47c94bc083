"""Accuracy of any artifact on the evaluation split, through a Predictor; agreement with FP32."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeq.core.artifacts import atomic_path, fp32_baselines, graph_optimization_of
from edgeq.core.data import LabelledImages, Preprocess, eval_subset
from edgeq.core.errors import first_line
from edgeq.core.progress import track
from edgeq.core.results import Evaluation, PerLayer, per_layer_key
from edgeq.core.tfcompat import quiet_stderr
from edgeq.measure.predictors import KerasPredictor, Predictor, dequantize_output, open_predictor, quantize_input


@dataclass
class EvalResult:
    top1: float
    top5: float | None
    n: int
    dataset: str
    seconds: float
    predictions: np.ndarray  # argmax per image, for agreement

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("predictions")
        return d


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> int:
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def _score(predictor: Predictor, batches) -> tuple[np.ndarray, int, int, int]:
    """(argmax per image, top-1 correct, top-5 correct, classes) of `predictor` over (x, y) batches."""
    correct1 = correct5 = classes = 0
    preds = []
    for x, y in batches:
        s = predictor.predict(x).reshape(len(x), -1)
        preds.append(np.argmax(s, axis=1))
        correct1 += int((preds[-1] == y).sum())
        correct5 += topk_correct(s, y, 5)
        classes = s.shape[1]
    return (np.concatenate(preds) if preds else np.zeros(0, np.int64)), correct1, correct5, classes


def _result(preds: np.ndarray, correct1: int, correct5: int, classes: int, dataset: str, t: float) -> EvalResult:
    n = len(preds)
    return EvalResult(top1=round(correct1 / n, 5), top5=round(correct5 / n, 5) if classes > 5 else None, n=n,
                      dataset=dataset, seconds=round(time.perf_counter() - t, 2), predictions=preds.astype(np.int16))


def evaluate(predictor: Predictor, data: LabelledImages, pre: Preprocess, dataset: str,
             batch_size: int = 64, label: str | None = None) -> EvalResult:
    """Top-1/top-5 of `predictor` on `data`; `label` names the progress display (default: "evaluate <file>")."""
    if label is None:  # name what is evaluated: the file, else the Keras model
        path, model = getattr(predictor, "path", None), getattr(predictor, "model", None)
        label = (f"evaluate {os.path.basename(path)}" if isinstance(path, (str, os.PathLike)) else
                 f"evaluate Keras model {model.name}" if isinstance(getattr(model, "name", None), str) else "evaluate")
    t = time.perf_counter()
    batches = track(data.batches(pre, batch_size), -(-len(data) // batch_size), f"{label} ({len(data)} images)",
                    "batches")
    return _result(*_score(predictor, batches), dataset, t)


def chunk_bounds(n: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) image ranges, one per worker, each starting on a batch boundary.

    Every chunk then holds exactly the batches one process would run, so a runtime whose output depends on the
    batch it sees still gives the single process's predictions."""
    n_batches = -(-n // batch_size)
    per = -(-n_batches // max(1, workers))
    return [(b * batch_size, min(n, (b + per) * batch_size)) for b in range(0, n_batches, per)]


def _evaluate_chunk(path: str, fmt: str, threads: int, kw: dict, images: np.ndarray, labels: np.ndarray,
                    pre: Preprocess, batch_size: int) -> tuple[np.ndarray, int, int, int]:
    """One chunk in a worker process: it opens the artifact's predictor itself."""
    chunk = LabelledImages(images, labels, "chunk")
    return _score(open_predictor(Path(path), fmt, threads=threads, **kw), chunk.batches(pre, batch_size))


def evaluate_chunked(path: Path, fmt: str, data: LabelledImages, pre: Preprocess, dataset: str,
                     batch_size: int = 64, workers: int = 2, label: str | None = None, **kw) -> EvalResult:
    """`evaluate` of an artifact file split into `workers` batch-aligned chunks in parallel local processes,
    predictions merged in order (identical to one process's); `kw` goes to `open_predictor`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    t = time.perf_counter()
    bounds = chunk_bounds(len(data), batch_size, workers)
    threads = max(1, (os.cpu_count() or 1) // len(bounds))
    label = label or f"evaluate {os.path.basename(path)}"
    # spawn, not fork: TensorFlow and the runtimes' thread pools do not survive a fork
    with ProcessPoolExecutor(len(bounds), mp_context=multiprocessing.get_context("spawn")) as ex:
        futs = [ex.submit(_evaluate_chunk, str(path), fmt, threads, kw, data.images[s:e], data.labels[s:e], pre,
                          batch_size) for s, e in bounds]
        parts = [f.result() for f in track(futs, len(futs), f"{label} ({len(data)} images, {len(bounds)} chunks)",
                                           "chunks")]
    preds = np.concatenate([p[0] for p in parts])
    return _result(preds, sum(p[1] for p in parts), sum(p[2] for p in parts), max(p[3] for p in parts), dataset, t)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((np.asarray(a) == np.asarray(b)).mean()), 5)


def interpreter_keeping_all_tensors(path):
    """A LiteRT interpreter of a .tflite that runs op by op (no delegate) and keeps every tensor: (interpreter,
    its input's details, tensor index -> details)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings(), quiet_stderr():
        warnings.simplefilter("ignore")
        it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
    return it, it.get_input_details()[0], {t["index"]: t for t in it.get_tensor_details()}


def _op_outputs(path, x_batch: np.ndarray) -> tuple[list[tuple[str, str]], dict[str, list[np.ndarray]]]:
    """Run a .tflite op by op (no delegate, all tensors kept) and return each op's dequantised output."""
    it, inp, details = interpreter_keeping_all_tensors(path)
    ops = [(op["op_name"], details[op["outputs"][0]]["name"]) for op in it._get_ops_details()
           if op["outputs"] and op["outputs"][0] in details]
    by_name = {details[op["outputs"][0]]["name"]: op["outputs"][0] for op in it._get_ops_details() if op["outputs"]}
    values: dict[str, list[np.ndarray]] = {name: [] for _, name in ops}
    for x in x_batch:
        it.set_tensor(inp["index"], quantize_input(x[None].astype(np.float32), np.dtype(inp["dtype"]), *inp["quantization"]))
        it.invoke()
        for _, name in ops:
            t = details[by_name[name]]
            values[name].append(dequantize_output(it.get_tensor(by_name[name]), *t["quantization"]))
    return ops, values


def per_layer_error(fp32_tflite, int8_tflite, x_batch: np.ndarray) -> tuple[list[dict], int]:
    """SQNR (dB) of every INT8 op output against the same-named FP32 op output, in graph order.

    Tensor names survive conversion (the converter names an op's output after the Keras layers fused
    into it), so the two graphs line up by name; outputs with no FP32 twin are skipped. Returns the
    matched ops and the INT8 graph's op count."""
    _, ref = _op_outputs(fp32_tflite, x_batch)
    ops, q = _op_outputs(int8_tflite, x_batch)
    out = []
    for op_name, name in ops:
        if name not in ref or not ref[name]:
            continue
        r = np.concatenate([a.ravel() for a in ref[name]]).astype(np.float64)
        v = np.concatenate([a.ravel() for a in q[name]]).astype(np.float64)
        if r.shape != v.shape:
            continue
        noise = float(np.sum((r - v) ** 2))
        signal = float(np.sum(r ** 2))
        sqnr = 99.0 if noise == 0 else round(10 * np.log10(max(signal, 1e-30) / noise), 2)
        layers = list(dict.fromkeys(part.split("/")[1] for part in name.split(";") if part.count("/") >= 1))
        out.append({"op": op_name, "layers": ",".join(layers)[:120] or name[:120], "sqnr_db": float(sqnr),
                    "max_abs_err": round(float(np.max(np.abs(r - v))), 5)})
    return out, len(ops)


# ------------------------------------------------------------------ a run's artifacts
def _predictor_kw(ctx, a) -> dict:
    return ({"graph_optimization": graph_optimization_of(a, ctx.cfg.stages.onnx_ptq.graph_optimization)}
            if a.format == "onnx" else {})


def host_predictor(ctx, a, threads: int | None = 1):
    """The predictor this host evaluates artifact `a` with (an ONNX one at its own graph-optimisation level)."""
    return open_predictor(a.abspath(ctx.run_dir), a.format, threads=threads, **_predictor_kw(ctx, a))


def evaluate_artifacts(ctx, artifacts) -> None:
    """Top-1/top-5 of every artifact on the eval split (predictions kept), agreement with FP32, per-layer error."""
    ev = ctx.splits.eval
    fp = ev.fingerprint()
    preds: dict[str, np.ndarray] = {}
    labels = ctx.run_dir / "eval" / "labels.npz"  # with the predictions, lets `edgeq compare` pair two runs
    if not labels.exists():
        labels.parent.mkdir(exist_ok=True)
        with atomic_path(labels) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, labels=ev.labels.astype(np.int32), fingerprint=np.array(fp))
    subsets: dict[str, np.ndarray] = {}  # artifact -> the eval indices it was evaluated on (slow precisions)
    for a in artifacts:
        idx = eval_subset(len(ev), (a.params or {}).get("eval_images"), ctx.cfg.seed)
        sub = None if idx is None else {"images": len(idx), "of": len(ev), "seed": ctx.cfg.seed}
        if idx is not None:
            subsets[a.name] = idx
        cached = ctx.results.evaluation(a.sha256, fp)
        if cached is not None and cached.subset == sub and (ctx.run_dir / cached.predictions_file).exists():
            with np.load(ctx.run_dir / cached.predictions_file, allow_pickle=False) as z:
                preds[a.name] = z["predictions"]
            ctx.log(f"  = {a.name}: top-1 {cached.top1:.4f} (reused)")
            continue
        data = ev if idx is None else ev.take(idx)
        if a.format in ("keras", "savedmodel"):
            if not ctx.cfg.evaluate.keras_baseline and not any(  # still the reference of an artifact: evaluated
                    ref == a.name != name for name, ref in fp32_baselines(artifacts, None, ctx.fp32).items()):
                continue
            pred = KerasPredictor(ctx.keras_model())
            desc = pred.describe()
            r = evaluate(pred, data, ctx.pre, ctx.splits.dataset, ctx.cfg.evaluate.batch_size,
                         label=f"evaluate {a.name}")
        elif ctx.cfg.evaluate.workers > 1 and len(data) > ctx.cfg.evaluate.batch_size:
            pred = host_predictor(ctx, a, threads=max(1, (os.cpu_count() or 1) // ctx.cfg.evaluate.workers))
            r = evaluate_chunked(a.abspath(ctx.run_dir), a.format, data, ctx.pre, ctx.splits.dataset,
                                 ctx.cfg.evaluate.batch_size, ctx.cfg.evaluate.workers, label=f"evaluate {a.name}",
                                 **_predictor_kw(ctx, a))
            desc = {**pred.describe(), "workers": len(chunk_bounds(len(data), ctx.cfg.evaluate.batch_size,
                                                                   ctx.cfg.evaluate.workers))}
        else:
            pred = host_predictor(ctx, a, threads=os.cpu_count())
            desc = pred.describe()
            r = evaluate(pred, data, ctx.pre, ctx.splits.dataset, ctx.cfg.evaluate.batch_size,
                         label=f"evaluate {a.name}")
        pf = f"eval/{a.name}.npz"
        (ctx.run_dir / "eval").mkdir(exist_ok=True)
        with atomic_path(ctx.run_dir / pf) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, predictions=r.predictions,
                                    **({} if idx is None else {"indices": idx.astype(np.int32)}))
        preds[a.name] = r.predictions
        ctx.results.put_evaluation(a.sha256, fp, Evaluation(a.name, r.top1, r.top5, r.n, r.dataset, r.seconds, pf,
                                                            desc, subset=sub))
        of = "" if sub is None else f" of {len(ev)}"
        ctx.log(f"  * {a.name}: top-1 {r.top1:.4f} top-5 {r.top5} on {r.n}{of} images ({r.seconds} s)"
                + (" (a seeded subset: stages.precision.eval_images)" if sub else ""))
    # agreement of every artifact's top-1 with its FP32 reference
    refs = fp32_baselines(artifacts, preds, ctx.fp32)
    for a in artifacts:
        ref = refs.get(a.name)
        if ref is None:
            continue
        ref_preds = preds[ref] if a.name not in subsets else preds[ref][subsets[a.name]]
        ctx.results.evaluation(a.sha256, fp).agreement = {"reference": ref,
                                                          "top1_agreement": agreement(preds[a.name], ref_preds)}
    ctx.results.save()
    per_layer_errors(ctx, artifacts)


def per_layer_errors(ctx, artifacts, images: int = 8) -> None:
    """SQNR of every INT8 TFLite op output against the FP32 TFLite baseline, on real eval images."""
    fp32 = next((a for a in artifacts if a.format == "tflite" and a.precision == "fp32"), None)
    if fp32 is None:
        return
    x = ctx.pre(ctx.splits.eval.images[:images])
    store = ctx.results.per_layer
    for a in artifacts:
        if a.format != "tflite" or a.precision == "fp32":
            continue
        k = per_layer_key(fp32.sha256, a.sha256, ctx.splits.eval.fingerprint(), images)
        if k not in store:
            try:
                layers, n_ops = per_layer_error(fp32.abspath(ctx.run_dir), a.abspath(ctx.run_dir), x)
                store[k] = PerLayer(a.name, fp32.name, layers, len(x), len(layers), n_ops)
                if len(layers) < n_ops / 2:
                    store[k].layers = None
                    store[k].reason = (f"per-layer error not measured: only {len(layers)} of {n_ops} ops line up by "
                                       f"name with {fp32.name} (a re-wrapped graph, e.g. QAT); compare at the model "
                                       "output instead")
            except (ValueError, RuntimeError, ImportError) as e:
                store[k] = PerLayer(a.name, fp32.name, None, reason=f"per-layer error not measured: {first_line(e)}")
            ctx.results.save()
        worst = sorted(store[k].layers or [], key=lambda r: r["sqnr_db"])[:1]
        if worst:
            ctx.log(f"  * {a.name}: per-layer SQNR over {len(store[k].layers)} ops, worst "
                    f"{worst[0]['sqnr_db']:.1f} dB at {worst[0]['op']} ({worst[0]['layers'][:60]})")




def warn_if_chance(ctx) -> None:
    """Loud warning when the FP32 reference scores near chance: the labels probably are not the model's classes."""
    k = ctx.cfg.model.num_classes
    names = {a.name for a in ctx.manifest.artifacts.values() if a.precision == "fp32"}  # the source model's, else an
    fp32 = [e for e in ctx.results.evaluations.values()                                 # FP32 export's (same model)
            if e.artifact in names and e.top1 is not None and not e.subset]
    fp32.sort(key=lambda e: ctx.fp32 is not None and e.artifact == ctx.fp32.name)
    if not fp32:
        return
    top1 = fp32[-1].top1
    if top1 <= CHANCE_FACTOR / k:
        msg = (f"edgeq: warning: the FP32 model's top-1 is {top1:.4f}, near chance for {k} classes ({1 / k:.4f}): "
               "labels probably do not match the model's classes; give the model's class names in output order "
               "as data.classes (or data.labels_file)")
        ctx.log(msg)
        import sys

        print(msg, file=sys.stderr, flush=True)
        ctx.results.set_section("warnings", [msg.removeprefix("edgeq: warning: ")])


CHANCE_FACTOR = 1.5  # FP32 top-1 at or below 1.5x chance (1/num_classes) is "near chance"
