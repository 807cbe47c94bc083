"""QAT from every PyTorch input the loader takes: a torch.export program (.pt2) and a TorchScript file (traced or
scripted) are rebuilt as a trainable module (`edgeq.methods.torch.exported`) that NNCF quantizes exactly as the
state_dict + factory nn.Module, fine-tunes to the same weights with the same seed, and exports as a QDQ ONNX that
ONNX Runtime runs as the NNCF model computes; a program that cannot be rebuilt is refused saying what to give."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nncf")

import torch_nets  # noqa: E402
from edgeq.core.data import SHIPPED_SAMPLE, LabelledImages, Preprocess  # noqa: E402
from edgeq.core.errors import ModelError  # noqa: E402

PRE = Preprocess((28, 28), 1)
HWC = (28, 28, 1)
KINDS = ("state_dict", "pt2", "pt2_dynamic_batch", "torchscript_traced", "torchscript_scripted")


def _sample(n: int, part: str = "calibration", start: int = 0):
    z = np.load(SHIPPED_SAMPLE)
    return z[f"{part}_images"][start:start + n]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """One trained FashionNet saved every way the loader takes it (the .pt2 with the batch of 1 exported, as
    torch.export does by default, and with a dynamic batch)."""
    d = tmp_path_factory.mktemp("exported")
    net = torch_nets.train_fashion_net(0, 1)
    x = torch.zeros(1, 1, 28, 28)
    torch.save(net.state_dict(), d / "net.pth")
    torch.export.save(torch.export.export(net, (x,)), d / "net.pt2")
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (torch.zeros(2, 1, 28, 28),), dynamic_shapes=({0: batch},)),
                      d / "net_dynamic.pt2")
    torch.jit.save(torch.jit.trace(net, x), d / "net_traced.pt")
    torch.jit.save(torch.jit.script(net), d / "net_scripted.pt")
    return {"state_dict": d / "net.pth", "pt2": d / "net.pt2", "pt2_dynamic_batch": d / "net_dynamic.pt2",
            "torchscript_traced": d / "net_traced.pt", "torchscript_scripted": d / "net_scripted.pt"}


def _trainable(files, kind):
    from edgeq.loaders.pytorch import load_torch_model
    from edgeq.methods.torch.exported import trainable_module

    factory = "torch_nets:fashion_net" if kind == "state_dict" else None
    return trainable_module(load_torch_model(files[kind], factory), files[kind], HWC)


def _qat(module, seed: int = 3):
    """The stage's QAT (`stages/support/torch_qat._fine_tune`) on 256 sample training images, 1 epoch."""
    from edgeq.core.config import QatSpec
    from edgeq.methods.keras.fine_tune import training_split
    from edgeq.methods.torch import qat
    from edgeq.methods.torch.fine_tune import fine_tune

    z = np.load(SHIPPED_SAMPLE)
    opts = QatSpec(enabled=True, epochs=1, batch_size=32, validation_images=64, early_stop_patience=0,
                   learning_rate=1e-3, seed=seed)
    data = training_split(LabelledImages(z["train_images"][:320], z["train_labels"][:320], "sample"), opts)
    torch.manual_seed(seed)
    teacher, student = copy.deepcopy(module).eval(), copy.deepcopy(module).eval()
    folded = qat.fold_batch_norms(student)
    q = qat.quantize(student, PRE(_sample(64)))
    r = fine_tune(q, teacher, data, PRE, opts, log=lambda *_: None)
    return r, folded


@pytest.fixture(scope="module")
def fine_tuned(files) -> dict:
    return {k: _qat(_trainable(files, k)[0]) for k in ("state_dict", "pt2", "torchscript_traced")}


@pytest.mark.parametrize("kind", KINDS)
def test_each_input_is_rebuilt_computing_what_the_loaded_model_computes_on_a_batch(files, kind):
    from edgeq.loaders.pytorch import load_torch_model
    from edgeq.methods.torch.qat import nchw

    module, source = _trainable(files, kind)
    assert source["kind"] and "NNCF" in source["route"]
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in torch_nets.fashion_net().parameters())
    x = nchw(PRE(_sample(16)))
    loaded = load_torch_model(files["state_dict"], "torch_nets:fashion_net")
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), loaded(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS[1:])
def test_nncf_quantizes_a_rebuilt_program_exactly_as_the_factory_module(files, kind):
    from edgeq.methods.torch import qat

    x = qat.nchw(PRE(_sample(16, start=100)))
    out = {}
    for k in ("state_dict", kind):
        m = copy.deepcopy(_trainable(files, k)[0])
        assert qat.fold_batch_norms(m) == 7
        q = qat.quantize(m, PRE(_sample(64)))
        assert qat.quantizer_summary(q) == {"quantizers": 18, "weight_quantizers": 8, "bits": [8]}
        with torch.no_grad():
            out[k] = q.eval()(x).numpy()
    np.testing.assert_array_equal(out[kind], out["state_dict"])


