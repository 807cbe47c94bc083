"""The INT4 row of the PTQ-vs-QAT comparison for a PyTorch model, measured once.

    python benchmarks/int4_pytorch.py [--seed 0] [--work /tmp/int4_pt]

FashionNet trained and run through `edgeq run` exactly as benchmarks/qat_pytorch_bar.py sets it up, but with
comparison bits [8, 4]. Printed, on the sample's 1,000 evaluation images: each INT4 cell's top-1 with its Wilson
interval and how it was made (naive and QAT simulated in PyTorch, advanced the real W4A8 TFLite where made), its
paired difference from FP32, and QAT minus the best PTQ with its paired interval and exact McNemar p.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]


def main() -> None:
    import torch
    import yaml

    import torch_nets
    from qat_pytorch_bar import config

    from edgeq.cli import main as edgeq

    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/int4_pt"))
    a = ap.parse_args()
    root = a.work / f"seed{a.seed}"
    root.mkdir(parents=True, exist_ok=True)
    torch.save(torch_nets.train_fashion_net(a.seed, 3).state_dict(), root / "net.pth")
    (root / "factory.py").write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\n"
                                     "from torch_nets import fashion_net\n")
    cfg = config(a.seed)
    cfg["stages"]["comparison"]["bits"] = [8, 4]
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert edgeq(["run", str(root / "run.yaml"), "--out", str(root / "out")]) == 0
    run = next(p.parent for p in (root / "out").rglob("report.json"))
    c = json.loads((run / "report.json").read_text())["comparison"]
    out = {"run": str(run), "fp32_top1": c["rows"][0]["top1"], "fp32": c["rows"][0].get("artifact"), "int4": {}}
    for r in c["rows"]:
        if r["bits"] == 4 and r["format"] == "tflite":
            out["int4"][r["method"]] = {k: r.get(k) for k in ("top1", "n", "ci95", "simulated", "artifact", "vs_fp32",
                                                               "how", "reason")}
    out["tests"] = [t for t in c.get("low_bit_tests", []) if t["bits"] == 4]
    out["verdict_lines"] = c["verdict_lines"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
