"""The process group a run lives in: one process, or many launched by torchrun (one machine or many).

The model stays single-device; parallelism is applied from outside (``distributed/parallelize.py``)
over the device mesh this context carries.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import torch
import torch.distributed as dist

from lmforge.core.device import pick_device
from lmforge.distributed.layout import Layout, build_mesh


@dataclasses.dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    layout: Layout = Layout()
    mesh: object = None  # torch DeviceMesh (dp_replicate, dp_shard, tp) once a layout is set

    def __post_init__(self):
        if self.layout.world_size != self.world_size:  # no layout given: plain data parallelism over the world
            self.layout = Layout(dp_replicate=self.world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def dp_rank(self) -> int:
        """Which slice of each global batch this process reads (the same for all ranks of a tp group)."""
        return self.layout.data_rank(self.rank)

    @property
    def dp_size(self) -> int:
        return self.layout.dp

    def with_layout(self, layout: Layout) -> DistContext:
        """This context with ``layout`` and its device mesh (``layout.world_size`` must be the world size)."""
        if layout.world_size != self.world_size:
            raise ValueError(f"layout for {layout.world_size} processes in a world of {self.world_size}")
        mesh = build_mesh(layout, self.device.type) if self.distributed else None
        if mesh is not None and tuple(mesh.get_coordinate()) != layout.coordinate(self.rank):
            raise RuntimeError(f"rank {self.rank}: device mesh coordinate {mesh.get_coordinate()} is not the layout's "
                               f"{layout.coordinate(self.rank)}")  # data_rank() relies on it
        return dataclasses.replace(self, layout=layout, mesh=mesh)

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


def restarted_by_torchrun() -> bool:
    """True in a worker that torchrun started again after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


@dataclasses.dataclass(frozen=True)
class Launch:
    """How torchrun starts the workers: ``nproc`` per node on ``nnodes`` nodes."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # HOST:PORT of node 0, where the rendezvous store runs
    rdzv_id: str = "lmforge"
    max_restarts: int = 0

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    def torchrun_args(self) -> list[str]:
        args = [f"--nproc-per-node={self.nproc}", f"--max-restarts={self.max_restarts}"]
        if self.nnodes == 1 and self.rdzv_endpoint is None:
            return ["--standalone", *args]
        # c10d rendezvous: node 0 hosts the store at the endpoint (is_host), the others join it; global ranks
        # are given out by the rendezvous, so --node-rank only says which node hosts
        return [*args, f"--nnodes={self.nnodes}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={self.rdzv_endpoint}", f"--rdzv-id={self.rdzv_id}",
                f"--rdzv-conf=is_host={'true' if self.node_rank == 0 else 'false'}"]


def launch_torchrun(launch: Launch | int, lmforge_args: list[str]) -> int:
    """Run ``lmforge <args>`` under torchrun: ``launch.nproc`` workers on this node of ``launch.nnodes``."""
    if isinstance(launch, int):
        launch = Launch(nproc=launch)
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch.torchrun_args(), "-m", "lmforge", *lmforge_args]
    env = dict(os.environ)
    if launch.max_restarts:
        # a restarted group sharing the agent's TCPStore can read the previous attempt's addresses and fail to
        # connect (pytorch/pytorch#135712): each attempt gets a store of its own
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    return subprocess.call(cmd, env=env)
