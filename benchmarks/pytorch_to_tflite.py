"""Time a PyTorch ImageNet-sized model (224x224, MobileNetV2 widths, random seeded weights) through `edgeq run`:
PyTorch -> ONNX export, ONNX -> TensorFlow (onnx2tf), FP32 + full-integer INT8 TFLite, INT8 ONNX.

    python benchmarks/pytorch_to_tflite.py [--images 200] [--keep DIR] [--onnx-ptq]

Prints the wall time of the whole run (the issue's bar: <= 5 min on a 2-core machine), each artifact's own
seconds, the FP32 .tflite's agreement with the ONNX, and whether the INT8 model is fully integer. The model
(tests/torch_nets.py: mobilenet_v2_like) is written here; nothing is downloaded. Random weights: the
accuracy figures of this run mean nothing, the conversion's time and fidelity do.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="images written for calibration + evaluation")
    ap.add_argument("--keep", type=Path, default=None, help="project directory to keep (default: a temp dir)")
    ap.add_argument("--onnx-ptq", action="store_true", help="also run the ONNX Runtime PTQ stage")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO / "tests"))
    import torch
    import yaml
    from conftest import write_image_folder
    from torch_nets import mobilenet_v2_like

    from edgeq.core.sysinfo import cpu_info

    root = args.keep or Path(tempfile.mkdtemp(prefix="edgeq-pt2tflite-"))
    root.mkdir(parents=True, exist_ok=True)
    net = mobilenet_v2_like(classes=10)
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 224, 224)), str(root / "mnv2.pt"))
    write_image_folder(root / "images", args.images, classes=10, size=224)
    half = args.images // 2
    cfg = {"name": "mnv2_torch", "model": {"path": "mnv2.pt", "input_shape": [224, 224, 3], "num_classes": 10},
           "data": {"kind": "image_folder", "path": "images", "calibration_size": half},
           "stages": {"tflite_ptq": {"representative_images": min(100, half)},
                      "onnx_ptq": {"enabled": args.onnx_ptq, "calibration_images": min(100, half)}},
           "benchmark": {"enabled": False}}
    (root / "mnv2.yaml").write_text(yaml.safe_dump(cfg))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgeq", "run", str(root / "mnv2.yaml"), "--out", str(root / "run")],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-2000:], sep="\n", file=sys.stderr)
        return 1
    rep = json.loads((root / "run" / "report.json").read_text())
    arts = {a["name"]: a for a in rep["artifacts"]}
    print(json.dumps({
        "wall_seconds": round(wall, 1), "bar_seconds": 300, "within_bar": wall <= 300,
        "artifact_seconds": {n: a["notes"].get("seconds") for n, a in arts.items()},
        "translate_seconds": rep["tflite_ptq"]["translation"]["translate_seconds"],
        "fp32_tflite_vs_onnx": rep["tflite_ptq"]["vs_onnx"],
        "int8_fully_integer": arts["int8_tflite_ptq"]["notes"]["float_ops"] == [],
        "int8_vs_fp32_size": round(arts["int8_tflite_ptq"]["size_bytes"] / arts["fp32_tflite"]["size_bytes"], 3),
        "params_millions": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
        "images": args.images, "cpu": cpu_info()["model"], "cores": os.cpu_count(),
        "load_average_after": os.getloadavg(), "project": str(root)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
