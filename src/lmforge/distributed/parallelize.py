"""Parallelism applied to a single-device decoder from outside, in torchtitan's order:

1. tensor parallel (``parallel.tp``): column-wise q/k/v and gate/up projections, row-wise output and down
   projections, vocabulary-parallel embedding and LM head (loss computed on vocabulary shards with
   ``loss_parallel``), sequence parallel norms and residual stream between them;
2. activation checkpointing and ``torch.compile``, per block (``train.activation_checkpointing``,
   ``train.compile``);
3. FSDP2 ``fully_shard`` per block and at the root (``parallel.dp_shard``; with ``dp_replicate`` as well,
   HSDP), or DDP when the parameters are not sharded;
4. with ``parallel.pp``, the blocks split into pipeline stages first (``pipeline.py``), the steps above
   applied to each process's share, FSDP2's root being each stage.

The helpers beside it keep the training loop's flow one line each: gradient sync on the last micro-batch
only and the loss context (clipping by the norm across shards: ``gradients.py``).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard

from lmforge.distributed.context import DistContext
from lmforge.model.fused_layout import clean_name, parts_of, permute_for_tp
from lmforge.train.config import TrainConfig


class VocabParallelHead(nn.Linear):
    """The LM head under tensor parallelism: its own forward (so the decoder calls it and the TP hooks run),
    giving logits sharded over the vocabulary for ``loss_parallel``."""


def blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of a model or of a pipeline stage's parts (``layers`` a list or a dict by index)."""
    return [block for _, block in model.layers.named_children()]


def apply_activation_checkpointing(model: nn.Module) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for key, block in list(model.layers.named_children()):
        setattr(model.layers, key, checkpoint_wrapper(block))


def compile_model_parts(model: nn.Module, head: bool = True) -> None:
    """``torch.compile`` each block in place, and the final norm + LM head + loss (``Decoder.head``), where
    the compiler fuses the cross-entropy over the vocabulary that eager mode runs as separate passes."""
    for block in blocks(model):
        block.compile()
    if head:
        model.head = torch.compile(model.head)


def apply_memory_options(model: nn.Module, cfg: TrainConfig, tensor_parallel: bool = False,
                         head: bool = True) -> None:
    """``train.activation_checkpointing`` and ``train.compile``, block by block: checkpointing first, so the
    compiled region is the checkpointed block, as torchtitan orders them. Under tensor parallelism each
    compiled block is checkpointed instead: torch 2.13 fails to compile a checkpointed block of DTensors
    (a DeviceMesh among the tensors saved for backward); the other order trains the same."""
    if cfg.compile and tensor_parallel:  # the head stays eager: its loss runs on vocabulary shards (loss_parallel)
        compile_model_parts(model, head=False)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.compile and not tensor_parallel:
        compile_model_parts(model, head=head)


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    # DTensor warns that the gradient norm over (dp_shard, tp) takes two all-reduces; expected, and once a step
    logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
    tp = tp_mesh.size()
    dims = model.dims
    permute_for_tp(model, dims, tp)
    plan = {}  # a pipeline stage's parts may lack the embedding or the head
    if hasattr(model, "embed_tokens"):
        plan["embed_tokens"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=False)
    if hasattr(model, "lm_head"):
        head = model.lm_head
        model.lm_head = VocabParallelHead(head.in_features, head.out_features, bias=False, device="meta")  # its weight is the old one
        model.lm_head.weight = head.weight
        plan["final_norm"] = SequenceParallel()
        plan["lm_head"] = ColwiseParallel(input_layouts=Shard(1), use_local_output=False)
    parallelize_module(model, tp_mesh, plan)
    if dims.tie_embeddings and "lm_head" in plan:  # both are Shard(0) on the vocabulary: one parameter again
        model.lm_head.weight = model.embed_tokens.weight
    if "embed_tokens" in plan:
        model.embed_tokens.register_forward_hook(_settled)
    no_args = (None,) * 4  # cos, sin, cache, start_pos
    for block in blocks(model):
        parallelize_module(block, tp_mesh, {
            "attn_norm": SequenceParallel(),
            "attn": PrepareModuleInput(input_layouts=(Shard(1), *no_args), desired_input_layouts=(Replicate(), *no_args)),
            "attn.qkv_proj": ColwiseParallel(),
            "attn.out_proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
            "mlp_norm": SequenceParallel(),
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "mlp.gate_up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
        })
        block.attn.n_heads //= tp  # this process's heads
        block.attn.n_kv_heads //= tp


