"""A trainable nn.Module from a torch.export program (.pt2) or a TorchScript file, for NNCF's QAT.

Both become a torch.fx GraphModule of ATen operators holding the model's weights: a .pt2 as
`torch.export.load(...).module()` (the loader's), a TorchScript file through torch's TorchScript -> ExportedProgram
converter (`torch._export.converter.TS2EPConverter`, its weights turned back into parameters by the names the
ScriptModule gives them). NNCF's PyTorch backend finds its quantizer positions by the names of the torch functions
a forward pass calls (`conv2d`, `linear`, `hardtanh`...); an ATen operator (`aten.conv2d.default`) is not one of
them and it would insert none. So each operator is pointed at the Python binding of the same ATen function
(`torch.conv2d`, `torch._C._nn.linear`...), which computes the same thing and is what an eager nn.Module calls:
NNCF then sees the graph an eager model gives it. The export's shape guards are dropped (they pin the batch to the
one exported, and the fine-tune runs batches); the result is checked against the loaded model on a batch before
it is used. Batch norms are folded at the graph level (`fold_graph_batch_norms`): in the graph they are
`batch_norm` calls in inference form (running statistics), not modules.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

from edgeq.core.errors import ModelError, first_line

CHECK_BATCH = 4  # images of the batch the converted module is checked on, one at a time against the loaded model
ATOL = 1e-4  # float32 reassociation only: the same kernels run

ROUTES = {"state_dict": "nn.Module from model.factory + state_dict -> NNCF PyTorch backend",
          "torch.export": "torch.export program -> ExportedProgram.module() (GraphModule of ATen ops) -> ATen ops as "
                          "torch functions, shape guards dropped -> NNCF PyTorch backend",
          "torchscript": "TorchScript -> torch._export.converter.TS2EPConverter -> ExportedProgram.module() "
                         "(weights as parameters again) -> ATen ops as torch functions -> NNCF PyTorch backend"}
KINDS = {"state_dict": "state_dict + model.factory", "torch.export": "torch.export program (.pt2)",
         "torchscript": "TorchScript file"}


def trainable_module(module, where, input_shape_hwc) -> tuple:
    """(an nn.Module NNCF can quantize and the fine-tune can train, {"kind", "route"}) for what the PyTorch loader
    gave: the nn.Module itself (state_dict + factory), or one rebuilt from a torch.export program or TorchScript
    file (see the module docstring). ModelError when the program cannot be made trainable, saying what to give."""
    import torch

    from edgeq.loaders.pytorch import exported_graph, exported_module

    if isinstance(module, torch.jit.ScriptModule):
        kind, gm = "torchscript", _from_torchscript(module, input_shape_hwc, where)
    elif exported_graph(module) is not None:
        import copy

        kind, gm = "torch.export", copy.deepcopy(exported_graph(module))
    else:
        return module, {"kind": KINDS["state_dict"], "route": ROUTES["state_dict"]}
    _drop_shape_guards(gm)
    left = _as_torch_functions(gm)
    trainable = exported_module(gm)
    _check_same(trainable, module, input_shape_hwc, where, kind)
    return trainable, {"kind": KINDS[kind], "route": ROUTES[kind], **({"aten_ops_left": left} if left else {})}


def _from_torchscript(script, input_shape_hwc, where):
    import torch

    try:
        from torch._export.converter import TS2EPConverter
    except ImportError:
        raise ModelError(f"{where}: QAT of a TorchScript file needs torch's TorchScript -> torch.export converter "
                         f"(torch._export.converter, torch >= 2.5), not in torch {torch.__version__}; give the "
                         "state_dict with model.factory, or a torch.export program (.pt2)") from None
    h, w, c = input_shape_hwc
    try:
        with warnings.catch_warnings(), _quiet("torch._export"):
            warnings.simplefilter("ignore")
            gm = TS2EPConverter(script, (torch.zeros(1, c, h, w),)).convert().module()
    except Exception as e:
        raise ModelError(f"{where}: torch cannot convert this TorchScript file to a torch.export program for QAT "
                         f"({first_line(e, 200)}); give the state_dict with model.factory, or export the model with "
                         "torch.export.save(torch.export.export(model, (x,)), 'm.pt2')") from None
    # the converter lifts every weight as a buffer: the ScriptModule says which were parameters
    names = [n for n, _ in script.named_parameters()]
    for name in names:
        owner, _, attr = name.rpartition(".")
        try:
            mod = gm.get_submodule(owner)
        except AttributeError:
            mod = None
        t = mod._buffers.get(attr) if mod is not None else None
        if t is None:
            raise ModelError(f"{where}: the TorchScript -> torch.export conversion lost the parameter {name!r}, so "
                             "QAT cannot train it; give the state_dict with model.factory, or a torch.export program")
        del mod._buffers[attr]
        mod.register_parameter(attr, torch.nn.Parameter(t.detach().clone()))
    return gm


@contextlib.contextmanager
def _quiet(logger: str):
    """The converter logs a warning per input dimension it specialises to the example's (1, C, H, W)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _drop_shape_guards(gm) -> None:
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and n.target == "_guards_fn":
            gm.graph.erase_node(n)
    gm.validate_inputs = False  # the input pre-hook would check the exported shapes again
    gm.recompile()


def _binding(op):
    """The Python binding of an ATen operator (`aten.conv2d.default` -> torch.conv2d), or None."""
    import torch

    name = op._opname
    for space in (torch, torch._C._nn, torch._C._VariableFunctions):
        fn = getattr(space, name, None)
        if callable(fn):
            return fn
    fn = getattr(torch.Tensor, name, None)  # view, expand...: methods only
    return fn if callable(fn) else None


