"""Everything a run can check without converting, before it writes anything; `edgeq validate` is this."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.core.artifacts import size_of
from edgeq.core.config import RunConfig, check_consistency
from edgeq.core.data import Preprocess, Splits
from edgeq.core.errors import ConfigError
from edgeq.run.inputs import check_classes, load_splits, preprocess_of
from edgeq.stages.registry import KERAS_ONLY_STAGES, STAGES


def parse_stages(text: str) -> set[str]:
    """`--stages a,b` -> {"a", "b"}; an unknown or empty name is an error listing the stages."""
    names = [n.strip() for n in text.split(",")]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise ConfigError(f"--stages: unknown stage {', '.join(repr(n) for n in unknown)}; choose from "
                          f"{', '.join(STAGES)} (comma-separated), or disable stages in the config")
    return set(names)


def planned_stages(cfg: RunConfig, only_stages: set[str] | None = None) -> list[str]:
    """The stages a run will execute, in order: enabled, selected, and applicable to the input model."""
    from edgeq.core.formats import runs_from_onnx

    onnx = runs_from_onnx(cfg.model.format)
    return [n for n in STAGES if getattr(cfg.stages, n).enabled and (only_stages is None or n in only_stages)
            and not (onnx and n in KERAS_ONLY_STAGES)]


# artifacts each stage writes (for the free-space estimate)
_STAGE_ARTIFACTS = {"tflite_ptq": 2, "litert_quant": 3, "onnx_ptq": 3, "onnx_fallback": 1, "qat": 2,
                    "comparison": 1, "mixed_precision": 1}


def check_output_dir(run_dir: Path, need_bytes: int) -> None:
    """The run directory can be created and written, with room for the planned artifacts (nothing is left)."""
    import tempfile

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: the run directory (--out / output.dir) is an existing file; "
                          "give a directory path")
    base = run_dir
    while not base.exists():
        if base.is_symlink():
            raise ConfigError(f"{base}: broken symlink in the run directory's path; fix it or choose another --out")
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"{run_dir}: cannot create the run directory because {base} is a file; "
                          "choose another --out")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".edgeq-write-test-", dir=base))
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot write the run directory there ({e.strerror or e}); "
                          "choose a writable --out") from None
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        raise ConfigError(f"{run_dir}: {free / 1e6:.0f} MB free on its disk but about {need_bytes / 1e6:.0f} MB "
                          "are needed (FP32 model size x planned artifacts); free space or choose another --out")


@dataclass
class Preflight:
    """What a run checked before writing anything; `edgeq validate` stops here."""

    run_dir: Path
    pre: Preprocess
    splits: Splits
    stages: list[str]
    model: Any = None  # the loaded Keras model (the nn.Module for PyTorch input, None for ONNX input)


def preflight(cfg: RunConfig, out: Path | None = None, only_stages: set[str] | None = None) -> Preflight:
    """Every check a run can make without converting: output dir, targets, model, data, counts. Writes nothing."""
    where = str(cfg.source or "config")
    check_consistency(cfg, where)
    stages = planned_stages(cfg, only_stages)
    run_dir = cfg.run_dir(out)
    m = cfg.model
    if not m.path.exists():
        raise ConfigError(f"{m.path}: model file not found (model.path in {where}); fix the path")
    n_artifacts = 1 + sum(_STAGE_ARTIFACTS[s] for s in stages)
    check_output_dir(run_dir, size_of(m.path) * n_artifacts)
    if cfg.targets:  # a wrong inventory or device name fails now, not after the quantisation
        from edgeq.targets.fleet import checked_inventory

        checked_inventory(cfg)
    model = None
    if m.format == "pytorch":
        from edgeq.loaders.pytorch import check_forward, load_torch_model

        model = load_torch_model(m.path, m.factory, m.factory_base)
        check_forward(model, tuple(m.input_shape), m.num_classes, m.path)
    elif m.format == "onnx":
        from edgeq.loaders.onnx import check_onnx_outputs, read_onnx_input

        read_onnx_input(m.path, tuple(m.input_shape))
        check_onnx_outputs(m.path, m.num_classes)
    else:
        from edgeq.loaders.keras import check_input_shape, check_num_classes, load_keras_model

        model = load_keras_model(m.path, m.format, m.trust_lambda_layers)
        check_input_shape(model, m.input_shape, str(m.path))
        check_num_classes(model, m.num_classes, str(m.path))
    pre = preprocess_of(cfg)
    splits = load_splits(cfg, pre)
    check_classes(cfg, splits)
    if "qat" in stages:
        from edgeq.methods.keras.fine_tune import training_split

        training_split(splits.train, cfg.stages.qat)
    return Preflight(run_dir, pre, splits, stages, model)
