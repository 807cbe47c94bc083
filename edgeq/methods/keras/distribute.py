"""The QAT fine-tune under tf.distribute: which worker this process is, the strategy, each worker's share of
the training batches, epoch checkpoints (BackupAndRestore), and tfmot's range quantisers made to see the
global batch on every replica.

Gradients are exchanged by TensorFlow (Keras `fit` under the strategy all-reduces them). The one exchange
edgeq adds, each range quantiser's min/max, is a TensorFlow all-reduce as well.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeq.core.config import DistributionSpec
from edgeq.core.errors import ConfigError, EdgeqError
from edgeq.core.tfcompat import keras, tf

_STRATEGY: dict = {}  # the one strategy of this process (MultiWorkerMirroredStrategy can be made only once)


@dataclass(frozen=True)
class WorkerRole:
    strategy: str  # none | mirrored | multi_worker
    task_type: str | None  # chief | worker (multi_worker only)
    task_index: int
    workers: int  # processes taking part
    is_chief: bool  # writes the artifacts (task type chief, or worker 0 when the cluster has no chief)

    @property
    def name(self) -> str:
        return f"{self.task_type}:{self.task_index}" if self.task_type else "single process"


def tf_config(spec: DistributionSpec) -> dict | None:
    """The cluster of a multi-worker run: the config's tf_config, else the TF_CONFIG environment variable."""
    if spec.strategy != "multi_worker":
        return None
    if spec.tf_config is not None:
        return spec.tf_config
    env = os.environ.get("TF_CONFIG", "").strip()
    return json.loads(env) if env else None


def worker_role(spec: DistributionSpec) -> WorkerRole:
    cfg = tf_config(spec)
    if cfg is None:
        return WorkerRole(spec.strategy, None, 0, 1, True)
    cluster, task = cfg["cluster"], cfg["task"]
    chief = (task["type"] == "chief") or ("chief" not in cluster and task["type"] == "worker" and task["index"] == 0)
    return WorkerRole(spec.strategy, task["type"], int(task["index"]), sum(len(a) for a in cluster.values()), chief)


def start(spec: DistributionSpec):
    """This process's strategy (None for `none`), made once. A multi-worker strategy must exist before any other
    TensorFlow op runs in the process: `edgeq run` calls this first thing."""
    if spec.strategy == "none":
        return None
    if spec.strategy in _STRATEGY:
        return _STRATEGY[spec.strategy]

    t = tf()
    if spec.strategy == "mirrored":
        s = t.distribute.MirroredStrategy()
    else:
        cfg = tf_config(spec)
        os.environ["TF_CONFIG"] = json.dumps(cfg)  # TFConfigClusterResolver and Keras read it from here
        comm = t.distribute.experimental.CommunicationOptions(
            implementation=t.distribute.experimental.CommunicationImplementation.AUTO)
        try:
            s = t.distribute.MultiWorkerMirroredStrategy(communication_options=comm)
        except RuntimeError as e:
            if "program startup" not in str(e):
                raise
            raise EdgeqError("stages.qat.distribution: a multi_worker strategy must be made before TensorFlow runs "
                             "anything in the process; run the fine-tune through `edgeq run` (it makes the "
                             "strategy first) or call edgeq.methods.keras.distribute.start(spec) at the start of "
                             "your program") from None
    _STRATEGY[spec.strategy] = s
    return s


STRATEGY_NAMES = {"mirrored": "MirroredStrategy", "multi_worker": "MultiWorkerMirroredStrategy"}


def replicas(strategy) -> int:
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def check_batch(batch_size: int, strategy, spec: DistributionSpec) -> None:
    n = replicas(strategy)
    if batch_size % n:
        raise ConfigError(f"stages.qat.batch_size {batch_size} does not split evenly across the {n} replicas "
                          f"of the {STRATEGY_NAMES[spec.strategy]}; make it a multiple of {n}")


def dataset(strategy, part_batches, batch_size: int):
    """The distributed training set: `part_batches(index, count)` yields this input pipeline's rows of each
    global batch of `batch_size` (already preprocessed, with their targets); each pipeline's rows are cut into
    its replicas' batches, so every global batch is the one a single process would train on."""
    import itertools

    t = tf()

    def per_pipeline(ctx):
        per_replica = ctx.get_per_replica_batch_size(batch_size)
        rows = part_batches(ctx.input_pipeline_id, ctx.num_input_pipelines)

        def replica_batches():
            for x, y in rows:
                for s in range(0, len(x), per_replica):
                    yield x[s:s + per_replica], y[s:s + per_replica]

        gen = replica_batches()
        first = next(gen)
        sig = tuple(t.TensorSpec((None, *a.shape[1:]), t.as_dtype(a.dtype)) for a in first)
        ds = t.data.Dataset.from_generator(lambda: itertools.chain([first], gen), output_signature=sig)
        opts = t.data.Options()
        # the generator already yields only this pipeline's rows: no auto-sharding on top of that
        opts.experimental_distribute.auto_shard_policy = t.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(opts).prefetch(2)

    return strategy.distribute_datasets_from_function(per_pipeline)