def _settled(module: nn.Module, inputs, output: DTensor) -> DTensor:
    """The residual stream enters the blocks as a DTensor whose local shard is a plain tensor, its
    reduce-scatter done: a compiled block handed a pending collective (AsyncCollectiveTensor) fails with
    torch 2.13 (no-grad forward), and the residual stream kept as local tensors instead gives wrong
    gradients through compiled blocks. One copy of B x T/tp x C."""
    return output.clone()


def apply_fsdp(model: nn.Module, dp_mesh) -> None:
    """``fully_shard`` every block, then the model at the root."""
    shard_blocks(model, dp_mesh)(model)


def shard_blocks(model: nn.Module, dp_mesh):
    """``fully_shard`` every block of ``model``; returns the function that wraps a root (the model itself, or
    each pipeline stage of it) with the same placements."""
    from torch.distributed.fsdp import fully_shard

    fused = {id(p) for name, p in model.named_parameters() if parts_of(clean_name(name), model.dims)}

    def shard_dim(p: nn.Parameter) -> Shard:
        # shard the dim tensor parallelism leaves whole; fused q/k/v and gate/up on dim 1 so rows stay whole
        tp_rows = isinstance(p, DTensor) and any(isinstance(q, Shard) and q.dim == 0 for q in p.placements)
        return Shard(1) if p.dim() == 2 and (tp_rows or id(p) in fused) else Shard(0)

    for block in blocks(model):
        fully_shard(block, mesh=dp_mesh, shard_placement_fn=shard_dim)
    return lambda root: fully_shard(root, mesh=dp_mesh, shard_placement_fn=shard_dim)


def data_parallel_mesh(ctx: DistContext):
    return ctx.mesh["dp_replicate", "dp_shard"] if ctx.layout.dp_replicate > 1 else ctx.mesh["dp_shard"]


def parallelize(model: nn.Module, ctx: DistContext, train: TrainConfig, pipeline=None) -> nn.Module:
    """Apply the layout of ``ctx`` to ``model`` in place; returns the module the training loop calls (with
    ``parallel.pp``, the ``Pipeline``; ``pipeline`` is the recipe's ``parallel:`` section)."""
    layout, mesh = ctx.layout, ctx.mesh
    if layout.pp > 1:
        from lmforge.distributed.pipeline import build_pipeline

        def within(parts: nn.Module):
            if layout.tp > 1:
                apply_tensor_parallel(parts, mesh["tp"])
            apply_memory_options(parts, train, tensor_parallel=layout.tp > 1, head=False)
            return shard_blocks(parts, data_parallel_mesh(ctx)) if layout.fsdp else None

        return build_pipeline(model, ctx, pipeline, within)
    if layout.tp > 1:
        apply_tensor_parallel(model, mesh["tp"])
    apply_memory_options(model, train, tensor_parallel=layout.tp > 1)
    if layout.fsdp:
        apply_fsdp(model, data_parallel_mesh(ctx))
        return model
    if layout.ddp:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    return model


def reshard(model: nn.Module) -> None:
    """Put FSDP2's sharded parameters back in place (a forward without backward, like evaluation, leaves
    the root's gathered): memory is freed, and checkpoints and optimizers see the sharded parameters."""
    from torch.distributed.fsdp import FSDPModule

    for root in [model, *getattr(model, "stage_modules", ())]:  # a pipeline's stages are FSDP2 roots of their own
        for module in root.modules():
            if isinstance(module, FSDPModule):
                module.reshard()


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool):
    """Reduce gradients across data-parallel ranks only where ``enabled`` (the last micro-batch)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if enabled:
        yield
    elif isinstance(module, DistributedDataParallel):
        with module.no_sync():
            yield
    elif isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


def loss_context(ctx: DistContext):
    """Under tensor parallelism the loss is computed on vocabulary shards (forward and backward)."""
    if ctx.layout.tp > 1:
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()
    return contextlib.nullcontext()
