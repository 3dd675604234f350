"""Which decoder blocks each pipeline stage holds, and which process holds each stage: pure functions of
the recipe, shared by the layout check (before any process starts), the estimator and the pipeline.

Stage ``s`` of ``pp * v`` sits on pipeline rank ``s % pp`` (looped placement: with ``v`` virtual stages
per process, rank ``r`` holds stages ``r, r + pp, ...``), as torch's interleaved schedules expect.
"""

from __future__ import annotations

from lmforge.errors import RecipeError
from lmforge.model.config import ModelDims

SINGLE_STAGE_SCHEDULES = ("gpipe", "1f1b")


def virtual_stages(schedule: str, virtual: int | None) -> int:
    """Stages per process: 1 for the single-stage schedules, ``virtual`` (default 2) for the interleaved ones."""
    if schedule in SINGLE_STAGE_SCHEDULES:
        if virtual not in (None, 1):
            raise RecipeError(f"parallel.pp_virtual_stages={virtual}: parallel.pp_schedule={schedule} runs one stage "
                              "per process; use interleaved_1f1b or zero_bubble for virtual stages")
        return 1
    return 2 if virtual is None else virtual


def block_parameters(dims: ModelDims) -> int:
    qkv = dims.d_model * (dims.n_heads + 2 * dims.n_kv_heads) * dims.head_dim
    return qkv + dims.n_heads * dims.head_dim * dims.d_model + 3 * dims.d_model * dims.ffn_hidden + 2 * dims.d_model


def split_blocks(dims: ModelDims, stages: int, split="even") -> list[range]:
    """The blocks of each of ``stages`` stages, in order; a one-line error naming the key otherwise."""
    n = dims.n_layers
    if isinstance(split, list):
        if len(split) != stages or any(k < 1 for k in split) or sum(split) != n:
            raise RecipeError(f"parallel.pp_split={split}: needs {stages} positive block counts (parallel.pp x "
                              f"virtual stages) that sum to model.n_layers ({n})")
        counts = split
    elif n < stages:
        raise RecipeError(f"parallel.pp: {stages} pipeline stages (pp x virtual stages) need at least as many "
                          f"blocks; model.n_layers is {n}")
    elif split == "even":
        if n % stages:
            raise RecipeError(f"parallel.pp: {stages} pipeline stages (pp x virtual stages) do not divide "
                              f"model.n_layers ({n}); set parallel.pp_split to parameters or to a list of blocks "
                              "per stage")
        counts = [n // stages] * stages
    else:
        counts = _balanced(dims, stages)
    bounds = [0]
    for k in counts:
        bounds.append(bounds[-1] + k)
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def _balanced(dims: ModelDims, stages: int) -> list[int]:
    """Block counts that minimise the largest stage's parameters (embedding with the first stage; the head,
    when untied, with the last): the smallest feasible bound, searched over counts of blocks."""
    per_block = block_parameters(dims)
    embed = dims.vocab_size * dims.d_model
    head = dims.d_model + (0 if dims.tie_embeddings else embed)
    n = dims.n_layers

    def counts_within(bound: int) -> list[int] | None:
        counts, left = [], n
        for s in range(stages):
            extra = (embed if s == 0 else 0) + (head if s == stages - 1 else 0)
            fit = max(1, (bound - extra) // per_block) if bound >= extra + per_block else 1
            fit = min(fit, left - (stages - s - 1))  # leave a block for every later stage
            if s == stages - 1:
                fit = left
            if extra + fit * per_block > bound:
                return None
            counts.append(fit)
            left -= fit
        return counts

    bounds = sorted({(embed if s == 0 else 0) + (head if s == stages - 1 else 0) + k * per_block
                     for s in range(stages) for k in range(1, n - stages + 2)})
    for bound in bounds:
        found = counts_within(bound)
        if found is not None:
            return found
    raise AssertionError("unreachable: the largest bound always fits")


def stages_of(pp_rank: int, pp: int, virtual: int) -> list[int]:
    """The stages pipeline rank ``pp_rank`` holds (looped placement)."""
    return [pp_rank + k * pp for k in range(virtual)]
