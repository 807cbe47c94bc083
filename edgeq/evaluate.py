"""Accuracy of any artifact on the evaluation split, through a Predictor; agreement with FP32."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .data import LabelledImages, Preprocess
from .runtime import Predictor


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


def evaluate(predictor: Predictor, data: LabelledImages, pre: Preprocess, dataset: str,
             batch_size: int = 64, label: str | None = None) -> EvalResult:
    """Top-1/top-5 of `predictor` on `data`; `label` names the progress display (default: "evaluate <file>")."""
    import os

    from .progress import track

    if label is None:  # name what is evaluated: the file, else the Keras model
        path, model = getattr(predictor, "path", None), getattr(predictor, "model", None)
        label = (f"evaluate {os.path.basename(path)}" if isinstance(path, (str, os.PathLike)) else
                 f"evaluate Keras model {model.name}" if isinstance(getattr(model, "name", None), str) else "evaluate")
    t = time.perf_counter()
    correct1 = correct5 = 0
    preds = []
    for x, y in track(data.batches(pre, batch_size), -(-len(data) // batch_size), f"{label} ({len(data)} images)",
                      "batches"):
        s = predictor.predict(x)
        s = s.reshape(len(x), -1)
        preds.append(np.argmax(s, axis=1))
        correct1 += int((preds[-1] == y).sum())
        correct5 += topk_correct(s, y, 5)
    n = len(data)
    classes = s.shape[1] if n else 0
    return EvalResult(top1=round(correct1 / n, 5), top5=round(correct5 / n, 5) if classes > 5 else None, n=n,
                      dataset=dataset, seconds=round(time.perf_counter() - t, 2),
                      predictions=np.concatenate(preds).astype(np.int16))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((np.asarray(a) == np.asarray(b)).mean()), 5)


def _op_outputs(path, x_batch: np.ndarray) -> tuple[list[tuple[str, str]], dict[str, list[np.ndarray]]]:
    """Run a .tflite op by op (no delegate, all tensors kept) and return each op's dequantised output."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from .runtime import dequantize_output, quantize_input
    from .tfcompat import quiet_stderr

    with warnings.catch_warnings(), quiet_stderr():
        warnings.simplefilter("ignore")
        it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
    inp = it.get_input_details()[0]
    details = {t["index"]: t for t in it.get_tensor_details()}
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
