"""Accuracy budget -> float fallback for an INT8 QDQ ONNX model: the fewest nodes left float that bring its
top-1 drop on a held-back slice within the budget.

1. Sensitivity: every quantized node's output SQNR against the FP32 model on a few slice images; a node's
   score is the SQNR it loses (its input's SQNR minus its output's), so error a node merely inherits does not
   count against it.
2. Refinement: the `candidates` most sensitive nodes are each left float alone (ORT `nodes_to_exclude`,
   calibration ranges cached so no recalibration) and the slice top-1 measured; the ranking is by that effect.
3. Greedy: nodes are added in ranking order until the slice drop is within the budget.

Full-integer targets (Edge TPU, TensorRT INT8-only builds) cannot take a float node; `refusal_reason` says so.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgeq.ondevice.agent import ort_session_options

# device kinds whose INT8 artifact must stay fully integer, and why (fallback is refused for them)
# the fully integer better-PTQ artifact to use instead, per kind
BETTER_ROUTE = {"edgetpu": "int8_tflite_ptq_adv (stages.comparison: equalisation + bias correction, fully integer) "
                           "or a LiteRT Quantizer OCTAV/GPTQ recipe",
                "jetson": "stages.onnx_ptq.calibration_method: entropy or percentile for int8_onnx_trt"}
FULL_INTEGER_TARGETS = {
    "edgetpu": "the Edge TPU compiler maps only int8 ops; a float node would split the model and run on the CPU",
    "jetson": "the TensorRT artifact is an INT8 explicit-quantization build: every quantizable layer is int8 by "
              "contract (a float node needs an FP16/FP32 fallback build, which this artifact is not)",
}
SQNR_CAP_DB = 60.0  # a tensor with no error (the float graph input) counts as this


def refusal_reason(kind: str) -> str | None:
    """Why float fallback is refused for artifacts made for device kind `kind`; None if it is allowed."""
    r = FULL_INTEGER_TARGETS.get(kind)
    return f"float fallback refused for {kind}: {r}; use better rounding/ranges instead: {BETTER_ROUTE[kind]}" \
        if r else None


@dataclass
class NodeEffect:
    node: str
    op_type: str
    sqnr_loss_db: float  # SQNR(input) - SQNR(output) in the INT8 model
    solo_top1: float | None = None  # slice top-1 with only this node float
    solo_gain_pt: float | None = None  # vs the INT8 model, points
    solo_output_mse: float | None = None  # vs FP32 outputs (tie-break)


@dataclass
class FallbackPlan:
    budget_pt: float
    slice_images: int
    fp32_top1: float
    int8_top1: float
    ranking: list[NodeEffect]
    steps: list[dict] = field(default_factory=list)  # cumulative: float nodes, slice top-1, drop
    float_nodes: list[str] = field(default_factory=list)
    final: dict | None = None  # the step written out: float nodes, slice top-1, drop
    met: bool = False
    seconds: float = 0.0

    @property
    def int8_drop_pt(self) -> float:
        return round((self.fp32_top1 - self.int8_top1) * 100, 3)

    @property
    def final_drop_pt(self) -> float | None:
        return self.final["drop_pt"] if self.final else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(int8_drop_pt=self.int8_drop_pt, final_drop_pt=self.final_drop_pt)
        return d


# ------------------------------------------------------------------ running models
def ort_session(path: Path, graph_optimization: str = "all"):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), ort_session_options(ort, None, graph_optimization),
                                providers=["CPUExecutionProvider"])


def ort_feed(x: np.ndarray, input_name: str, nchw: bool) -> dict:
    return {input_name: np.ascontiguousarray(x.transpose(0, 3, 1, 2) if nchw else x, np.float32)}


def predict(path: Path, x: np.ndarray, input_name: str, nchw: bool, batch: int | None) -> np.ndarray:
    sess = ort_session(path)
    step = batch or 64
    out = [sess.run(None, ort_feed(x[s:s + step], input_name, nchw))[0] for s in range(0, len(x), step)
           if not batch or len(x[s:s + step]) == batch]
    return np.concatenate(out).reshape(-1, out[0].shape[-1]).astype(np.float32)


def with_outputs(src: Path, names: list[str], dst: Path) -> Path:
    import onnx

    m = onnx.load(str(src))
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    onnx.save(m, str(dst))
    return dst


def quantized_nodes(int8_path: Path) -> list[tuple[str, str, tuple[str, str], tuple[str, str]]]:
    """Every node that reads a DequantizeLinear output: (name, op_type, input, output), where input and output
    are (tensor name in the FP32 model, tensor in the INT8 model holding the value that is really passed on):
    the dequantized input the node reads, and its output after its own Q/DQ pair (ORT folds a ReLU into that
    pair, so the node's raw output is not comparable with the FP32 tensor of the same name)."""
    import onnx

    g = onnx.load(str(int8_path)).graph
    q_of = {n.input[0]: n.output[0] for n in g.node if n.op_type == "QuantizeLinear"}  # float -> quantized
    q_src = {n.output[0]: n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}  # quantized -> float
    dq_src = {n.output[0]: n.input[0] for n in g.node if n.op_type == "DequantizeLinear"}
    out = []
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or not n.name or not n.output:
            continue
        first = n.input[0] if n.input else ""
        if first not in dq_src:
            continue
        fp_in = q_src.get(dq_src[first], dq_src[first])
        o = n.output[0]
        seen = dq_of.get(q_of.get(o, ""), o)
        out.append((n.name, n.op_type, (fp_in, first), (o, seen)))
    return out


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    """SQNR in dB of the signal's variation: a constant offset (logits + c, which softmax ignores) is no signal,
    while the int8 step it forces is noise."""
    ref = ref.astype(np.float64)
    noise = float(np.sum((ref - got) ** 2))
    sig = float(np.sum((ref - ref.mean()) ** 2))
    if noise == 0:
        return SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10 * np.log10(max(sig, 1e-30) / noise))


