"""Why NNCF's QAT starting point was below PTQ: the range-initialised model of each variant against FP32.

    python benchmarks/qat_pytorch_range_init.py [--seeds 0 1 2]

Per seed s: FashionNet trained as in qat_pytorch_bar.py (torch seed s), batch norms folded, then `nncf.quantize`
on calibration images 0-255 (MIXED preset, per-tensor activations, no overflow fix: as edgeq.methods.torch.qat)
with four variants side by side: NNCF's default activation range estimator (mean over samples of per-sample
min/max) or min-max over all images, each with NNCF's fast bias correction or with bias correction disabled.
Printed: top-1 agreement with the FP32 model on calibration images 256-499 (not used for the range init) and on
the 3,000 training images. No evaluation (test) image is used.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()

    import nncf
    import torch
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, OverflowFix,
                                                       QuantizationParameters)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    import qat_pytorch_bar as bar  # also puts the repo and tests/ on sys.path
    from edgeq.core.data import SHIPPED_SAMPLE, Preprocess
    from edgeq.methods.torch import qat as tq

    z = np.load(SHIPPED_SAMPLE)
    pre = Preprocess((28, 28), 1)
    cal, sets = pre(z["calibration_images"][:256]), {"calibration 256-499": pre(z["calibration_images"][256:]),
                                                     "train": pre(z["train_images"])}

    def quantize(student, estimator, bias_correction: bool):
        x = tq.nchw(cal)
        kw = {"overflow_fix": OverflowFix.DISABLE, "activations_quantization_params": QuantizationParameters(
            per_channel=False), "disable_bias_correction": not bias_correction}
        if estimator is not None:
            kw["activations_range_estimator_params"] = estimator
        return nncf.quantize(student, nncf.Dataset([x[i:i + 32] for i in range(0, len(x), 32)]), subset_size=8,
                             preset=nncf.QuantizationPreset.MIXED,
                             advanced_parameters=AdvancedQuantizationParameters(**kw))

    def top(m, x):
        with torch.no_grad():
            return torch.cat([m(tq.nchw(x[i:i + 256])) for i in range(0, len(x), 256)]).argmax(1).numpy()

    variants = {"NNCF estimator + fast bias correction": (None, True),
                "NNCF estimator, no bias correction": (None, False),
                "min-max + fast bias correction": (RangeEstimatorParametersSet.MINMAX, True),
                "min-max, no bias correction": (RangeEstimatorParametersSet.MINMAX, False)}
    for seed in a.seeds:
        net = bar.train(seed)
        ref = {k: top(net, x) for k, x in sets.items()}
        for name, (est, bc) in variants.items():
            torch.manual_seed(seed)
            student = copy.deepcopy(net).eval()
            tq.fold_batch_norms(student)
            q = quantize(student, est, bc)
            agree = {k: f"{int((top(q, x) == ref[k]).sum())} of {len(x)}" for k, x in sets.items()}
            print(json.dumps({"seed": seed, "variant": name, "agreement_with_fp32": agree}), flush=True)


if __name__ == "__main__":
    main()
