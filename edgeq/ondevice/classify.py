#!/usr/bin/env python3
"""classify.py of an edgeq bundle: the bundle's model on images, on the device, with only numpy, one
interpreter (ai-edge-litert / tflite-runtime / onnxruntime / openvino) and the agent.py beside it. Standalone: copied
into every bundle, it imports nothing from edgeq.

    python3 classify.py images.npy            # uint8 pixels (N, H, W[, C]) at the model's size
    python3 classify.py a.png b.jpg           # image files (needs Pillow; resized bilinear like edgeq)
    python3 classify.py --check               # the bundled sample images against the outputs edgeq recorded
Options: --top K (default 3), --threads N, --delegate libedgetpu.so.1 (Edge TPU build of the model).
Prints one JSON object: per image the top-K labels with scores, and the runtime used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _load(name: str):
    with open(os.path.join(HERE, name)) as f:
        return json.load(f)


def pixels(paths, pre: dict):
    """uint8 (N, H, W, C) at the model's size, from a .npy or image files; grey <-> RGB as edgeq does."""
    import numpy as np

    h, w, c = pre["input_shape"]
    if len(paths) == 1 and paths[0].endswith(".npy"):
        x = np.load(paths[0], allow_pickle=False)
    else:
        try:
            from PIL import Image
        except ImportError:
            raise SystemExit("classify.py: reading image files needs Pillow (pip install pillow); or pass a .npy "
                             f"of uint8 pixels shaped (N, {h}, {w}, {c})") from None
        x = np.stack([np.asarray(Image.open(p).convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR))
                      for p in paths])
    if x.dtype != np.uint8:
        raise SystemExit(f"classify.py: pixels must be uint8, got {x.dtype}")
    x = x[..., None] if x.ndim == 3 else x
    if x.shape[1:3] != (h, w):
        raise SystemExit(f"classify.py: images are {x.shape[1]}x{x.shape[2]}, the model takes {h}x{w}; pass image "
                         "files (resized here) or resize them first")
    if x.shape[3] == 1 and c == 3:
        x = np.repeat(x, 3, axis=3)
    elif x.shape[3] == 3 and c == 1:
        x = np.clip(np.rint(x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)), 0, 255)[..., None]
    return x


def normalise(x, pre: dict):
    import numpy as np

    return (x.astype(np.float32) - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)


def outputs(model: str, x, threads, delegate):
    import agent

    args = agent.build_parser().parse_args(["--model", model])  # the agent's defaults (an IR: the precision it names)
    args.threads, args.delegate = threads, delegate
    runner = agent.open_runner(args)
    return agent.run_outputs(runner, x), runner.runtime


def main(argv=None) -> int:
    import numpy as np

    ap = argparse.ArgumentParser(description="classify images with this bundle's model")
    ap.add_argument("images", nargs="*")
    ap.add_argument("--check", action="store_true", help="run the bundled samples and compare with edgeq's outputs")
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--delegate")
    args = ap.parse_args(argv)
    pre = _load("preprocess.json")
    info = _load("bundle.json")
    labels = [ln.rstrip("\n") for ln in open(os.path.join(HERE, "labels.txt"))]
    if args.check:
        x = np.load(os.path.join(HERE, "sample.npy"), allow_pickle=False)
    elif args.images:
        x = pixels(args.images, pre)
    else:
        ap.error("give images (.npy or files), or --check")
    y, runtime = outputs(os.path.join(HERE, info["model_file"]), normalise(x, pre), args.threads, args.delegate)
    res = {"model": info["model_file"], "artifact": info["artifact"], "runtime": runtime,
           "predictions": [[{"label": labels[i] if i < len(labels) else str(i), "index": int(i), "score": float(s[i])}
                            for i in np.argsort(-s)[:args.top]] for s in y]}
    if args.check:
        ref = np.load(os.path.join(HERE, "sample_outputs.npy"), allow_pickle=False)
        agree = float(np.mean(y.argmax(1) == ref.argmax(1)))
        res["check"] = {"images": int(len(y)), "top1_agreement_with_edgeq": agree,
                        "max_abs_diff": float(np.abs(y - ref).max()), "ok": agree == 1.0}
    print(json.dumps(res))
    return 0 if not args.check or res["check"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
