"""Pipeline parallelism (``parallel.pp``): the decoder's blocks split into stages across process groups,
run by ``torch.distributed.pipelining``'s schedules. Applied from outside the model file, like the rest.

Each process builds the seeded full decoder (so every stage starts from the weights one process would),
then keeps only its stages' parts in ``PipelineParts``: the blocks under their own names
(``layers.<i>``), the embedding with the first stage, the final norm and LM head with the last. Names are
the single model's, so checkpoints, the optimizer's weight-decay groups and resharding to any other
layout work unchanged. With tied embeddings the last stage keeps its own copy of the table; after each
backward the two copies' gradients are summed over the (first, last) pair of processes, so both take the
same update and stay equal.

Within a stage, tensor parallelism and FSDP2 apply as without pipelining (``parallelize.py``); the
activation between stages travels as the local tensor (under sequence parallelism, this process's slice
of the sequence) and becomes a DTensor again on arrival.
"""

from __future__ import annotations


import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from lmforge.distributed.config import ParallelConfig
from lmforge.distributed.context import DistContext
from lmforge.distributed.gradients import clip_grad_norm_, scalar
from lmforge.distributed.layout import microbatches, pipeline_schedule_class
from lmforge.distributed.stages import split_blocks, stages_of, virtual_stages
from lmforge.model.decoder import Decoder
from lmforge.model.fused_ops import IGNORE_INDEX


class PipelineParts(nn.Module):
    """This process's share of a ``Decoder``, under the decoder's own parameter names."""

    def __init__(self, model: Decoder, blocks: list[int], first: bool, last: bool):
        super().__init__()
        self.dims = model.dims
        self.first, self.last = first, last
        if first or (last and model.dims.tie_embeddings):  # the last stage's copy of a tied table
            self.embed_tokens = model.embed_tokens
        if first:
            self.embed_dropout = model.embed_dropout
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in blocks})
        if last:
            self.final_norm = model.final_norm
            self.lm_head = model.lm_head
        self.register_buffer("rope_cos", model.rope_cos, persistent=False)
        self.register_buffer("rope_sin", model.rope_sin, persistent=False)
        self.stage_modules: list[StageModule] = []  # set once the blocks are final (checkpointing, compile)

    @property
    def tied_copy(self) -> bool:
        """The embedding here is the last stage's copy of a tied table (the first stage's is on another process)."""
        return self.last and not self.first and self.dims.tie_embeddings


