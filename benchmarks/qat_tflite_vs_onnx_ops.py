"""Where a PyTorch QAT run's int8_tflite_qat parts from the int8_onnx_qat it is translated from, op by op.

    python benchmarks/qat_tflite_vs_onnx_ops.py /tmp/qat_bar/seed2     # a seed directory of qat_pytorch_bar.py

On the run's 1,000 evaluation images (the sample's test images; analysis only, nothing is chosen here):
1. each op of each runtime against the exact QDQ arithmetic applied to that runtime's own input codes (float64,
   round half to even): ONNX Runtime (every QuantizeLinear output exposed) and LiteRT's builtin kernels (all
   tensors preserved), codes compared in steps of the tensor's scale, uint8 -> int8 zero points shifted by 128;
2. top-1 flips against the ONNX QAT from the int8 logits alone (the ONNX's float logits put on the TFLite's output
   grid, argmax taking the lower class on a tie), from the kernels up to the head alone (TFLite's head-input codes
   through the exact float Gemm), and from the TFLite as built (builtin kernels) and as evaluated (default
   delegate, XNNPACK).
Written for the bar's FashionNet graph: Conv (+ Clip) -> QuantizeLinear, one Add, one ReduceMean, a Gemm head.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main(seed_dir: Path) -> None:
    import onnx
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from onnx import helper, numpy_helper

    from edgeq.core.config import load_config
    from edgeq.core.data import SHIPPED_SAMPLE
    from edgeq.run.inputs import preprocess_of

    run = next(p.parent for p in (seed_dir / "out").rglob("report.json"))
    x = preprocess_of(load_config(seed_dir / "run.yaml"))(np.load(SHIPPED_SAMPLE)["eval_images"]).astype(np.float32)
    n = len(x)
    m = onnx.load(str(run / "artifacts/int8_qat.onnx"))
    g = m.graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    prod = {o: nd for nd in g.node for o in nd.output}
    qnodes = [nd for nd in g.node if nd.op_type == "QuantizeLinear" and init[nd.input[1]].size == 1]
    qinfo = {nd.output[0]: (float(init[nd.input[1]]), int(init[nd.input[2]])) for nd in qnodes}
    for nd in qnodes:
        g.output.append(helper.make_tensor_value_info(nd.output[0], helper.np_dtype_to_tensor_dtype(
            init[nd.input[2]].dtype), None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = ["logits"] + [nd.output[0] for nd in qnodes]
    res = [sess.run(names, {"input": x[i:i + 1].transpose(0, 3, 1, 2)}) for i in range(n)]
    O = {k: np.concatenate([r[j] for r in res]) for j, k in enumerate(names)}

    def dq_src(name):  # the DequantizeLinear feeding `name`: (its code tensor, scale, zero point)
        nd = prod[name]
        zp = init[nd.input[2]].astype(np.int64) if len(nd.input) > 2 else 0
        return nd.input[0], init[nd.input[1]].astype(np.float64), zp

    def requant(v, out):
        s, z = qinfo[out]
        return np.clip(np.rint(v / s) + z, 0, 255)

    def dq(codes, q):
        s, z = qinfo[q]
        return (codes.astype(np.float64) - z) * s

    def conv_exact(xc, conv, out, act):
        _, xs, xz = dq_src(conv.input[0])
        wn, ws, _ = dq_src(conv.input[1])
        bn, _, _ = dq_src(conv.input[2])
        at = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        with torch.no_grad():
            acc = F.conv2d(torch.from_numpy(xc.astype(np.float64) - xz), torch.from_numpy(init[wn].astype(np.float64)),
                           torch.from_numpy(init[bn].astype(np.float64)), stride=at.get("strides", [1, 1]),
                           padding=at.get("pads", [0, 0, 0, 0])[:2], groups=at.get("group", 1)).numpy()
        v = acc * (xs * ws).reshape(1, -1, 1, 1)
        return requant(np.clip(v, 0.0, 6.0) if act else v, out)

    consumers = lambda t: [c for c in g.node if t in c.input]  # noqa: E731
    convs = []
    for nd in g.node:
        if nd.op_type == "Conv":
            nxt = consumers(nd.output[0])[0]
            act = nxt.op_type == "Clip"
            q = [c for c in consumers(nxt.output[0] if act else nd.output[0]) if c.op_type == "QuantizeLinear"][0]
            convs.append((nd, act, q.output[0]))

    it = Interpreter(model_path=str(run / "artifacts/int8_qat.tflite"), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    s_in, z_in = inp["quantization"]
    xq = np.clip(np.rint(x / s_in) + z_in, -128, 127).astype(np.int8)
    det = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    keep = {k: [] for k, t in det.items() if t["dtype"] == np.int8}
    for i in range(n):
        it.set_tensor(inp["index"], xq[i:i + 1])
        it.invoke()
        for k in keep:
            try:
                keep[k].append(it.get_tensor(k).copy())
            except ValueError:
                pass
    T = {k: np.concatenate(v) for k, v in keep.items() if v and v[0].ndim >= 2 and v[0].shape[0] == 1}

    def t2o(k, q):  # TFLite int8 codes on the ONNX's uint8 zero point, NCHW when 4-D NHWC
        r = T[k].astype(np.int64) - int(det[k]["quantization_parameters"]["zero_points"][0]) + qinfo[q][1]
        return r.transpose(0, 3, 1, 2) if r.ndim == 4 and r.shape[-1] != r.shape[-2] else r

    def row(what, d_o, d_t, t_out, q):
        apart = t2o(t_out, q) - O[q].astype(np.int64)
        print(f"{what[:28]:28s} ORT {np.mean(d_o != 0):.5f} (max {np.abs(d_o).max():.0f})  "
              f"TFLite {np.mean(d_t != 0):.5f} (+1 {np.mean(d_t == 1):.5f}, -1 {np.mean(d_t == -1):.5f}, "
              f"max {np.abs(d_t).max():.0f})  "
              f"TFLite vs ORT codes {np.mean(apart != 0):.5f} (max {np.abs(apart).max():.0f})")

    print(f"{run}: n = {n} images; share of each op's output codes off the exact QDQ arithmetic on its own input, "
          "and of TFLite's codes off ORT's")
    tconvs = [o for o in ops if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    for (conv, act, qout), top in zip(convs, tconvs):
        src = dq_src(conv.input[0])[0]
        xin = t2o(top["inputs"][0], src)
        if xin.shape[2:] != O[src].shape[2:]:  # onnx2tf's explicit PAD: crop it, the exact conv pads
            p = (xin.shape[2] - O[src].shape[2]) // 2
            xin = xin[:, :, p:-p, p:-p]
        row(conv.name, O[qout].astype(np.int64) - conv_exact(O[src], conv, qout, act),
            t2o(top["outputs"][0], qout) - conv_exact(xin, conv, qout, act), top["outputs"][0], qout)
    add = next(nd for nd in g.node if nd.op_type == "Add")
    addq = consumers(add.output[0])[0].output[0]
    a0, a1 = dq_src(add.input[0])[0], dq_src(add.input[1])[0]
    tadd = next(o for o in ops if o["op_name"] == "ADD")
    row("Add", O[addq].astype(np.int64) - requant(dq(O[a0], a0) + dq(O[a1], a1), addq),
        t2o(tadd["outputs"][0], addq) - requant(dq(t2o(tadd["inputs"][0], a0), a0) + dq(t2o(tadd["inputs"][1], a1), a1),
                                                addq), tadd["outputs"][0], addq)
    mean = next(nd for nd in g.node if nd.op_type == "ReduceMean")
    meanq = consumers(mean.output[0])[0].output[0]
    tmean = next(o for o in ops if o["op_name"] == "MEAN")
    row("ReduceMean", O[meanq].astype(np.int64) - requant(dq(O[addq], addq).mean((2, 3)), meanq),
        t2o(tmean["outputs"][0], meanq) - requant(dq(t2o(tmean["inputs"][0], addq), addq).mean((2, 3)), meanq),
        tmean["outputs"][0], meanq)
    gemm = next(nd for nd in g.node if nd.op_type == "Gemm")
    wn, ws, _ = dq_src(gemm.input[1])
    bn, bs, _ = dq_src(gemm.input[2])
    W, B = init[wn].astype(np.float64) * ws[:, None], init[bn].astype(np.float64) * bs
    fc = next(o for o in ops if o["op_name"] == "FULLY_CONNECTED")
    q = det[fc["outputs"][0]]["quantization_parameters"]
    step, zp = float(q["scales"][0]), int(q["zero_points"][0])
    head_in = dq(t2o(fc["inputs"][0], meanq), meanq)
    t_codes = T[fc["outputs"][0]].astype(np.int64)
    print(f"{'FULLY_CONNECTED':28s} TFLite int8 logits off the exact quantized Gemm: "
          f"{np.mean(t_codes != np.clip(np.rint((head_in @ W.T + B) / step) + zp, -128, 127)):.5f}")
    lo = O["logits"].astype(np.float64)
    top = lo.argmax(1)
    flips = lambda pred: int((pred != top).sum())  # noqa: E731
    grid = np.clip(np.rint(lo / step) + zp, -128, 127)
    xn = Interpreter(model_path=str(run / "artifacts/int8_qat.tflite"))
    xn.allocate_tensors()
    out = xn.get_output_details()[0]
    ev = []
    for i in range(n):
        xn.set_tensor(inp["index"], xq[i:i + 1])
        xn.invoke()
        ev.append(xn.get_tensor(out["index"]).copy())
    ev = np.concatenate(ev).astype(np.int64)
    srt = np.sort(ev, 1)
    print(f"\ntop-1 flips against the ONNX QAT, of {n} (TFLite output step {step:.4g}):")
    print(f"  the int8 logits alone (ONNX float logits on the TFLite grid):  {flips(grid.argmax(1))}")
    print(f"  the kernels up to the head alone (exact float Gemm):           {flips((head_in @ W.T + B).argmax(1))}")
    print(f"  TFLite, builtin kernels:                                       {flips(t_codes.argmax(1))}")
    print(f"  TFLite as evaluated (default delegate):                        {flips(ev.argmax(1))}; "
          f"differs from the int8-logits-alone prediction on {int((ev.argmax(1) != grid.argmax(1)).sum())}; "
          f"top-2 ties in its output {int((srt[:, -1] == srt[:, -2]).sum())}, "
          f"of them flipped {int(((srt[:, -1] == srt[:, -2]) & (ev.argmax(1) != top)).sum())}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