@pytest.mark.parametrize("kind", ["pt2", "torchscript_traced"])
def test_qat_from_a_program_ends_at_the_weights_of_the_factory_route(files, fine_tuned, kind):
    """Same net, seed and images: the fine-tune's gradients reach the rebuilt program's weights and it ends
    where the state_dict + factory route ends (the same kernels run, in the same order)."""
    from edgeq.methods.torch.qat import nchw

    ref, r = fine_tuned["state_dict"][0], fine_tuned[kind][0]
    assert fine_tuned[kind][1] == fine_tuned["state_dict"][1] == 7
    assert r.steps == ref.steps > 0 and r.history["loss"] == ref.history["loss"]
    x = nchw(PRE(_sample(64, start=200)))
    with torch.no_grad():
        np.testing.assert_allclose(r.model(x).numpy(), ref.model(x).numpy(), atol=1e-5)
    w = next(v for n, v in r.model.named_parameters() if n.endswith("head.weight"))
    w0 = torch.load(files["state_dict"], weights_only=True)["head.weight"]
    assert not torch.equal(w.detach(), w0)  # the weights exported are the fine-tuned ones


@pytest.mark.parametrize("kind", ["pt2", "torchscript_traced"])
def test_qdq_onnx_of_a_program_runs_in_ort_as_the_nncf_model_computes(fine_tuned, kind, tmp_path):
    import onnxruntime as ort

    from edgeq.methods.torch.qat import export_qdq_onnx, nchw

    q = fine_tuned[kind][0].model
    notes = export_qdq_onnx(q, tmp_path / "qat.onnx", HWC, 17)
    assert notes["ort_kernels"]["integer_convs"] == 7 and notes["ort_kernels"]["float_convs"] == 0
    assert "BatchNormalization" not in notes["op_counts"]
    x = PRE(_sample(32, start=300))
    sess = ort.InferenceSession(str(tmp_path / "qat.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"input": nchw(x[i:i + 1]).numpy()})[0] for i in range(len(x))])
    with torch.no_grad():
        ref = q.eval()(nchw(x)).numpy()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


class _FixedBatch(torch.nn.Module):
    """A classifier whose forward pins the batch it was exported with (view(1, -1))."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, 2)
        self.head = torch.nn.Linear(4 * 13 * 13, 10)

    def forward(self, x):
        return self.head(self.conv(x).view(1, -1))


def test_a_program_pinned_to_batch_one_is_refused_saying_to_export_a_dynamic_batch(tmp_path):
    from edgeq.loaders.pytorch import load_torch_model
    from edgeq.methods.torch.exported import trainable_module

    torch.manual_seed(0)
    p = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(_FixedBatch().eval(), (torch.zeros(1, 1, 28, 28),)), p)
    with pytest.raises(ModelError) as e:
        trainable_module(load_torch_model(p), p, HWC)
    msg = str(e.value)
    assert str(p) in msg and "batch of 4" in msg and "dynamic_shapes" in msg and "Dim('batch')" in msg


class _Flatten(torch.nn.Module):
    """Conv -> BN -> ReLU -> reshape(x.size(0), -1) -> Linear: exported with a dynamic batch, its graph reads the
    batch with `aten.sym_size.int`, an operator with no torch function."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(1, 4, 3, 2), torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4 * 13 * 13, 10)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).reshape(x.size(0), -1))


def test_an_aten_op_without_a_torch_function_stays_and_is_recorded(tmp_path):
    from edgeq.loaders.pytorch import load_torch_model
    from edgeq.methods.torch import qat
    from edgeq.methods.torch.exported import trainable_module

    torch.manual_seed(0)
    p = tmp_path / "flatten.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(_Flatten().eval(), (torch.zeros(2, 1, 28, 28),),
                                          dynamic_shapes=({0: batch},)), p)
    m, source = trainable_module(load_torch_model(p), p, HWC)
    assert source["aten_ops_left"] == ["aten.sym_size.int"]
    assert qat.fold_batch_norms(m) == 1
    q = qat.quantize(m, PRE(_sample(64)))
    assert qat.quantizer_summary(q)["weight_quantizers"] == 2
    ops = qat.export_qdq_onnx(q, tmp_path / "q.onnx", HWC, 17)["op_counts"]
    assert ops["Conv"] == ops["Gemm"] == 1 and "BatchNormalization" not in ops