def _as_torch_functions(gm) -> list[str]:
    """Point each ATen operator of the graph at its Python binding (`aten.convolution` of a non-transposed
    convolution at conv1d/2d/3d, as the TorchScript tracer records nn.Conv2d). Returns the operators left as
    ATen calls (no binding, e.g. `aten.sym_size.int`): NNCF places no quantizer at them."""
    import torch

    left = set()
    for n in gm.graph.nodes:
        if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
            continue
        if n.target is torch.ops.aten.convolution.default and not n.args[6] and not any(n.args[7]):
            x, wt, b, stride, pad, dil, _, _, groups = n.args
            n.target = {1: torch.conv1d, 2: torch.conv2d, 3: torch.conv3d}[len(stride)]
            n.args = (x, wt, b, stride, pad, dil, groups)
            continue
        fn = _binding(n.target)
        if fn is None:
            left.add(str(n.target))
        else:
            n.target = fn
    gm.recompile()
    return sorted(left)


def _check_same(trainable, loaded, input_shape_hwc, where, kind: str) -> None:
    """The rebuilt module computes what the loaded model computes: on one image (the rebuild), then on a batch
    against the loaded model image by image (the batch the export pinned)."""
    import numpy as np
    import torch

    h, w, c = input_shape_hwc
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((CHECK_BATCH, c, h, w)).astype(np.float32))
    again = ("re-export it with a dynamic batch: torch.export.export(model, (x,), dynamic_shapes=({0: "
             "torch.export.Dim('batch')},))" if kind == "torch.export" else "give the state_dict with model.factory")
    with torch.no_grad():
        try:
            ref = torch.cat([loaded(x[i:i + 1]) for i in range(len(x))])
        except Exception as e:
            raise ModelError(f"{where}: the {KINDS[kind]} fails on one 1x{c}x{h}x{w} image ({first_line(e, 200)}); "
                             "export it for a batch of 1 (or a dynamic batch) at model.input_shape") from None
        for n, what in ((1, "on one image"), (CHECK_BATCH, f"on a batch of {CHECK_BATCH} images")):
            fix = again if n > 1 else "give the state_dict with model.factory"
            try:
                got = trainable.eval()(x[:n])
            except Exception as e:
                raise ModelError(f"{where}: the {KINDS[kind]}, rebuilt for QAT, fails {what} ({first_line(e, 200)})"
                                 f"; QAT fine-tunes in batches: {fix}") from None
            diff = float((got - ref[:n]).abs().max()) if got.shape == ref[:n].shape else float("inf")
            if not diff <= ATOL * max(1.0, float(ref.abs().max())):
                raise ModelError(f"{where}: the {KINDS[kind]}, rebuilt for QAT, computes other outputs {what} than "
                                 f"the loaded model (max |diff| {diff:.3g}); {fix}")


def fold_graph_batch_norms(module) -> int:
    """Fold every `batch_norm` call (inference form) whose input is a convolution used nowhere else into that
    convolution's weight and bias, in the graph of a module `trainable_module` rebuilt. Returns how many."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    from edgeq.loaders.pytorch import exported_graph

    gm = exported_graph(module)
    g = gm.graph

    def tensor(node):
        return gm.get_parameter(node.target) if node.target in dict(gm.named_parameters()) else \
            gm.get_buffer(node.target)

    def attr(node):
        return node is not None and getattr(node, "op", None) == "get_attr"

    folded = 0
    for bn in list(g.nodes):
        if bn.op != "call_function" or bn.target is not torch.batch_norm:
            continue
        conv, bw, bb, mean, var, training, _, eps = bn.args[:8]
        if training or not all(attr(a) for a in (bw, bb, mean, var)):
            continue
        if getattr(conv, "target", None) not in (torch.conv1d, torch.conv2d, torch.conv3d) or len(conv.users) != 1:
            continue
        cw = conv.args[1]
        cb = conv.args[2] if len(conv.args) > 2 else conv.kwargs.get("bias")
        if not attr(cw) or (cb is not None and not attr(cb)) or \
                any(len(a.users) != 1 for a in (cw, cb) if a is not None) or \
                sum(1 for m in g.nodes if m.op == "get_attr" and m.target == cw.target) != 1:
            continue
        w, b = fuse_conv_bn_weights(tensor(cw), tensor(cb) if cb is not None else None, tensor(mean), tensor(var),
                                    eps, tensor(bw), tensor(bb))
        owner, _, name = cw.target.rpartition(".")
        holder = gm.get_submodule(owner)
        setattr(holder, name, w)
        if cb is not None:
            o, _, nm = cb.target.rpartition(".")
            setattr(gm.get_submodule(o), nm, b)
        else:
            bias_name = f"{name}_folded_bias"
            holder.register_parameter(bias_name, b)
            with g.inserting_after(cw):
                cb = g.get_attr(f"{owner}.{bias_name}" if owner else bias_name)
            args = list(conv.args) + [None] * max(0, 3 - len(conv.args))
            args[2] = cb
            conv.args = tuple(args)
            conv.kwargs = {k: v for k, v in conv.kwargs.items() if k != "bias"}
        bn.replace_all_uses_with(conv)
        g.erase_node(bn)
        folded += 1
    g.eliminate_dead_code()
    g.lint()
    gm.delete_all_unused_submodules()  # the folded batch norms' weights and statistics
    gm.recompile()
    return folded
