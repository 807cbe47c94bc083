"""QAT fine-tune throughput under MultiWorkerMirroredStrategy: 1 worker vs 2 workers on this machine, same global batch.

    python benchmarks/qat_distributed.py [models/mobilenet_v2.yaml] [--batch 32] [--steps 6] [--rounds 2]

Each round starts a 1-worker cluster and a 2-worker cluster (local processes on 127.0.0.1, TF_CONFIG), in
alternating order (ABAB...), each running edgeq's own fine-tune (`fine_tune_qat` with stages.qat.distribution
multi_worker) for 2 epochs of --steps steps: the first epoch warms up (tracing, first collectives), the
second is timed step by step on the chief. Printed: samples/s and median step time per worker count, the
per-round ratio of step times (2 workers / 1 worker), and the time of one all-reduce of the model's
gradients alone. The global batch is the same for both, so the 2-worker run does the same arithmetic per
step split over two processes: on one machine with 2 cores no speed-up is expected, and whatever the
2-worker step costs beyond the 1-worker step is the price of synchronisation (gradient all-reduce over
loopback gRPC, the per-step range collectives, waiting for the slower worker) plus two processes sharing
the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
REPO = Path(__file__).resolve().parent.parent


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def worker(args) -> int:
    """One worker process: the config's fine-tune under multi_worker; the chief prints its step times as JSON."""
    from edgeq.core.config import load_config
    from edgeq.methods.keras import distribute

    cfg = load_config(args.config)
    if args.no_range_sync:  # attribution only: tfmot's own per-replica ranges (workers' input ranges diverge)
        import contextlib

        distribute.global_batch_ranges = contextlib.nullcontext
    spec = cfg.stages.qat.distribution.model_copy(update={"strategy": "multi_worker"})
    strategy = distribute.start(spec)  # before any other TensorFlow op
    from edgeq.run.inputs import load_splits, preprocess_of
    from edgeq.loaders.keras import load_keras_model
    from edgeq.methods.keras.fine_tune import fine_tune_qat, training_split
    from edgeq.core.tfcompat import keras, tf

    opts = cfg.stages.qat.model_copy(update={
        "train_images": args.batch * args.steps, "batch_size": args.batch, "steps_per_epoch": args.steps,
        "epochs": 2, "validation_images": 0, "early_stop_patience": 0, "distribution": spec})
    pre = preprocess_of(cfg)
    splits = load_splits(cfg, pre)
    data = training_split(splits.train, opts)
    model = load_keras_model(cfg.model.path, cfg.model.format)
    cal = pre(splits.calibration.images[:opts.calibration_images])

    class StepTimer(keras().callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch, self.times, self.t = 0, [], 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch >= 1:  # epoch 0 warms up
                self.times.append(time.perf_counter() - self.t)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as backup:
        fine_tune_qat(model, data, pre, cal, opts, log=lambda m: None, checkpoint_dir=Path(backup),
                      callbacks=[timer])
    # the all-reduce alone: one tensor the size of all trainable weights (what Keras sums every step)
    n = sum(int(v.shape.num_elements()) for v in model.trainable_weights)
    grads = tf().ones([n], tf().float32)

    @tf().function
    def all_reduce():
        return strategy.run(lambda g: tf().distribute.get_replica_context().all_reduce(tf().distribute.ReduceOp.SUM, g), args=(grads,))

    all_reduce()
    ar = []
    for _ in range(20):
        t = time.perf_counter()
        all_reduce()
        ar.append(time.perf_counter() - t)
    if distribute.worker_role(spec).is_chief:
        print("RESULT " + json.dumps({"step_s": timer.times, "all_reduce_s": statistics.median(ar),
                                      "gradient_mb": round(n * 4 / 1e6, 2),
                                      "replicas": distribute.replicas(strategy)}), flush=True)
    return 0


def cluster(args, n: int, range_sync: bool = True) -> dict:
    """Start an n-worker cluster of this script, wait, return the chief's RESULT."""
    addrs = [f"127.0.0.1:{p}" for p in _ports(n)]
    procs = []
    for i in range(n):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": addrs}, "task": {"type": "worker", "index": i}}),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, __file__, args.config, "--worker", "--batch", str(args.batch),
                                       "--steps", str(args.steps), *([] if range_sync else ["--no-range-sync"])],
                                      env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=args.timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"{n}-worker cluster: a worker exited {p.returncode}: {err[-2000:]}")
    line = next(l for l in outs[0][0].splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=str(REPO / "models" / "mobilenet_v2.yaml"))
    ap.add_argument("--batch", type=int, default=32, help="global batch (both cluster sizes)")
    ap.add_argument("--steps", type=int, default=6, help="steps per epoch (epoch 1 warms up, epoch 2 is timed)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating 1-worker / 2-worker rounds")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cluster run")
    ap.add_argument("--attribute", action="store_true", help="also run 2 workers without edgeq's range "
                    "synchronisation (tfmot's per-replica ranges) in each round, to attribute the cost")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-range-sync", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.batch % 2:
        raise SystemExit("--batch must be even (it is split over 2 workers)")
    runs: dict = {1: [], 2: [], "2 (no range sync)": []}
    ratios = []
    for r in range(args.rounds):
        order = [1, 2, *(["2 (no range sync)"] if args.attribute else [])]
        order = order if r % 2 == 0 else order[::-1]
        med = {}
        for n in order:
            res = cluster(args, 1 if n == 1 else 2, range_sync=n != "2 (no range sync)")
            runs[n].append(res)
            med[n] = statistics.median(res["step_s"])
            print(f"round {r + 1}: {n} worker(s): median step {med[n] * 1e3:.0f} ms over {len(res['step_s'])} "
                  f"steps ({args.batch / med[n]:.1f} samples/s)", flush=True)
        ratios.append(med[2] / med[1])
    print(f"\n{Path(args.config).stem}: QAT fine-tune, global batch {args.batch}, {os.cpu_count()} cores, "
          f"{args.rounds} interleaved round(s)")
    print(f"{'workers':>18} {'step ms (median)':>17} {'samples/s':>10} {'all-reduce ms':>14} {'grad MB':>8}")
    step = {}
    for n in [k for k in runs if runs[k]]:
        steps = [s for res in runs[n] for s in res["step_s"]]
        step[n] = statistics.median(steps)
        ar = statistics.median(res["all_reduce_s"] for res in runs[n])
        print(f"{n!s:>18} {step[n] * 1e3:>17.0f} {args.batch / step[n]:>10.1f} {ar * 1e3:>14.1f} "
              f"{runs[n][0]['gradient_mb']:>8}")
    ratio = statistics.median(ratios)
    extra = (step[2] - step[1]) * 1e3
    print(f"\nstep time 2 workers / 1 worker: {ratio:.2f} (median of per-round ratios {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"synchronisation cost: {extra:+.0f} ms per step at the same global batch "
          f"({extra / (step[1] * 1e3) * 100:+.0f} % of the 1-worker step); the bare gradient all-reduce over loopback "
          f"takes {statistics.median(r['all_reduce_s'] for r in runs[2]) * 1e3:.1f} ms of it.")
    if runs["2 (no range sync)"]:
        own = (step[2] - step["2 (no range sync)"]) * 1e3
        print(f"edgeq's range synchronisation (one all-reduce per range quantiser per step, global-batch ranges) vs "
              f"tfmot's own under a strategy (an averaging all-reduce each for min and max; the input range not "
              f"synchronised at all): {own:+.0f} ms per step")
    print("what it implies: on one machine the two workers split the same arithmetic over the same cores, so no "
          "speed-up is possible here; across machines each worker brings its own cores, and the 2-worker step "
          "approaches (1-worker step / 2) + this synchronisation cost (plus network latency instead of loopback).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
