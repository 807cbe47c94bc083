"""Hostile-input helpers: a tiny project (model, images, config) and the CLI called in-process.

`edgeq.cli.main` is called directly (TensorFlow is imported once per session); only signal delivery to a
real process needs a subprocess.
"""
from __future__ import annotations

import copy
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import write_image_folder

DELETE = object()


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is DELETE:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


@dataclass
class Proj:
    root: Path  # a fresh directory per test
    shared: Path  # the session's tiny project: tiny.keras, images/ (120 images, 3 classes)

    @property
    def model(self) -> Path:
        return self.shared / "tiny.keras"

    @property
    def images(self) -> Path:
        return self.shared / "images"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def base(self) -> dict:
        return {"name": "tiny",
                "model": {"path": str(self.model), "input_shape": [16, 16, 3], "num_classes": 3},
                "data": {"kind": "image_folder", "path": str(self.images), "calibration_size": 40},
                "stages": {"tflite_ptq": {"representative_images": 40}},
                "benchmark": {"runs": 5, "warmup": 1}}

    def config(self, over: dict | None = None, name: str = "c.yaml") -> Path:
        f = self.root / name
        f.write_text(yaml.safe_dump(merge(self.base(), over or {}), allow_unicode=True))
        return f

    def raw(self, data: bytes | str, name: str = "c.yaml") -> Path:
        f = self.root / name
        f.write_bytes(data.encode() if isinstance(data, str) else data)
        return f

    def folder(self, name: str, n: int = 60, classes: int = 3) -> Path:
        """Another labelled folder; its images differ from the project's (calibration and eval never overlap)."""
        return write_image_folder(self.root / name, n, classes, seed=1)

    def npz(self, name: str = "d.npz", **arrays) -> Path:
        f = self.root / name
        rng = np.random.default_rng(0)
        arrays.setdefault("images", rng.integers(0, 255, (60, 16, 16, 3)).astype(np.uint8))
        arrays.setdefault("labels", np.arange(60) % 3)
        np.savez(f, **{k: v for k, v in arrays.items() if v is not DELETE})
        return f


@pytest.fixture
def proj(tiny_project, tmp_path) -> Proj:
    return Proj(tmp_path, tiny_project)


def cli(capsys, *args) -> tuple[int, str, str]:
    from edgeq.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, *expect: str, status: int = 2) -> str:
    """Exit status, exactly one `edgeq: error:` line holding every expected fragment, no traceback."""
    assert code == status, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("edgeq: error:")]
    assert len(lines) == 1, err
    for e in expect:
        assert e.lower() in lines[0].lower(), f"{e!r} not in {lines[0]!r}"
    return lines[0]


def assert_nothing_claims_success(out: Path) -> None:
    for name in ("report.json", "report.md", "report.html"):
        assert not (out / name).exists(), f"{out / name} written by a failed run"
    assert not list(out.rglob("*.part*")) if out.exists() else True


# ------------------------------------------------------------------ tiny ONNX models built on the spot
def onnx_model(path: Path, in_dims=(1, 3, 16, 16), classes: int = 3, outputs: int = 1) -> Path:
    """GlobalAveragePool -> Flatten -> Gemm -> Softmax over an NCHW input (dims may hold None for dynamic)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = in_dims[1] if len(in_dims) == 4 and in_dims[1] else 3
    w = numpy_helper.from_array(np.ones((c, classes), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(classes, np.float32), "b")
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"]), helper.make_node("Softmax", ["logits"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])]
    if outputs == 2:
        outs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes]))
    if len(in_dims) != 4:  # rank-3 input: one ReduceMean instead of the image head
        nodes = [helper.make_node("ReduceMean", ["x"], ["y"], keepdims=0)]
        outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_dims))],
                          outs, [w, b] if len(in_dims) == 4 else [])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def png_bomb(path: Path, w: int = 40000, h: int = 40000) -> Path:
    """A PNG whose header claims w x h pixels (PIL's decompression-bomb check fires on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path
