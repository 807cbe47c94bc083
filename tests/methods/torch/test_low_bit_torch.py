"""Simulated INT4 weights of a PyTorch model: NNCF's weight quantizers set to 4 bits really compute with weights on a
16-level grid (at most 15 values per output channel: narrow range, codes -7..7), activations float; naive
round-to-nearest puts every Conv2d/Linear weight channel on its max grid; a short fine-tune keeps the grid."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nncf")

import torch_nets  # noqa: E402
from edgeq.core.data import SHIPPED_SAMPLE, Preprocess  # noqa: E402

PRE = Preprocess((28, 28), 1)


@pytest.fixture(scope="module")
def sample():
    z = np.load(SHIPPED_SAMPLE)
    return z, PRE(z["calibration_images"][:32])


@pytest.fixture(scope="module")
def int4(sample):
    from edgeq.methods.torch import low_bit

    return low_bit.low_bit_qat_model(torch_nets.fashion_net(), sample[1], 4)


def test_4_bit_weight_quantizers_put_every_output_channel_on_at_most_16_values(int4, sample):
    from edgeq.methods.torch import low_bit, qat

    qmodel, info = int4
    grids = low_bit.weight_grids(qmodel, qat.nchw(sample[1][:1]))
    assert info["weight_quantizers"] == len(grids) == len(low_bit.weight_modules(torch_nets.fashion_net()))
    assert all(1 < distinct <= 15 for distinct, _ in grids)
    assert all(q.level_low == -7 and q.level_high == 7 for q in qat.quantizers(qmodel) if q.is_enabled_quantization())


def test_the_8_bit_quantizers_nncf_makes_are_finer_than_that(sample):
    """The control: the same model straight from nncf.quantize has channels with far more than 16 values."""
    from edgeq.methods.torch import low_bit, qat

    q8 = qat.quantize(torch_nets.fashion_net(), sample[1])
    assert max(d for d, _ in low_bit.weight_grids(q8, qat.nchw(sample[1][:1]))) > 16


def test_activation_quantizers_are_off_so_activations_stay_float(int4, sample):
    from edgeq.methods.torch import low_bit, qat

    qmodel, info = int4
    on = [q for q in qat.quantizers(qmodel) if q.is_enabled_quantization()]
    assert info["activation_quantizers_disabled"] > 0 and len(on) == info["weight_quantizers"]
    # it computes what a float model computes with the quantizers' weights: no activation is rounded anywhere
    x = qat.nchw(sample[1][:8])
    with torch.no_grad():
        y = qmodel(x)
        seen = low_bit._quantizer_inputs(qmodel, x)
        params = {id(p) for p in qmodel.parameters()}
        original = {q: w.clone() for q, w in seen.items() if id(w) in params}
        for q in original:
            seen[q].copy_(q(seen[q]))  # the weight on its 4-bit grid, then no quantizer at all
            q.disable_quantization()
        y_float = qmodel(x)
        for q, w in original.items():
            seen[q].copy_(w)
            q.enable_quantization()
    assert torch.allclose(y, y_float, atol=1e-5)


def test_naive_rtn_rounds_each_weight_channel_to_its_max_grid():
    from edgeq.methods.torch import low_bit

    net = torch_nets.fashion_net()
    q = low_bit.quantize_weights_rtn(net, 4)
    for (_, a), (_, b) in zip(low_bit.weight_modules(net), low_bit.weight_modules(q)):
        w, wq = a.weight.detach().reshape(len(a.weight), -1), b.weight.detach().reshape(len(b.weight), -1)
        step = w.abs().amax(1, keepdim=True) / 7
        assert torch.allclose(wq, torch.round(w / step) * step)
        assert max(len(torch.unique(r)) for r in wq) <= 15
    assert net.training is False and not torch.equal(q.head.weight, net.head.weight)


def test_a_short_fine_tune_keeps_the_4_bit_grid(sample):
    from edgeq.core.config import QatSpec
    from edgeq.core.data import LabelledImages
    from edgeq.methods.keras.fine_tune import training_split
    from edgeq.methods.torch import low_bit, qat
    from edgeq.methods.torch.distributed import TorchRole
    from edgeq.methods.torch.fine_tune import fine_tune

    z, cal = sample
    net = torch_nets.fashion_net()
    qmodel, _ = low_bit.low_bit_qat_model(net, cal, 4)
    opts = QatSpec(enabled=True, epochs=1, batch_size=16, validation_images=0, learning_rate=1e-3, seed=0)
    data = training_split(LabelledImages(z["train_images"][:64], z["train_labels"][:64], "sample"), opts)
    r = fine_tune(qmodel, net, data, PRE, opts, log=lambda m: None, role=TorchRole(0, 0, 1))
    assert r.steps == 4
    assert all(d <= 15 for d, _ in low_bit.weight_grids(r.model, qat.nchw(cal[:1])))
