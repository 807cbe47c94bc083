"""Fine-tuning an NNCF-quantized PyTorch model on the training split, as the Keras QAT does it: Adam, distillation
from the FP32 model's outputs (or the labels), early stop on the validation images, and the weights of the best
epoch restored (`_score`: top-1 agreement with the FP32 model, then validation loss), counting epoch 0 (the
range-initialised model, before any step): a fine-tune never ends further from FP32 on its validation images
than where it started.

Under torchrun every worker trains a DistributedDataParallel replica on its share of each global batch (the
same rows a single process would see, split by rank), so the update equals one process's with the same global
batch; rank 0 alone writes the epoch checkpoints, from which a restarted job resumes.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path


from edgeq.core.config import QatSpec
from edgeq.core.data import Preprocess
from edgeq.core.errors import ConfigError, DataError
from edgeq.methods.keras.fine_tune import TrainData, batch_stream
from edgeq.methods.torch.distributed import TorchRole, barrier, device_for, start, stop, torch_role
from edgeq.methods.torch.qat import nchw
from edgeq.methods.keras.fine_tune import QatResult  # one result type for the Keras and PyTorch fine-tunes

CHECKPOINT = "qat_torch_epoch.pt"




def outputs_probabilities(module, x) -> bool:
    """True when the model's outputs are already class probabilities (non-negative rows summing to 1)."""
    import torch

    with torch.no_grad():
        y = module(x[:8])
    return bool((y >= 0).all() and torch.allclose(y.sum(1), torch.ones(len(y)), atol=1e-3))


def _log_probs(y, probs: bool):
    import torch

    return torch.log(y.clamp_min(1e-12)) if probs else torch.log_softmax(y, 1)


def _targets(teacher, x, y, opts: QatSpec, probs: bool):
    """Soft FP32 targets when distilling (class probabilities of the FP32 model), else the labels."""
    import torch

    if not opts.distill:
        return torch.as_tensor(y, dtype=torch.long, device=x.device)
    with torch.no_grad():
        t = teacher(x)
    return t if probs else torch.softmax(t, 1)


def _loss(out, target, probs: bool):
    import torch

    logp = _log_probs(out, probs)
    if target.dtype == torch.long:
        return torch.nn.functional.nll_loss(logp, target)
    return -(target * logp).sum(1).mean()


def _evaluate(model, teacher, x, y, opts: QatSpec, probs: bool, device, batch: int = 64) -> tuple[float, float, float]:
    """(mean loss, top-1, top-1 agreement with the FP32 teacher) on the validation images."""
    import torch

    model.eval()
    losses, hits, same = [], 0, 0
    with torch.no_grad():
        for s in range(0, len(x), batch):
            xb = x[s:s + batch].to(device)
            out = model(xb)
            losses.append(float(_loss(out, _targets(teacher, xb, y[s:s + batch], opts, probs), probs)) * len(xb))
            top = out.argmax(1).cpu().numpy()
            hits += int((top == y[s:s + batch]).sum())
            same += int((top == teacher(xb).argmax(1).cpu().numpy()).sum())
    return sum(losses) / len(x), hits / len(x), same / len(x)  # unrounded: `_score` compares them


def _score(evaluation: tuple) -> list:
    """What the kept epoch maximises: top-1 agreement with the FP32 model on the validation images (what PTQ is
    judged on: how often the INT8 model decides as FP32 does), then the lower validation loss. A lower loss alone
    can come with fewer agreeing decisions (the soft targets improve while argmaxes flip)."""
    loss, _, agreement = evaluation
    return [agreement, -loss]


def _run_key(opts: QatSpec, data: TrainData, world: int) -> str:
    """What a checkpoint belongs to: the options, the images and the global batch split."""
    parts = {"opts": opts.model_dump(mode="json", exclude={"enabled", "export_onnx", "distribution", "device"}),
             "train": data.train.fingerprint(), "val": data.val.fingerprint() if data.val is not None else None,
             "workers": world}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _save_checkpoint(path: Path, state: dict) -> None:
    import torch

    from edgeq.core.artifacts import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))


def _load_checkpoint(path: Path, key: str) -> dict | None:
    import torch

    if not path.exists():
        return None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    # a checkpoint without best_epoch was written by an edgeq that chose the epoch by validation loss: start over
    return state if state.get("key") == key and "best_epoch" in state else None


