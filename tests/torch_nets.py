"""PyTorch classifiers written here (random seeded weights, nothing downloaded) with the quirks real exports
have: depthwise convs, ReLU6 (exported as Clip), explicit F.pad (pads computed in constant subgraphs by the
exporter), a Linear head (Gemm), NCHW input. Also the `factory` module of the state_dict tests."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 0, groups=mid, bias=False),
                                       nn.BatchNorm2d(mid), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.depthwise(F.pad(self.expand(x), (1, 1, 1, 1)))
        y = self.project(y)
        return x + y if self.residual else y


class MobileNetLike(nn.Module):
    """MobileNetV2-style: stem, inverted residual stages (each: one strided block + `repeats` residual ones)."""

    def __init__(self, classes: int = 10, widths=(16, 24, 32, 64), strides=(2, 2, 2, 1), repeats: int = 1,
                 expand: int = 4, stem: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6())
        layers, c = [], stem
        for w, s in zip(widths, strides):
            layers.append(InvertedResidual(c, w, s, expand))
            layers += [InvertedResidual(w, w, 1, expand) for _ in range(repeats)]
            c = w
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    """Seeded weights and batch-norm statistics (so BN is not an identity), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model.eval()


def small_net(classes: int = 3, seed: int = 0) -> nn.Module:
    """The test network: 32x32 input. `factory` for the state_dict tests (model.factory: torch_nets:small_net)."""
    torch.manual_seed(seed)
    return _seeded(MobileNetLike(classes), seed)


def mobilenet_v2_like(classes: int = 1000, seed: int = 0) -> nn.Module:
    """An ImageNet-sized (224x224) MobileNetV2-width network, random weights: conversion time and size only."""
    torch.manual_seed(seed)
    net = MobileNetLike(classes, widths=(16, 24, 32, 64, 96, 160, 320), strides=(1, 2, 2, 2, 1, 2, 1), repeats=2,
                        expand=6, stem=32)
    return _seeded(net, seed)


class FashionNet(nn.Module):
    """A MobileNet-style depthwise classifier for 28x28 grey Fashion-MNIST: strided stem, an inverted residual
    block that downsamples and one with a residual Add, global average pool, Linear head. `bn=False`: the same
    net without batch norms (convolution biases instead), for the distributed-training tests."""

    def __init__(self, classes: int = 10, bn: bool = True):
        super().__init__()

        def norm(c):
            return nn.BatchNorm2d(c) if bn else nn.Identity()

        def block(cin, cout, stride, expand=2):
            mid = cin * expand
            return nn.Sequential(nn.Conv2d(cin, mid, 1, bias=not bn), norm(mid), nn.ReLU6(),
                                 nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=not bn), norm(mid), nn.ReLU6(),
                                 nn.Conv2d(mid, cout, 1, bias=not bn), norm(cout))

        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=not bn), norm(16), nn.ReLU6())
        self.down = block(16, 24, 2)
        self.same = block(24, 24, 1)
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        x = self.down(self.stem(x))
        x = x + self.same(x)
        return self.head(x.mean((2, 3)))


def fashion_net() -> nn.Module:
    """`factory` of the PyTorch QAT tests (model.factory: torch_nets:fashion_net)."""
    torch.manual_seed(0)
    return FashionNet().eval()


def fashion_net_plain() -> nn.Module:
    torch.manual_seed(0)
    return FashionNet(bn=False).eval()


def train_fashion_net(seed: int, epochs: int) -> nn.Module:
    """FashionNet (initialised under torch seed `seed`) fitted for `epochs` epochs on the shipped sample's 3,000
    training images: Adam 3e-3, batches of 64 shuffled by a generator seeded `seed`; eval mode. Seed 0 starts from
    `fashion_net()`'s weights."""
    import numpy as np

    from edgeq.core.data import SHIPPED_SAMPLE

    z = np.load(SHIPPED_SAMPLE)
    x = torch.from_numpy(((z["train_images"].astype(np.float32) - 127.5) / 127.5)[:, None])
    y = torch.from_numpy(z["train_labels"].astype(np.int64))
    torch.manual_seed(seed)
    net = FashionNet().train()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def fashion_project(root, name: str, seed: int, epochs: int, data: dict, stages: dict):
    """A folder `edgeq run` takes: FashionNet fitted here (`train_fashion_net(seed, epochs)`) saved as net.pth, a
    factory module naming `fashion_net`, and run.yaml (pytorch state_dict + factory, 28x28x1, 10 classes, the
    shipped Fashion-MNIST sample with these data settings, these stages, no benchmark). Returns run.yaml's path."""
    from pathlib import Path

    import yaml

    root, tests = Path(root), Path(__file__).resolve().parent
    torch.save(train_fashion_net(seed, epochs).state_dict(), root / "net.pth")
    (root / "factory.py").write_text(f"import sys\nsys.path.insert(0, {str(tests)!r})\nfrom torch_nets import fashion_net\n")
    cfg = {"name": name,
           "model": {"path": "net.pth", "format": "pytorch", "factory": "factory:fashion_net",
                     "input_shape": [28, 28, 1], "num_classes": 10},
           "data": {"kind": "fashion_mnist", "prefer_full_dataset": False, **data},
           "stages": stages, "benchmark": {"enabled": False}}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return root / "run.yaml"