def sensitivity(fp32_path: Path, int8_path: Path, x: np.ndarray, input_name: str, nchw: bool,
                batch: int | None, workdir: Path) -> list[NodeEffect]:
    """Every quantized node with the SQNR it loses (input SQNR - output SQNR), most sensitive first."""
    import onnx

    nodes = quantized_nodes(int8_path)
    fp_model = onnx.load(str(fp32_path)).graph
    fp_names = {t for node in fp_model.node for t in node.output}
    graph_inputs = {i.name for i in fp_model.input}
    pairs = [(f, q) for _, _, i, o in nodes for f, q in (i, o) if f in fp_names or f in graph_inputs]
    f = with_outputs(fp32_path, sorted({f for f, _ in pairs if f in fp_names}), workdir / "fp32_probe.onnx")
    q = with_outputs(int8_path, sorted({q for _, q in pairs}), workdir / "int8_probe.onnx")
    n = len(x) if not batch else batch
    feed = ort_feed(x[:n], input_name, nchw)
    fs, qs = ort_session(f, "disable"), ort_session(q, "disable")
    fv = {**feed, **dict(zip([o.name for o in fs.get_outputs()], fs.run(None, feed)))}
    qv = dict(zip([o.name for o in qs.get_outputs()], qs.run(None, feed)))

    def sq(pair: tuple[str, str]) -> float | None:
        fname, qname = pair
        if fname not in fv or qname not in qv or fv[fname].shape != qv[qname].shape:
            return None
        return sqnr(fv[fname], qv[qname])

    effects = []
    for name, op, i, o in nodes:
        si, so = sq(i), sq(o)
        if si is not None and so is not None:
            effects.append(NodeEffect(name, op, round(float(si - so), 3)))
    return sorted(effects, key=lambda e: -e.sqnr_loss_db)


# ------------------------------------------------------------------ the search
@dataclass
class Backend:
    """What the search needs from a format: quantize with nodes excluded, run on the slice, rank nodes."""

    suffix: str  # file suffix of a model
    quantize: Callable[[list[str], Path], None]  # (nodes left float, output path); calibrated once, cached
    run: Callable[[Path], np.ndarray]  # model file -> its outputs on the slice
    rank: Callable[[Path], list[NodeEffect]]  # the INT8 model -> its quantized nodes, most sensitive first
    reference: np.ndarray  # the FP32 model's outputs on the slice


