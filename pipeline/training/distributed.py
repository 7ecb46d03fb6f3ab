"""Data-parallel training under torchrun: which process this is, and the few collective operations the loop needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is the single process of a world of one, and
every operation here is a no-op. Rank 0 alone talks to MLflow and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.errors import SettingsError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of value over all processes (gloo has no AVG: sum, then divide)."""
        if self.active:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any: so all stop at the same step."""
        if not self.active:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return bool(tensor.item() > 0)

    def wait_for_all(self) -> None:
        """Return once every process has reached this point."""
        if self.active:
            dist.barrier()

    def share_of_step(self, windows_per_step: int, max_batch: int) -> list[tuple[int, int]]:
        """This process's windows of a step, as (offset in the step, count) micro-batches of at most max_batch.

        Process r takes the r-th of N equal, contiguous parts, so together the processes cover exactly the
        windows one process would, whatever N: the effective batch, and a resume on another N, stay the same.
        """
        if windows_per_step % self.world_size:
            raise SettingsError(
                f"a step's {windows_per_step} windows (batch_size x grad_accum) cannot be split evenly over "
                f"{self.world_size} processes: pass --batch-size or --grad-accum so that their product is a "
                f"multiple of {self.world_size}")
        share = windows_per_step // self.world_size
        start = self.rank * share
        return [(start + offset, min(max_batch, share - offset)) for offset in range(0, share, max_batch)]

    def share(self, value):
        """Rank 0's value, on every process (a run id, a checkpoint)."""
        if not self.active:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def join(device_name: str) -> World:
    """Join the torchrun group when there is one (NCCL on CUDA, gloo on CPU); else a world of one."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world


def leave(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