# ------------------------------------------------------------------ epoch checkpoints
def resumed_epoch(backup_dir: Path) -> int:
    """The epoch a BackupAndRestore fit in `backup_dir` resumes at (0: no checkpoint, a fresh start)."""
    t = tf()
    ckpt = t.train.latest_checkpoint(str(Path(backup_dir) / "chief"))
    if not ckpt:
        return 0
    names = [n for n, _ in t.train.list_variables(ckpt) if n.startswith("ckpt_saved_epoch")]
    return int(t.train.load_variable(ckpt, names[0])) + 1 if names else 0


def backup_callback(backup_dir: Path):
    return keras().callbacks.BackupAndRestore(str(backup_dir), save_freq="epoch", delete_checkpoint=True)


# ------------------------------------------------------------------ tfmot under a strategy
@contextlib.contextmanager
def global_batch_ranges():
    """tfmot's range quantisers, made to see the whole global batch under a strategy, as in one process.

    The model-input QuantizeLayer (AllValuesQuantize) keeps a running min/max with a plain assign: each
    replica would keep the min/max of its own rows, so the workers would end with different input ranges and
    the chief would export its own shard's. The activation quantisers (MovingAvgQuantize) average each
    replica's own batch min/max across replicas, which is not the min/max of the global batch. Here every
    replica first takes the min/max over all replicas' rows (one all-reduce) and tfmot updates its ranges from
    those; outside a multi-replica fit nothing changes.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    t = tf()
    all_values, moving_avg = quant_ops.AllValuesQuantize, quant_ops.MovingAvgQuantize

    def replica_ctx(is_training):
        ctx = t.distribute.get_replica_context()
        return ctx if is_training is True and ctx is not None and ctx.num_replicas_in_sync > 1 else None

    def global_min_max(ctx, x, per_channel: bool):
        axes = list(range(len(x.shape) - 1)) if per_channel and len(x.shape) >= 2 else None
        mine = t.stack([t.reduce_min(x, axis=axes), t.reduce_max(x, axis=axes)])
        # one collective per quantiser: each replica's (min, max) in its own row of a summed table (there is
        # no min/max all-reduce; an all_gather costs two collectives, a shape and the data)
        me = t.one_hot(ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync, dtype=mine.dtype)
        table = ctx.all_reduce(t.distribute.ReduceOp.SUM, t.tensordot(me, mine, axes=0))
        return t.reduce_min(table[:, 0], axis=0), t.reduce_max(table[:, 1], axis=0)

    def all_values_global(inputs, min_var, max_var, *args, is_training=True, **kw):
        ctx = replica_ctx(is_training)
        if ctx is not None:
            lo, hi = global_min_max(ctx, inputs, False)
            # tfmot then takes min(min_var, its own rows' min), which is the global min stored here
            min_var.assign(t.minimum(min_var, lo))
            max_var.assign(t.maximum(max_var, hi))
        return all_values(inputs, min_var, max_var, *args, is_training=is_training, **kw)

    def moving_avg_global(inputs, min_var, max_var, *args, is_training=True, ema_decay=0.999, **kw):
        ctx = replica_ctx(is_training)
        if ctx is None or args:
            return moving_avg(inputs, min_var, max_var, *args, is_training=is_training, ema_decay=ema_decay, **kw)
        lo, hi = global_min_max(ctx, inputs, kw.get("per_channel", False))
        # tfmot's range update (MovingAvgQuantize) on the global batch's min/max; identical on every replica,
        # so a local assign keeps them equal (TensorFlow's own cross-replica averaging is not needed)
        if kw.get("symmetric"):
            bits = kw.get("num_bits", 8)
            ratio = -1 if kw.get("narrow_range") else -((1 << bits) - 2) / (1 << bits)
            lo, hi = t.minimum(lo, hi / ratio), t.maximum(hi, lo * ratio)
        else:
            lo, hi = t.minimum(lo, 0.0), t.maximum(hi, 0.0)
        min_var.assign_sub((min_var - lo) * (1.0 - ema_decay))
        max_var.assign_sub((max_var - hi) * (1.0 - ema_decay))
        return moving_avg(inputs, min_var, max_var, is_training=False, ema_decay=ema_decay, **kw)

    quant_ops.AllValuesQuantize, quant_ops.MovingAvgQuantize = all_values_global, moving_avg_global
    try:
        yield
    finally:
        quant_ops.AllValuesQuantize, quant_ops.MovingAvgQuantize = all_values, moving_avg


# ------------------------------------------------------------------ non-chief workers
@contextlib.contextmanager
def scratch_run_dir(role: WorkerRole):
    """A non-chief worker's run directory: a temporary one, deleted afterwards (only the chief writes)."""
    d = Path(tempfile.mkdtemp(prefix=f"edgeq-{(role.task_type or 'w')}{role.task_index}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
