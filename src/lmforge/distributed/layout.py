"""The parallel layout of a run: degrees checked against the world size, the model and the recipe, then a
device mesh (``init_device_mesh``) with dims ``(pp, dp_replicate, dp_shard, tp)``, tp innermost.

With ``n = dp_replicate * dp_shard * tp`` ranks per pipeline stage, rank ``r`` sits at mesh coordinate
``(r // n, r % n // (dp_shard * tp), r // tp % dp_shard, r % tp)``: the ``tp`` ranks of one
tensor-parallel group are neighbours (one node when a node has ``tp`` devices), and they read the same
data; so do the ``pp`` ranks of one pipeline. Data-parallel rank ``r % n // tp`` of
``dp_replicate * dp_shard`` picks its slice of every global batch.
"""

from __future__ import annotations

import dataclasses

from lmforge.distributed.config import AUTO, ParallelConfig
from lmforge.errors import RecipeError
from lmforge.model.config import ModelDims

MESH_DIMS = ("dp_replicate", "dp_shard", "tp")  # the degrees one of which may be auto
MESH = ("pp", *MESH_DIMS)


@dataclasses.dataclass(frozen=True)
class Layout:
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1

    @property
    def world_size(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.tp

    @property
    def stage_size(self) -> int:
        """Processes per pipeline stage (all of them without pipeline parallelism)."""
        return self.dp_replicate * self.dp_shard * self.tp

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many different slices of each global batch are read."""
        return self.dp_replicate * self.dp_shard

    @property
    def sharded(self) -> bool:
        """Parameters are DTensors (FSDP2 and/or tensor parallel) or split into pipeline stages: checkpoints
        are sharded (DCP), every process writing what it holds."""
        return self.dp_shard > 1 or self.tp > 1 or self.pp > 1

    @property
    def fsdp(self) -> bool:
        """FSDP2 wraps the model: dp_shard > 1, or replicas of a tensor-parallel or pipelined model (HSDP)."""
        return self.dp_shard > 1 or ((self.tp > 1 or self.pp > 1) and self.dp_replicate > 1)

    @property
    def ddp(self) -> bool:
        return not self.sharded and self.dp_replicate > 1

    def data_rank(self, rank: int) -> int:
        return rank % self.stage_size // self.tp

    def stage_rank(self, rank: int) -> int:
        """Which pipeline rank (0 .. pp-1) process ``rank`` is."""
        return rank // self.stage_size

    def coordinate(self, rank: int) -> tuple[int, int, int, int]:
        inner = rank % self.stage_size
        return rank // self.stage_size, inner // (self.dp_shard * self.tp), inner // self.tp % self.dp_shard, inner % self.tp

    def describe(self) -> str:
        if self.world_size == 1:
            return "1 process"
        parts = []
        if self.ddp:
            parts.append(f"DDP x{self.dp_replicate}")
        elif self.dp_replicate > 1:
            parts.append(f"HSDP replicas x{self.dp_replicate}")
        if self.dp_shard > 1:
            parts.append(f"FSDP2 x{self.dp_shard}")
        if self.tp > 1:
            parts.append(f"TP x{self.tp}")
        if self.pp > 1:
            parts.insert(0, f"PP x{self.pp}")
        return " . ".join(parts) + f" ({self.world_size} processes)"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.pp == 1:  # as layouts were recorded before pipeline parallelism
            del d["pp"]
        return d


# optimizers whose state is elementwise, so it shards and splits like the parameter it belongs to
SHARDABLE_OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "lion")


def check_fits(dp_replicate: int, dp_shard: int, tp: int, *, dims: ModelDims | None = None,
               batch_size: int | None = None, seq_len: int | None = None, optimizer: str | None = None,
               precision: str | None = None, pp: int = 1) -> None:
    """Degrees that multiply to the world size must also fit the model, the batch, the optimizer and the
    precision (for the estimator and for training alike): a one-line error naming the keys otherwise."""
    sharded = dp_shard > 1 or tp > 1 or pp > 1
    if batch_size is not None and batch_size % (dp_replicate * dp_shard):
        raise RecipeError(f"train.batch_size: {batch_size} sequences cannot be split evenly over "
                          f"{dp_replicate * dp_shard} data-parallel ranks (parallel.dp_replicate x parallel.dp_shard = "
                          f"{dp_replicate} x {dp_shard})")
    if tp > 1 and dims is not None:
        for what, count in (("model.n_heads", dims.n_heads), ("model.n_kv_heads", dims.n_kv_heads),
                            ("model.ffn_hidden", dims.ffn_hidden), ("the vocabulary size", dims.vocab_size)):
            if count % tp:
                raise RecipeError(f"parallel.tp={tp} does not divide {what} ({count}): tensor parallelism splits it "
                                  "evenly over the tp processes")
    if dp_shard > 1 and dims is not None and dims.d_model % dp_shard:
        raise RecipeError(f"parallel.dp_shard={dp_shard} does not divide model.d_model ({dims.d_model}): FSDP2 "
                          "shards the fused q/k/v and gate/up projections on that dimension, and splits it evenly")
    if tp > 1 and seq_len is not None and seq_len % tp:
        raise RecipeError(f"parallel.tp={tp} does not divide train.seq_len ({seq_len}): sequence parallelism splits "
                          "every sequence evenly over the tp processes")
    if sharded and optimizer is not None and optimizer not in SHARDABLE_OPTIMIZERS:
        raise RecipeError(f"train.optimizer={optimizer} is not supported with sharded parameters (parallel.dp_shard > 1, "
                          f"parallel.tp > 1 or parallel.pp > 1); use one of {', '.join(SHARDABLE_OPTIMIZERS)}, or plain data "
                          "parallelism (parallel.dp_replicate)")
    if sharded and precision == "fp16":
        raise RecipeError("train.precision=fp16 is not supported with sharded parameters (parallel.dp_shard > 1, "
                          "parallel.tp > 1 or parallel.pp > 1): its gradient scaler is per process; use bf16")


def resolve_layout(cfg: ParallelConfig, world_size: int, *, dims: ModelDims | None = None,
                   batch_size: int | None = None, seq_len: int | None = None, optimizer: str | None = None,
                   precision: str | None = None) -> Layout:
    """The degrees of ``parallel:`` for ``world_size`` processes, or a one-line error naming the keys.

    Checked: the degrees multiply to the world size; tensor parallelism splits heads, key/value heads, the
    MLP width, the vocabulary and the sequence evenly, and FSDP2 the model width; the global batch splits
    over the data-parallel ranks; the optimizer and precision work on sharded parameters; the pipeline's
    stages, schedule and micro-batches fit the model and the batch.
    """
    degrees = {k: getattr(cfg, k) for k in MESH_DIMS}
    fixed = {k: v for k, v in degrees.items() if v != AUTO}
    product = cfg.pp
    for v in fixed.values():
        product *= v
    auto = [k for k, v in degrees.items() if v == AUTO]
    if auto:
        if world_size % product:
            named = " * ".join(f"parallel.{k}" for k in ({"pp": cfg.pp} if cfg.pp > 1 else {}) | fixed)
            raise RecipeError(f"{named} = {product} does not divide the world size {world_size} "
                              f"(processes: --nproc x --nnodes); parallel.{auto[0]}=-1 takes what the others leave")
        degrees[auto[0]] = world_size // product
    layout = Layout(**degrees, pp=cfg.pp)
    if layout.world_size != world_size:
        shown = " * ".join(str(v) for v in ([cfg.pp] if cfg.pp > 1 else []) + [degrees[k] for k in MESH_DIMS])
        named = "pp * " * (cfg.pp > 1) + "dp_replicate * dp_shard * tp"
        raise RecipeError(f"parallel: {named} = {shown} = {layout.world_size} does not match the "
                          f"world size {world_size} (processes: --nproc x --nnodes)")
    check_fits(layout.dp_replicate, layout.dp_shard, layout.tp, dims=dims, batch_size=batch_size, seq_len=seq_len,
               optimizer=optimizer, precision=precision, pp=layout.pp)
    if layout.pp > 1:
        check_pipeline(cfg, layout, dims=dims, batch_size=batch_size)
    return layout


def check_pipeline(cfg: ParallelConfig, layout: Layout, *, dims: ModelDims | None = None,
                   batch_size: int | None = None) -> None:
    """The schedule exists in this torch, the stages fit the blocks, the micro-batches the schedule and batch."""
    from lmforge.distributed.stages import split_blocks, virtual_stages

    virtual = virtual_stages(cfg.pp_schedule, cfg.pp_virtual_stages)
    pipeline_schedule_class(cfg.pp_schedule)
    if dims is not None:
        split_blocks(dims, layout.pp * virtual, cfg.pp_split)
    micro = microbatches(cfg, layout)
    if micro < layout.pp:
        raise RecipeError(f"parallel.pp_microbatches={micro}: the {cfg.pp_schedule} schedule needs at least as many "
                          f"micro-batches as pipeline stages (parallel.pp={layout.pp})")
    if virtual > 1 and micro % layout.pp:
        raise RecipeError(f"parallel.pp_microbatches={micro}: the {cfg.pp_schedule} schedule runs them in rounds of "
                          f"parallel.pp={layout.pp}; use a multiple of it")
    if batch_size is not None and (batch_size // layout.dp) % micro:
        raise RecipeError(f"parallel.pp_microbatches={micro} does not divide each data-parallel rank's share of "
                          f"train.batch_size ({batch_size} / {layout.dp} = {batch_size // layout.dp} sequences)")


def microbatches(cfg: ParallelConfig, layout: Layout) -> int:
    return cfg.pp_microbatches or layout.pp


# parallel.pp_schedule -> the class name in torch.distributed.pipelining
SCHEDULE_CLASSES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B", "interleaved_1f1b": "ScheduleInterleaved1F1B",
                    "zero_bubble": "ScheduleInterleavedZeroBubble"}


def pipeline_schedule_class(schedule: str):
    """torch's class for ``parallel.pp_schedule``, or a one-line error when this torch does not have it."""
    try:
        from torch.distributed import pipelining
    except ImportError:
        pipelining = None
    found = getattr(pipelining, SCHEDULE_CLASSES[schedule], None)
    if found is None:
        import torch

        raise RecipeError(f"parallel.pp_schedule={schedule}: this torch ({torch.__version__}) has no "
                          f"torch.distributed.pipelining.{SCHEDULE_CLASSES[schedule]}")
    return found


def build_mesh(layout: Layout, device_type: str):
    """The device mesh ``(pp, dp_replicate, dp_shard, tp)`` over all processes (size-1 dims included)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (layout.pp, layout.dp_replicate, layout.dp_shard, layout.tp), mesh_dim_names=MESH)
