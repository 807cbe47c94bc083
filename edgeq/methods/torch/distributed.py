"""The PyTorch fine-tune past one process: `torchrun` workers (DistributedDataParallel; gloo on CPU, NCCL on
GPUs), which of them writes, and the device a process trains on.

torchrun starts the same command on every node and sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT in each
process's environment; edgeq reads them from there (nothing to configure). Rank 0 alone writes the run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from edgeq.core.errors import ConfigError


@dataclass(frozen=True)
class TorchRole:
    rank: int
    local_rank: int
    world_size: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def writes(self) -> bool:
        """Rank 0 alone writes the run (artifacts, checkpoints, report)."""
        return self.rank == 0

    @property
    def name(self) -> str:
        return f"rank {self.rank} of {self.world_size}" if self.distributed else "single process"


def torch_role(env: dict | None = None) -> TorchRole:
    """This process's place among torchrun's workers (one process when started without torchrun)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (torchrun sets them); unset them to "
                          "fine-tune in one process") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world}; start the workers with torchrun")
    return TorchRole(rank, local, world)


def device_for(choice: str, role: TorchRole):
    """The torch.device to train on: `auto` is this worker's CUDA device when one is present, else the CPU."""
    import torch

    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("stages.qat.device is cuda but PyTorch sees no CUDA device here; set device: auto or cpu")
    return torch.device("cuda", role.local_rank % torch.cuda.device_count())


def start(role: TorchRole, device) -> str | None:
    """Join torchrun's process group (once); the backend used, or None for one process."""
    if not role.distributed:
        return None
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            import torch

            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        # left at exit, not after each fine-tune: a process group joined again after destroy_process_group reads
        # the first group's addresses from torchrun's store when the ranks arrive apart, and gloo fails to connect
        # (measured, torch 2.13: the TensorRT-scheme fine-tune after the host one, rank 0 converting TFLite between)
        import atexit

        atexit.register(_leave)
    return backend


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(role: TorchRole) -> None:
    if role.distributed:
        import torch.distributed as dist

        dist.barrier()


def stop(backend: str | None) -> None:
    """The end of a fine-tune: wait for every rank (None: one process); the group stays joined for the next
    fine-tune of this process (see `start`)."""
    if backend is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