def fine_tune(qmodel, teacher, data: TrainData, pre: Preprocess, opts: QatSpec, log=print,
              checkpoint_dir: Path | None = None, role: TorchRole | None = None,
              device: str = "auto") -> QatResult:
    """Fine-tune the NNCF-quantized `qmodel` (in place) against the FP32 `teacher`; see the module docstring.

    checkpoint_dir: where rank 0 writes the epoch checkpoint (every worker must see it to resume; None: none).
    role: this process among torchrun's workers (default: from the environment)."""
    import torch

    role = role or torch_role()
    dev = device_for(device, role)
    backend = start(role, dev)
    if opts.batch_size % role.world_size:
        raise ConfigError(f"stages.qat.batch_size {opts.batch_size} is the global batch; it must divide evenly "
                          f"among the {role.world_size} torchrun workers")
    if data.train is None or len(data.train) == 0:
        raise DataError("stages.qat: no training images")
    torch.manual_seed(opts.seed)
    qmodel.to(dev)
    teacher = teacher.to(dev).eval()
    xv, yv = (nchw(pre(data.val.images)), data.val.labels) if data.val is not None else (None, None)
    probs = outputs_probabilities(teacher, nchw(pre(data.train.images[:8])).to(dev))
    before = _evaluate(qmodel, teacher, xv, yv, opts, probs, dev) if xv is not None else None
    before_loss, before_top1 = (round(before[0], 5), round(before[1], 5)) if before else (None, None)
    start_state = copy.deepcopy(qmodel.state_dict())
    net = qmodel
    if role.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(qmodel, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.Adam(qmodel.parameters(), lr=opts.learning_rate)
    key = _run_key(opts, data, role.world_size)
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    hist: dict[str, list] = {"loss": []} | ({"val_loss": [], "val_agreement": []} if xv is not None else {})
    # epoch 0 is a candidate: the range-initialised weights are kept unless an epoch scores higher (`_score`)
    first, best, best_state, waited, best_epoch = 0, _score(before) if before else None, \
        (start_state if xv is not None else None), 0, 0
    saved = _load_checkpoint(ckpt, key) if ckpt is not None else None
    if saved is not None:
        qmodel.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        first, hist, best, best_state, waited, best_epoch = (saved["epoch"], saved["history"], saved["best"],
                                                             saved["best_state"], saved["waited"], saved["best_epoch"])
        log(f"  QAT: resuming from the epoch checkpoint {ckpt}: epoch {first + 1} of {opts.epochs}")
    if role.distributed:
        log(f"  QAT: DistributedDataParallel ({backend}, {role.name}, global batch {opts.batch_size}) on {dev}")
    rows = batch_stream(data.train, pre, opts.batch_size, opts.seed, start=first * data.steps_per_epoch,
                        part=(role.rank, role.world_size))
    t = time.perf_counter()
    stopped = first >= opts.epochs or (bool(opts.early_stop_patience) and waited >= opts.early_stop_patience)
    epoch = first
    while not stopped and epoch < opts.epochs:
        net.train()
        total = 0.0
        for _ in range(data.steps_per_epoch):
            x, y = next(rows)
            xb = nchw(x).to(dev)
            loss = _loss(net(xb), _targets(teacher, xb, y, opts, probs), probs)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
        epoch += 1
        hist["loss"].append(round(total / data.steps_per_epoch, 5))
        if xv is not None:
            ev = _evaluate(qmodel, teacher, xv, yv, opts, probs, dev)
            hist["val_loss"].append(round(ev[0], 5))
            hist["val_agreement"].append(round(ev[2], 5))
            if best is None or _score(ev) > best:
                best, best_state, waited, best_epoch = _score(ev), copy.deepcopy(qmodel.state_dict()), 0, epoch
            else:
                waited += 1
            stopped = bool(opts.early_stop_patience) and waited >= opts.early_stop_patience
        if ckpt is not None and role.writes:
            _save_checkpoint(ckpt, {"key": key, "epoch": epoch, "model": qmodel.state_dict(),
                                    "optimizer": opt.state_dict(), "history": hist, "best": best,
                                    "best_state": best_state, "waited": waited, "best_epoch": best_epoch})
        barrier(role)
        log(f"  QAT epoch {epoch}/{opts.epochs}: loss {hist['loss'][-1]}"
            + (f", validation loss {hist['val_loss'][-1]}, agreement with FP32 {hist['val_agreement'][-1]}"
               if xv is not None else ""))
    seconds = round(time.perf_counter() - t, 1)
    if best_state is not None:
        qmodel.load_state_dict(best_state)  # as Keras EarlyStopping(restore_best_weights=True), epoch 0 included
    # False: no epoch scored above epoch 0, so the range-initialised weights are exported
    kept = not (before is not None and best_epoch == 0 and bool(hist["loss"]))
    if before is not None:
        hist["val_agreement_before"], hist["kept_epoch"] = round(before[2], 5), best_epoch
    after_top1 = round(_evaluate(qmodel, teacher, xv, yv, opts, probs, dev)[1], 5) if xv is not None else None
    qmodel.cpu().eval()
    teacher.cpu()
    stop(backend)
    epochs_run = len(hist["loss"])
    return QatResult(qmodel, seconds, epochs_run * data.steps_per_epoch, epochs_run, hist, before_top1,
                          after_top1, before_loss, kept,
                          {"backend": backend, "workers": role.world_size, "device": str(dev),
                           "resumed_at_epoch": first} if role.distributed or dev.type != "cpu" or first else {})
