"""Pipeline parallelism in the estimator (``lmforge estimate --pp N``): per pipeline rank, the weights,
gradients and optimizer state of the blocks it holds (and the embedding on the first, the head on the
last), the activations of the micro-batches in flight, and the schedule's bubble.

In flight: GPipe runs every micro-batch's forward before any backward (all ``m`` are held); 1F1B lets
rank ``r`` of ``p`` start at most ``p - r`` before the first backward frees one; interleaved 1F1B with
``v`` stages per rank warms up ``2 (p - r - 1) + (v - 1) p + 1`` stage-chunks (Megatron-LM's schedule;
zero bubble keeps that bound). The bubble is the idle share of a step: ``(p - 1) / (v m + p - 1)`` (Narayanan
et al. 2021); zero bubble fills part of it with the weight-gradient halves, so its figure is an upper bound.
"""

from __future__ import annotations

import math

from lmforge.distributed.config import ParallelConfig
from lmforge.distributed.layout import Layout
from lmforge.distributed.stages import split_blocks, stages_of, virtual_stages
from lmforge.estimate.activations import FP32, StepShape, block_saved, checkpointed_block_saved, loss_memory
from lmforge.estimate.optimizer_state import _state_numbers, parameter_shapes
from lmforge.model.config import ModelDims


def in_flight(schedule: str, rank: int, pp: int, virtual: int, micro: int) -> int:
    """Stage-chunks (one stage's activations of one micro-batch) that rank ``rank`` holds at its peak."""
    if schedule == "gpipe":
        return micro * virtual
    if virtual == 1:
        return min(micro, pp - rank)
    return min(micro * virtual, 2 * (pp - rank - 1) + (virtual - 1) * pp + 1)


def bubble(pp: int, virtual: int, micro: int) -> float:
    return (pp - 1) / (virtual * micro + pp - 1)


def estimate_pipeline(dims: ModelDims, pcfg: ParallelConfig, layout: Layout, *, per_rank_batch: int, seq_len: int,
                      optimizer: str, momentum: float, precision: str, activation_checkpointing: bool,
                      device: str) -> dict:
    """Per pipeline rank: blocks, parameters and bytes (weights, gradients, optimizer state, activations,
    their sum as the peak), and the schedule's bubble."""
    pp, virtual = layout.pp, virtual_stages(pcfg.pp_schedule, pcfg.pp_virtual_stages)
    micro = pcfg.pp_microbatches or pp
    rows = per_rank_batch // micro
    ranges = split_blocks(dims, pp * virtual, pcfg.pp_split)
    s = StepShape(dims, rows, seq_len, precision, device, layout.tp, logits_loss=True)
    kept = checkpointed_block_saved(s) if activation_checkpointing else sum(block_saved(s).values())
    boundary = s.tokens * dims.d_model * FP32 // layout.tp  # an activation received, and its gradient
    loss = loss_memory(s)
    ranks = []
    for r in range(pp):
        mine = stages_of(r, pp, virtual)
        blocks = {i for st in mine for i in ranges[st]}
        first, last = 0 in mine, pp * virtual - 1 in mine
        params = state = 0
        for name, shape in parameter_shapes(dims):
            parts = name.split(".")
            held = (int(parts[1]) in blocks if parts[0] == "layers"
                    else first if parts[0] == "embed_tokens" else last)
            if name == "embed_tokens.weight" and dims.tie_embeddings and last:
                held = True  # the last stage's copy of the tied table
            if held:
                split = (layout.tp if len(shape) >= 2 else 1) * layout.dp_shard
                params += math.prod(shape) // split
                state += _state_numbers(optimizer, name, shape, momentum) // split
        chunks = in_flight(pcfg.pp_schedule, r, pp, virtual, micro)
        per_chunk = kept * len(blocks) // len(mine) + 2 * boundary
        recompute = sum(block_saved(s).values()) if activation_checkpointing else 0  # a block's forward run again
        activations = chunks * per_chunk + recompute + (loss["saved"] + loss["backward"] if last else 0)
        weights = params * FP32
        ranks.append({"rank": r, "stages": mine, "blocks": sorted(blocks), "parameters": params,
                      "weights": weights, "gradients": weights, "optimizer_state": state * FP32,
                      "in_flight": chunks, "activations": activations,
                      "peak": 2 * weights + state * FP32 + activations})
    return {"pp": pp, "schedule": pcfg.pp_schedule, "virtual_stages": virtual, "microbatches": micro,
            "microbatch_rows": rows, "bubble": bubble(pp, virtual, micro), "ranks": ranks}
