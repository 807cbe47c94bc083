"""Would more calibration images help? The default MobileNetV2's full-integer INT8 TFLite (TFLite converter) made
from the first 16 / 32 / 64 / 128 / 300 calibration images, each evaluated on the whole evaluation set and paired with
the largest size's model and with FP32 (`stages.tflite_ptq.size_study`).

    python benchmarks/calibration_size.py [--config models/mobilenet_v2.yaml] [--sizes 16,32,64,128,300] [--out runs/calsize]

Runs `edgeq run --stages tflite_ptq --no-benchmark` on a copy of the config with the study switched on and prints
the curve (report.json `calibration_size_study`). Every figure is measured in that run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "models" / "mobilenet_v2.yaml")
    ap.add_argument("--sizes", default="16,32,64,128,300")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "calsize")
    args = ap.parse_args()
    cfg = yaml.safe_load(args.config.read_text())
    cfg["model"]["path"] = str((args.config.parent / cfg["model"]["path"]).resolve())
    cfg.setdefault("stages", {}).setdefault("tflite_ptq", {})["size_study"] = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / args.config.name
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd = [sys.executable, "-m", "edgeq", "run", str(config), "--out", str(args.out), "--stages", "tflite_ptq",
               "--no-benchmark"]
        p = subprocess.run(cmd, cwd=REPO, env={**os.environ, "EDGEQ_PROGRESS": "plain", "CUDA_VISIBLE_DEVICES": ""})
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed")
    rep = json.loads((args.out / "report.json").read_text())
    d = rep["calibration_size_study"]
    print(f"\n{rep['model']}: {rep['dataset']['eval']}; calibration from {rep['dataset']['calibration']}\n")
    print(d["markdown"])
    print(f"\nthe {rep['dataset']['n_calibration']}-image split's first "
          f"{cfg['stages']['tflite_ptq']['representative_images']} give the run's int8_tflite_ptq: "
          f"{'identical predictions' if d.get('matches_int8_tflite_ptq') else 'not compared or different'}")


if __name__ == "__main__":
    main()
