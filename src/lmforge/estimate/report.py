"""Everything ``lmforge estimate`` reports for a recipe, as one JSON-ready dict (rendering is command.py's)."""

from __future__ import annotations


from lmforge.errors import RecipeError
from lmforge.estimate.compute import estimate_compute
from lmforge.estimate.memory import GIB, MemoryEstimate, estimate_memory, memory_limit_bytes, momentum_of
from lmforge.estimate.parallel import resolve_parallel
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.train.config import sequence_length

PRECISIONS = ("fp32", "bf16", "fp16")


def vocab_size_for(cfg: RunConfig, run: RunDir) -> tuple[int, str]:
    """The trained tokenizer's vocabulary when the run has one, else the recipe's target size."""
    tokenizer = run.tokenizer
    if tokenizer.exists():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tokenizer)).get_vocab_size(), str(tokenizer)
    return cfg.tokenizer.vocab_size, "recipe tokenizer.vocab_size"


def default_memory_bytes(cfg: RunConfig, device: str) -> tuple[int | None, str]:
    import torch

    if cfg.train.memory_limit_gb is not None:
        source = "train.memory_limit_gb"
    elif device == "cuda":
        if not torch.cuda.is_available():
            return None, "unknown (give --device-memory-gb)"
        source = torch.cuda.get_device_name(0)
    else:
        source = "this machine's memory"
    return memory_limit_bytes(cfg.train, torch.device(device, 0) if device == "cuda" else torch.device(device)), source


def build_report(cfg: RunConfig, vocab_size: int, *, device: str, memory_bytes: int | None, peak_flops: float | None,
                 mfu: float, dp: int | None = None, fsdp: int = 1, tp: int = 1, world_size: int | None = None,
                 pp: int = 1) -> dict:
    tc = cfg.train
    dims = cfg.model.dims(vocab_size)
    seq_len = sequence_length(cfg.train, dims.context_length)
    if not 0 < mfu <= 1:
        raise RecipeError(f"--mfu: must be in (0, 1], got {mfu}")
    if pp < 1:
        raise RecipeError(f"--pp: must be at least 1 (got {pp})")
    if world_size is not None and world_size % pp:
        raise RecipeError(f"--pp {pp} does not divide the world size {world_size}")
    par = resolve_parallel(dims, tc.batch_size, dp=dp, fsdp=fsdp, tp=tp,
                           world_size=None if world_size is None else world_size // pp)
    per_rank = tc.batch_size // par.dp
    micro = tc.micro_batch_size if isinstance(tc.micro_batch_size, int) else per_rank
    if per_rank % micro:
        raise RecipeError(f"train.micro_batch_size: {micro} must divide the per-device batch of {per_rank} sequences")

    def memory(precision: str, ac: bool, micro_batch: int = micro) -> MemoryEstimate:
        return estimate_memory(dims, micro_batch=micro_batch, seq_len=seq_len, optimizer=tc.optimizer,
                               momentum=momentum_of(tc),
                               precision=precision, activation_checkpointing=ac, accumulation=per_rank // micro_batch,
                               device=device, parallel=par)

    table = {p: {"off": memory(p, False).as_dict(), "on": memory(p, True).as_dict()} for p in PRECISIONS}
    fit = None
    if memory_bytes is not None:
        fit = _fit(lambda m: memory(tc.precision, tc.activation_checkpointing, m), memory_bytes, per_rank)
        if fit["largest"] is None:
            one = memory(tc.precision, tc.activation_checkpointing, 1)
            raise RecipeError(
                f"memory: even one sequence of {seq_len} tokens per micro-batch needs about "
                f"{one.device_total / GIB:.2f} GiB per device ({tc.precision}, activation checkpointing "
                f"{'on' if tc.activation_checkpointing else 'off'}), more than the {memory_bytes / GIB:.2f} GiB given")
    compute = estimate_compute(dims, seq_len=seq_len, batch_size=tc.batch_size, peak_flops=peak_flops, mfu=mfu,
                               devices=par.world_size * pp, activation_checkpointing=tc.activation_checkpointing)
    pipeline = None
    if pp > 1:
        from lmforge.distributed.layout import Layout, check_pipeline
        from lmforge.estimate.pipeline import estimate_pipeline

        layout = Layout(dp_replicate=par.dp_replicate, dp_shard=par.dp_shard, tp=par.tp, pp=pp)
        pcfg = cfg.parallel.model_copy(update={"pp": pp})
        check_pipeline(pcfg, layout, dims=dims, batch_size=tc.batch_size)
        pipeline = estimate_pipeline(dims, pcfg, layout, per_rank_batch=per_rank, seq_len=seq_len,
                                     optimizer=tc.optimizer, momentum=momentum_of(tc), precision=tc.precision,
                                     activation_checkpointing=tc.activation_checkpointing, device=device)
    return {
        "recipe": cfg.name, "model": {"size": cfg.model.size, **dims.to_dict()}, "device": device,
        "seq_len": seq_len, "batch_size": tc.batch_size, "micro_batch_size": micro, "per_device_batch": per_rank,
        "optimizer": tc.optimizer, "precision": tc.precision, "activation_checkpointing": tc.activation_checkpointing,
        "parallel": {"dp": par.dp_replicate, "fsdp": par.dp_shard, "tp": par.tp, "world_size": par.world_size},
        "compute": compute.as_dict(), "memory": table, "memory_available": memory_bytes, "fit": fit,
        **({"pipeline": pipeline} if pipeline else {}),
    }


def _fit(memory_at, limit: int, per_rank: int) -> dict:
    """The largest micro-batch whose device total fits ``limit`` (memory grows with it: binary search),
    and the largest divisor of the per-device batch that fits (what ``micro_batch_size: auto`` picks)."""
    fits = lambda m: memory_at(m).device_total <= limit  # noqa: E731
    if not fits(1):
        return {"largest": None, "largest_divisor": None, "accumulation": None}
    low, high = 1, 2
    while fits(high) and high < 1 << 20:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    divisor = max(m for m in range(1, per_rank + 1) if per_rank % m == 0 and m <= low)
    return {"largest": low, "largest_divisor": divisor, "accumulation": per_rank // divisor}


def describe_parallel(par: dict) -> str:
    return f"dp={par['dp']} fsdp={par['fsdp']} tp={par['tp']} ({par['dp'] * par['fsdp'] * par['tp']} device(s))"
