"""The QAT workers other than the chief / rank 0 (`edgeq run` under tf.distribute's TF_CONFIG or torchrun): the
same fine-tune in a scratch run directory that is deleted, so that only the chief writes the run."""
from __future__ import annotations

from pathlib import Path


def run_keras_qat_worker(cfg, out: Path | None, role) -> int:
    """A non-chief worker of a multi-worker QAT: the same fine-tune as the chief's (their collectives pair up),
    in a scratch run directory that is deleted; only the chief writes artifacts and reports."""
    from edgeq.methods.keras import distribute
    from edgeq.run.pipeline import run_pipeline
    from edgeq.stages import registry

    dist = cfg.stages.qat.distribution
    if dist.checkpoint_dir is None:
        dist.checkpoint_dir = cfg.run_dir(out) / "qat_backup"  # the chief's default: BackupAndRestore needs it shared
    for name in registry.names():  # only the fine-tune runs here
        getattr(cfg.stages, name).enabled = name == "qat"
    cfg.evaluate.enabled = cfg.benchmark.enabled = False
    cfg.targets = []
    with distribute.scratch_run_dir(role) as scratch:
        run_pipeline(cfg, scratch)
    print(f"edgeq: {role.name}: QAT fine-tune done; the chief writes the artifacts and the report")
    return 0


def run_torch_qat_worker(cfg, out: Path | None, role) -> int:
    """A torchrun worker other than rank 0: the same fine-tune (DistributedDataParallel pairs it with rank 0's),
    in a scratch run directory that is deleted; rank 0 alone writes the run."""
    import shutil
    import tempfile

    from edgeq.run.pipeline import run_pipeline

    dist = cfg.stages.qat.distribution
    if dist.checkpoint_dir is None:
        dist.checkpoint_dir = cfg.run_dir(out) / "qat_backup"  # rank 0's default: resuming reads it on every rank
    for name in ("tflite_ptq", "litert_quant", "onnx_ptq", "onnx_fallback", "comparison"):
        getattr(cfg.stages, name).enabled = False
    cfg.evaluate.enabled = cfg.benchmark.enabled = False
    cfg.targets = []
    scratch = Path(tempfile.mkdtemp(prefix=f"edgeq-rank{role.rank}-"))
    try:
        run_pipeline(cfg, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"edgeq: {role.name}: QAT fine-tune done; rank 0 writes the artifacts and the report")
    return 0
