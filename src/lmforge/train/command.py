"""``lmforge train``, and the process options it shares with ``lmforge run`` (``--nproc`` and torchrun's
multi-node and elastic options)."""

from __future__ import annotations

import click

from lmforge.command import common_options, resolve
from lmforge.errors import LmforgeError


def nproc_option(func):
    return click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
                        help="Train in this many processes on this machine (torchrun); the recipe's parallel: "
                             "section says how they share the work (default: DDP).")(func)


def launch_options(func):
    """Multi-node and elastic options of torchrun."""
    options = [
        click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Machines in the job; run the same command on each, with its --node-rank."),
        click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True,
                     help="This machine's rank; node 0 hosts the rendezvous at --rdzv-endpoint."),
        click.option("--rdzv-endpoint", metavar="HOST:PORT",
                     help="Where the nodes meet (torchrun c10d rendezvous): node 0's address and a free port."),
        click.option("--rdzv-id", help="Job id shared by the nodes (default: lmforge-<recipe name>)."),
        click.option("--max-restarts", type=click.IntRange(min=0), default=0, show_default=True,
                     help="If a worker fails, torchrun restarts all of them this many times; they resume from "
                          "the latest checkpoint."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def make_launch(cfg, nproc: int, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None,
                rdzv_id: str | None = None, max_restarts: int = 0):
    """The processes to train in, from the command line; bad combinations are one line."""
    from lmforge.distributed.context import Launch

    if nnodes > 1 and not rdzv_endpoint:
        raise LmforgeError(f"--nnodes {nnodes}: give --rdzv-endpoint HOST:PORT (node 0's address and a free port)")
    if node_rank >= nnodes:
        raise LmforgeError(f"--node-rank {node_rank}: must be below --nnodes ({nnodes})")
    if rdzv_endpoint and (":" not in rdzv_endpoint or not rdzv_endpoint.rsplit(":", 1)[1].isdigit()):
        raise LmforgeError(f"--rdzv-endpoint {rdzv_endpoint}: expected HOST:PORT")
    return Launch(nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                  rdzv_id=rdzv_id or f"lmforge-{cfg.name}", max_restarts=max_restarts)


@click.command()
@common_options
@nproc_option
@launch_options
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint.")
@click.option("--redo", is_flag=True, help="Discard existing checkpoints and train from the start.")
@click.option("--worker", is_flag=True, hidden=True)
def train(recipe, overrides, run_dir, nproc, nnodes, node_rank, rdzv_endpoint, rdzv_id, max_restarts, resume, redo,
          worker):
    """Pretrain the model on the packed token shards of a run directory.

    On several machines: the same command on each, with --nnodes, --node-rank and --rdzv-endpoint, and
    the run directory on storage they share.
    """
    from lmforge import pipeline

    cfg, run = resolve(recipe, run_dir, overrides)
    if worker:  # one of the processes torchrun started for the train stage
        from lmforge.distributed.context import restarted_by_torchrun
        from lmforge.evaluate.train_hook import eval_tasks_hook
        from lmforge.train.stage import train_worker

        train_worker(run, cfg, resume or restarted_by_torchrun(), eval_tasks_hook(run, cfg))
        return
    launch = make_launch(cfg, nproc, nnodes, node_rank, rdzv_endpoint, rdzv_id, max_restarts)
    pipeline.run_alone(run, cfg, "train", pipeline.Options(resume=resume, launch=launch), redo=redo)
