"""A model and data in memory -> judged INT8 artifacts, from Python (run by tests/test_docs.py)."""
import sys

import numpy as np

import edgeq
from edgeq.core.tfcompat import keras

out = sys.argv[1] if len(sys.argv) > 1 else "runs/in_memory"
model = keras().models.load_model(edgeq.example("mobilenet_v2").with_suffix(".keras"), compile=False)
with np.load(edgeq.example("mobilenet_v2").parent / "fashion_mnist_sample.npz") as z:  # uint8 28x28 grey + labels
    calibration = z["calibration_images"][:200], z["calibration_labels"][:200]
    evaluation = z["eval_images"][:400], z["eval_labels"][:400]

run = edgeq.quantize(
    model,
    calibration=calibration,                     # numpy arrays, a tf.data.Dataset or a torch DataLoader
    evaluation=evaluation,
    mean=[127.5], std=[127.5],                   # input = (pixel - mean) / std
    stages=["tflite_ptq"], max_accuracy_drop=1.0, out=out,
    benchmark={"rounds": 5, "runs": 50},
)
int8 = run.artifacts["int8_tflite_ptq"]
print(f"INT8 top-1 {int8.top1:.3f} {int8.top1_ci95} on n={int8.n}; drop {int8.drop_pt:+.2f} pt "
      f"{int8.drop_ci95_pt}, McNemar p = {int8.mcnemar_p:.2g}")
print("ship on this host:", run.ship["host"])