class _DataDependentLoop(torch.nn.Module):
    """A scripted loop whose trip count depends on the data: TorchScript -> torch.export cannot convert it."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(1, 4, 3, 2), torch.nn.Linear(4, 10)

    def forward(self, x):
        y = self.conv(x)
        out = [y.mean((2, 3))]
        for _ in range(int(y.sum().item() > 0)):
            out.append(y.mean((2, 3)))
        return self.head(out[-1])


def test_a_torchscript_file_torch_cannot_convert_is_refused_saying_what_to_give(tmp_path):
    from edgeq.loaders.pytorch import load_torch_model
    from edgeq.methods.torch.exported import trainable_module

    p = tmp_path / "loop.pt"
    torch.jit.save(torch.jit.script(_DataDependentLoop().eval()), p)
    with pytest.raises(ModelError) as e:
        trainable_module(load_torch_model(p), p, HWC)
    msg = str(e.value)
    assert str(p) in msg and "cannot convert this TorchScript file" in msg and "prim::Loop" in msg
    assert "model.factory" in msg and "torch.export.save(" in msg


@pytest.mark.parametrize("save", ["pt2", "torchscript_traced"])
def test_a_mobilenet_style_program_quantizes_and_exports_as_the_eager_net(save, tmp_path):
    """torch_nets.small_net (explicit F.pad, residual Adds, 25 Conv+BN): the rebuilt program folds the same batch
    norms, NNCF computes the same outputs and the QDQ ONNX has the same ops and ORT kernels as from the nn.Module."""
    from edgeq.loaders.pytorch import load_torch_model
    from edgeq.methods.torch import qat
    from edgeq.methods.torch.exported import trainable_module

    net, x0, hwc = torch_nets.small_net(), torch.zeros(1, 3, 32, 32), (32, 32, 3)
    p = tmp_path / f"net.{'pt2' if save == 'pt2' else 'pt'}"
    if save == "pt2":
        torch.export.save(torch.export.export(net, (x0,)), p)
    else:
        torch.jit.save(torch.jit.trace(net, x0), p)
    cal = np.random.default_rng(0).uniform(-1, 1, (64, 32, 32, 3)).astype(np.float32)
    x = qat.nchw(np.random.default_rng(1).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32))
    got = {}
    for kind, m in (("eager", copy.deepcopy(net)), (save, trainable_module(load_torch_model(p), p, hwc)[0])):
        assert qat.fold_batch_norms(m) == 25
        q = qat.quantize(m, cal)
        with torch.no_grad():
            out = q.eval()(x).numpy()
        n = qat.export_qdq_onnx(q, tmp_path / f"{kind}.onnx", hwc, 17)
        got[kind] = out, n["op_counts"], n["ort_kernels"]
    np.testing.assert_array_equal(got[save][0], got["eager"][0])
    assert got[save][1:] == got["eager"][1:]


@pytest.mark.parametrize("kind", ["pt2", "torchscript_traced"])
def test_simulated_int4_cells_of_a_program_say_to_give_the_state_dict(files, kind):
    """The comparison's simulated INT4 cells round nn.Conv2d/nn.Linear weights; a .pt2 or TorchScript input holds
    its convolutions as graph calls, and the cell says so (not that the model has no convolutions)."""
    from edgeq.loaders.pytorch import load_torch_model
    from edgeq.methods.torch import low_bit
    from edgeq.stages.support.torch_low_bit import _no_weight_modules

    m = load_torch_model(files[kind])
    assert not low_bit.weight_modules(m)
    why = _no_weight_modules(m)
    assert "torch.export program or TorchScript file" in why and "model.factory" in why
    assert _no_weight_modules(torch.nn.Sequential(torch.nn.Flatten())) == \
        "not available: the PyTorch model has no Conv2d/Linear weights"