def onnx_backend(fp32_path: Path, quantize: Callable[[list[str], Path], None], x: np.ndarray, *, input_name: str,
                 nchw: bool, batch: int | None, workdir: Path) -> Backend:
    run = lambda path: predict(path, x, input_name, nchw, batch)  # noqa: E731
    rank = lambda int8: sensitivity(fp32_path, int8, x[:16], input_name, nchw, batch, Path(workdir))  # noqa: E731
    return Backend(".onnx", quantize, run, rank, run(fp32_path))


def plan_fallback(backend: Backend, y: np.ndarray, *, budget_pt: float, candidates: int, max_float_nodes: int,
                  base_exclude: list[str], out: Path, workdir: Path,
                  log: Callable[[str], None] = print) -> FallbackPlan:
    """The fewest float nodes that bring the slice drop within `budget_pt`, the model with them written to `out`.

    Nothing is written when the INT8 model is already within budget (no steps); when the budget is not met with
    `max_float_nodes`, the last model tried is written and `plan.met` is False."""
    t0 = time.perf_counter()
    work = Path(workdir)
    ref = backend.reference
    y = y[:len(ref)]
    fp32_top1 = float((ref.argmax(1) == y).mean())

    def measure(exclude: list[str], tag: str) -> tuple[Path, float, float]:
        path = work / f"{tag}{backend.suffix}"
        backend.quantize(list(exclude), path)
        p = backend.run(path)
        return path, float((p.argmax(1) == y).mean()), float(np.mean((p - ref) ** 2))

    base_path, base_top1, _ = measure(base_exclude, "int8")
    drop = lambda top1: round((fp32_top1 - top1) * 100, 3)  # noqa: E731
    plan = FallbackPlan(budget_pt, len(y), round(fp32_top1, 5), round(base_top1, 5), [])
    log(f"  slice of {len(y)} held-back images: FP32 top-1 {fp32_top1:.4f}, INT8 {base_top1:.4f} "
        f"(drop {drop(base_top1):.2f} pt, budget {budget_pt} pt)")
    if drop(base_top1) <= budget_pt:
        plan.met, plan.seconds = True, round(time.perf_counter() - t0, 1)
        return plan
    ranking = plan.ranking = backend.rank(base_path)
    shortlist = ranking[:candidates]
    for i, e in enumerate(shortlist):
        _, top1, mse = measure(base_exclude + [e.node], f"solo{i}")
        e.solo_top1, e.solo_gain_pt, e.solo_output_mse = round(top1, 5), round((top1 - base_top1) * 100, 3), mse
        log(f"  solo fallback {e.node} ({e.op_type}, loses {e.sqnr_loss_db:.1f} dB): slice top-1 {top1:.4f} "
            f"({e.solo_gain_pt:+.2f} pt)")
    # refined ranking: measured solo effect first (then output error), the SQNR-only rest after
    shortlist.sort(key=lambda e: (-e.solo_top1, e.solo_output_mse))
    plan.ranking = shortlist + ranking[candidates:]
    best: Path | None = None
    chosen: list[str] = []
    for e in shortlist[:max_float_nodes]:
        chosen.append(e.node)
        path, top1, _ = measure(base_exclude + chosen, f"step{len(chosen)}")
        plan.final = {"float_nodes": list(chosen), "slice_top1": round(top1, 5), "drop_pt": drop(top1)}
        plan.steps.append(plan.final)
        log(f"  {len(chosen)} float: {', '.join(chosen)} -> slice top-1 {top1:.4f} (drop {drop(top1):.2f} pt)")
        best = path
        if drop(top1) <= budget_pt:
            plan.met = True
            break
    if plan.met and len(chosen) > 1:  # greedy overshoots when nodes only help together: drop the passengers
        for node in list(reversed(chosen[:-1])):
            trial = [n for n in chosen if n != node]
            path, top1, _ = measure(base_exclude + trial, f"prune{len(plan.steps)}")
            step = {"float_nodes": trial, "slice_top1": round(top1, 5), "drop_pt": drop(top1), "without": node}
            plan.steps.append(step)
            if drop(top1) <= budget_pt:
                log(f"  without {node}: slice top-1 {top1:.4f} (drop {drop(top1):.2f} pt): not needed")
                chosen, best, plan.final = trial, path, step
    plan.float_nodes = chosen
    plan.seconds = round(time.perf_counter() - t0, 1)
    if best is not None:
        Path(out).write_bytes(best.read_bytes())
    return plan
