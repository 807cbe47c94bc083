"""Time one epoch of QAT fine-tuning (tfmot) of a config's model on its training split.

    python benchmarks/qat_time.py [models/mobilenet_v2.yaml] [--train-images N] [--epochs E]

Prints the fine-tune wall time (a benchmark figure, not a test) and the INT8 QAT validation top-1.
By default one full epoch over the training split (Fashion-MNIST: train[:55000] minus the validation
images), batch size and learning rate from the config's stages.qat.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent.parent / "models" / "mobilenet_v2.yaml"
    ap.add_argument("config", nargs="?", default=str(default))
    ap.add_argument("--train-images", type=int, default=None, help="default: the whole training split")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args(argv)

    from edgeq.core.config import load_config
    from edgeq.core.errors import EdgeqError
    from edgeq.loaders.keras import load_keras_model
    from edgeq.run.inputs import load_splits, preprocess_of
    from edgeq.methods.keras.fine_tune import fine_tune_qat, training_split
    from edgeq.core.sysinfo import cpu_info

    try:
        cfg = load_config(args.config)
        pre = preprocess_of(cfg)
        splits = load_splits(cfg, pre)
        opts = cfg.stages.qat.model_copy(update={"train_images": args.train_images, "epochs": args.epochs,
                                                 "steps_per_epoch": None, "early_stop_patience": 0})
        data = training_split(splits.train, opts)
        model = load_keras_model(cfg.model.path, cfg.model.format)
        cal = pre(splits.calibration.images[:opts.calibration_images])
        t = time.perf_counter()
        r = fine_tune_qat(model, data, pre, cal, opts, log=lambda m: print(m, flush=True))
        total = time.perf_counter() - t
    except EdgeqError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"model": cfg.name, "train_images": len(data.train), "epochs": r.epochs_run,
                      "steps": r.steps, "batch_size": opts.batch_size, "fine_tune_seconds": r.seconds,
                      "fine_tune_minutes": round(r.seconds / 60, 2), "wrap_calibrate_fit_seconds": round(total, 1),
                      "cores": os.cpu_count(), "cpu": cpu_info()["model"],
                      "val_top1_before": r.val_top1_before,
                      "val_top1_after": r.val_top1_after, "fine_tune_kept": r.fine_tune_kept}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
