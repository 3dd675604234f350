"""The process group a run lives in: one process, or many launched by torchrun.

The model stays single-device; data parallelism is applied from outside by wrapping it here.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import torch
import torch.distributed as dist

from lmforge.core.device import pick_device


@dataclasses.dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        return self.all_reduce_sum([float(flag)])[0] > 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_distributed(device_preference: str) -> DistContext:
    """Join the torchrun process group if launched by torchrun, else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=pick_device(device_preference))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def launch_torchrun(nproc: int, lmforge_args: list[str]) -> int:
    """Run ``lmforge <args>`` in ``nproc`` processes on this machine through torchrun."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "lmforge", *lmforge_args,
    ]
    return subprocess.call(cmd)