class StageModule(nn.Module):
    """One pipeline stage's forward: tokens or the previous stage's activation in; the activation, or on the
    last stage the logits, out (local tensors; DTensors inside under tensor parallelism)."""

    def __init__(self, parts: PipelineParts, keys: list[str], first: bool, last: bool, tp_mesh=None):
        super().__init__()
        self.first, self.last, self.tp_mesh = first, last, tp_mesh
        if first or (last and parts.dims.tie_embeddings):
            self.embed_tokens = parts.embed_tokens  # on the last stage: the tied head's table, for FSDP2's grouping
        if first:
            self.embed_dropout = parts.embed_dropout
        self.layers = nn.ModuleList(parts.layers[k] for k in keys)
        if last:
            self.final_norm, self.lm_head = parts.final_norm, parts.lm_head
        self.register_buffer("rope_cos", parts.rope_cos, persistent=False)
        self.register_buffer("rope_sin", parts.rope_sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            x = self.embed_dropout(self.embed_tokens(x))  # (B, T, C); a DTensor sharded on T under TP
        elif self.tp_mesh is not None:
            x = DTensor.from_local(x, self.tp_mesh, [Shard(1)], run_check=False)
        T = x.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for layer in self.layers:
            x = layer(x, cos, sin)
        if self.last:
            x = self.lm_head(self.final_norm(x))  # (B, T, V); sharded on V under TP
        return x.to_local() if isinstance(x, DTensor) else x


class Pipeline(nn.Module):
    """The schedule over this process's stages. ``forward(tokens, targets)`` is the evaluation loss (every
    process of the pipeline returns it); ``forward_backward`` the training step's gradients."""

    def __init__(self, parts: PipelineParts, schedule, ctx: DistContext, stage_modules: list[StageModule],
                 n_microbatches: int, tie_group=None):
        super().__init__()
        self.parts = parts
        self.schedule, self.ctx = schedule, ctx
        self.stage_modules = stage_modules
        self.n_microbatches = n_microbatches
        self.tie_group = tie_group
        self.pp_group = ctx.mesh["pp"].get_group()
        self.last_rank = dist.get_global_rank(self.pp_group, ctx.layout.pp - 1)

    def _run(self, tokens: torch.Tensor, targets: torch.Tensor, train: bool) -> list[torch.Tensor]:
        parts = self.parts
        args = (tokens,) if parts.first else ()
        losses: list[torch.Tensor] = []
        kwargs = {"target": targets, "losses": losses} if parts.last else {}
        if train:
            self.schedule.step(*args, return_outputs=False, **kwargs)
        else:
            self.schedule.eval(*args, **kwargs)
        return losses

    def forward_backward(self, batch: torch.Tensor) -> float:
        """Gradients of the mean loss of ``batch`` (B, T+1) in this process's stages; returns that loss on the
        last stage's processes, 0 elsewhere."""
        losses = self._run(batch[:, :-1], batch[:, 1:], train=True)
        self._sync_tied_gradients()
        return sum(scalar(l) for l in losses) / len(losses) if losses else 0.0

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss over ``targets`` (B, T), on every process of the pipeline. The batch is padded to a
        multiple of the micro-batches with rows whose targets are ignored."""
        B, T = targets.shape
        rows = -(-B // self.n_microbatches) * self.n_microbatches
        if rows > B:
            pad = rows - B
            tokens = torch.cat([tokens, tokens[:1].expand(pad, -1)])
            targets = torch.cat([targets, torch.full((pad, T), IGNORE_INDEX, dtype=targets.dtype,
                                                     device=targets.device)])
        per_micro = rows // self.n_microbatches
        losses = self._run(tokens, targets, train=False)
        total = torch.zeros((), dtype=torch.float64, device=targets.device)
        for i, loss in enumerate(losses):
            real = min(per_micro, max(0, B - i * per_micro))
            if real:
                total += scalar(loss) * real
        total /= B
        dist.broadcast(total, src=self.last_rank, group=self.pp_group)
        return total

    def _sync_tied_gradients(self) -> None:
        if self.tie_group is None:
            return
        weight = self.parts.embed_tokens.weight
        grad = weight.grad
        if isinstance(grad, DTensor) and grad.placements != weight.placements:
            # under TP the lookup's gradient comes back whole (Replicate), the head's vocabulary-sharded: both as
            # the weight is, a local slice, so the pair sums the same rows
            grad = weight.grad = grad.redistribute(placements=weight.placements)
        dist.all_reduce(grad.to_local() if isinstance(grad, DTensor) else grad, group=self.tie_group)

    def clip_grad_norm_(self, max_norm: float) -> float:
        """The gradient norm over every stage (a tied table counted once), and clipping by it."""
        parts = self.parts
        counted = [p for name, p in parts.named_parameters() if not (parts.tied_copy and "embed_tokens" in name)]
        return clip_grad_norm_(list(parts.parameters()), max_norm, norm_of=counted, group=self.pp_group)


def pipeline_loss(tp_mesh=None):
    """The schedule's loss: mean next-token cross-entropy of one micro-batch's logits (on vocabulary shards
    under tensor parallelism, inside ``loss_parallel``)."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if tp_mesh is not None:
            logits = DTensor.from_local(logits, tp_mesh, [Shard(2)], run_check=False)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    return loss


def build_pipeline(model: Decoder, ctx: DistContext, pcfg: ParallelConfig, apply_within) -> Pipeline:
    """Split ``model`` into this process's stages; ``apply_within(parts)`` applies tensor parallelism and
    the memory options to the parts, and returns the FSDP2 wrapper for the stage modules (or None)."""
    import warnings

    from torch.distributed.pipelining import PipelineStage

    # under FSDP2 x TP a stage returns its DTensor's local tensor, a view; the schedule only sends it (no in-place op)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPStageModule\) returned a view tensor")
    layout = ctx.layout
    virtual = virtual_stages(pcfg.pp_schedule, pcfg.pp_virtual_stages)
    n_stages = layout.pp * virtual
    ranges = split_blocks(model.dims, n_stages, pcfg.pp_split)
    mine = stages_of(layout.stage_rank(ctx.rank), layout.pp, virtual)
    parts = PipelineParts(model, [i for s in mine for i in ranges[s]], first=0 in mine, last=n_stages - 1 in mine)
    wrap = apply_within(parts)
    tp_mesh = ctx.mesh["tp"] if layout.tp > 1 else None
    modules = [StageModule(parts, [str(i) for i in ranges[s]], first=s == 0, last=s == n_stages - 1, tp_mesh=tp_mesh)
               for s in mine]
    if wrap is not None:
        for module in modules:
            wrap(module)
    parts.stage_modules = modules
    pp_group = ctx.mesh["pp"].get_group()
    stages = [PipelineStage(module, s, n_stages, ctx.device, group=pp_group) for s, module in zip(mine, modules)]
    n_micro = microbatches(pcfg, layout)
    cls = pipeline_schedule_class(pcfg.pp_schedule)
    loss = pipeline_loss(tp_mesh)
    schedule = cls(stages[0] if virtual == 1 else stages, n_microbatches=n_micro, loss_fn=loss)
    return Pipeline(parts, schedule, ctx, modules, n_micro, tie_group=_tie_group(ctx, model.dims.tie_embeddings, parts))


def _tie_group(ctx: DistContext, tied: bool, parts: PipelineParts):
    """The (first stage, last stage) pair of processes of each data/tensor coordinate, when embeddings are
    tied; every process takes part in creating every group, as ``new_group`` requires."""
    if not tied:
        return None
    n, last = ctx.layout.stage_size, ctx.layout.pp - 1
    mine = None
    for c in range(n):
        group = dist.new_group([c, last * n + c])
        if ctx.rank in (c, last * n + c):
            mine = group
    return mine
