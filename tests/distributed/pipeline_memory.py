"""Measured peak of live tensor bytes in each process of a pipeline, next to ``lmforge estimate --pp``'s figure
for its pipeline rank (torchrun worker; see test_pipeline_parallel.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 pipeline_memory.py CASES.json OUT.json

Each case trains two steps of the loop's own ``train_step`` through the pipeline on random tokens, the second
measured (``train/measure.py``'s ``LiveTensorBytes``), once the optimizer state exists.
"""

import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from lmforge.distributed.config import ParallelConfig
from lmforge.distributed.context import DistContext
from lmforge.distributed.layout import build_mesh, resolve_layout
from lmforge.distributed.parallelize import parallelize
from lmforge.estimate.pipeline import estimate_pipeline
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.train.batches import BatchPlan
from lmforge.train.config import TrainConfig
from lmforge.train.loop import train_step
from lmforge.train.measure import LiveTensorBytes, RandomWindows
from lmforge.train.optim import build_optimizer
from lmforge.train.precision import precision_policy


def measure(case: dict, rank: int, world: int) -> dict:
    pcfg = ParallelConfig(**case["parallel"])
    dims = ModelConfig(size=case["size"]).dims(case["vocab"])
    layout = resolve_layout(pcfg, world, dims=dims, batch_size=case["batch"])
    ctx = DistContext(rank=rank, world_size=world, layout=layout, mesh=build_mesh(layout, "cpu"))
    tc = TrainConfig(batch_size=case["batch"], seq_len=case["seq"], activation_checkpointing=case["checkpointing"])
    tracker = LiveTensorBytes()
    with tracker:
        torch.manual_seed(0)
        pipe = parallelize(Decoder(dims), ctx, tc, pcfg)
        opt, policy = build_optimizer(pipe.parts, tc), precision_policy("fp32", ctx.device)
        plan, data = BatchPlan(1 << 16, tc.batch_size, 0, ctx.dp_rank, ctx.dp_size), RandomWindows(dims.vocab_size)
        for step in (0, 1):
            gc.collect()
            tracker.reset_peak()
            train_step(pipe, pipe.parts, opt, plan, data, step, case["seq"], 1e-3, 1.0, ctx, policy)
    estimate = estimate_pipeline(dims, pcfg, layout, per_rank_batch=case["batch"] // layout.dp, seq_len=case["seq"],
                                 optimizer="adamw", momentum=0.9, precision="fp32",
                                 activation_checkpointing=case["checkpointing"], device="cpu")
    return {"rank": rank, "measured": tracker.peak, "estimated": estimate["ranks"][layout.stage_rank(rank)]["peak"]}


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    found = [measure(case, rank, world) for case in cases]
    gathered = [None] * world
    dist.all_gather_object(gathered, found)
    if rank == 0:
        Path(sys.argv[2]).write_text(json.dumps([[per_rank[i] for per_rank in gathered] for i in range(len(cases))]))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
