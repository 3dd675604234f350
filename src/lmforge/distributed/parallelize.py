"""Parallelism applied to a single-device decoder from outside, in torchtitan's order:

1. tensor parallel (``parallel.tp``): column-wise q/k/v and gate/up projections, row-wise output and down
   projections, vocabulary-parallel embedding and LM head (loss computed on vocabulary shards with
   ``loss_parallel``), sequence parallel norms and residual stream between them;
2. activation checkpointing and ``torch.compile``, per block (``train.activation_checkpointing``,
   ``train.compile``);
3. FSDP2 ``fully_shard`` per block and at the root (``parallel.dp_shard``; with ``dp_replicate`` as well,
   HSDP), or DDP when the parameters are not sharded.

The helpers beside it keep the training loop's flow one line each: gradient sync on the last micro-batch
only, gradient clipping by the global norm across shards, and the loss context.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard

from lmforge.distributed.context import DistContext
from lmforge.model.fused_layout import clean_name, parts_of, permute_for_tp
from lmforge.train.config import TrainConfig


class VocabParallelHead(nn.Linear):
    """The LM head under tensor parallelism: its own forward (so the decoder calls it and the TP hooks run),
    giving logits sharded over the vocabulary for ``loss_parallel``."""


def apply_activation_checkpointing(model: nn.Module) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block)


def compile_model_parts(model: nn.Module, head: bool = True) -> None:
    """``torch.compile`` each block in place, and the final norm + LM head + loss (``Decoder.head``), where
    the compiler fuses the cross-entropy over the vocabulary that eager mode runs as separate passes."""
    for block in model.layers:
        block.compile()
    if head:
        model.head = torch.compile(model.head)


def apply_memory_options(model: nn.Module, cfg: TrainConfig, tensor_parallel: bool = False) -> None:
    """``train.activation_checkpointing`` and ``train.compile``, block by block: checkpointing first, so the
    compiled region is the checkpointed block, as torchtitan orders them. Under tensor parallelism each
    compiled block is checkpointed instead: torch 2.13 fails to compile a checkpointed block of DTensors
    (a DeviceMesh among the tensors saved for backward); the other order trains the same."""
    if cfg.compile and tensor_parallel:  # the head stays eager: its loss runs on vocabulary shards (loss_parallel)
        compile_model_parts(model, head=False)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.compile and not tensor_parallel:
        compile_model_parts(model)


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
    head = model.lm_head
    model.lm_head = VocabParallelHead(head.in_features, head.out_features, bias=False, device="meta")  # its weight is the old one
    model.lm_head.weight = head.weight
    parallelize_module(model, tp_mesh, {
        "embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=False),
        "final_norm": SequenceParallel(),
        "lm_head": ColwiseParallel(input_layouts=Shard(1), use_local_output=False),
    })
    if dims.tie_embeddings:  # both are Shard(0) on the vocabulary: one parameter again
        model.lm_head.weight = model.embed_tokens.weight
    model.embed_tokens.register_forward_hook(_settled)
    no_args = (None,) * 4  # cos, sin, cache, start_pos
    for block in model.layers:
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
    from torch.distributed.fsdp import fully_shard

    fused = {id(p) for name, p in model.named_parameters() if parts_of(clean_name(name), model.dims)}

    def shard_dim(p: nn.Parameter) -> Shard:
        # shard the dim tensor parallelism leaves whole; fused q/k/v and gate/up on dim 1 so rows stay whole
        tp_rows = isinstance(p, DTensor) and any(isinstance(q, Shard) and q.dim == 0 for q in p.placements)
        return Shard(1) if p.dim() == 2 and (tp_rows or id(p) in fused) else Shard(0)

    for block in model.layers:
        fully_shard(block, mesh=dp_mesh, shard_placement_fn=shard_dim)
    fully_shard(model, mesh=dp_mesh, shard_placement_fn=shard_dim)


def parallelize(model: nn.Module, ctx: DistContext, train: TrainConfig) -> nn.Module:
    """Apply the layout of ``ctx`` to ``model`` in place; returns the module the training loop calls."""
    layout, mesh = ctx.layout, ctx.mesh
    if layout.tp > 1:
        apply_tensor_parallel(model, mesh["tp"])
    apply_memory_options(model, train, tensor_parallel=layout.tp > 1)
    if layout.fsdp:
        apply_fsdp(model, mesh["dp_replicate", "dp_shard"] if layout.dp_replicate > 1 else mesh["dp_shard"])
        return model
    if layout.ddp:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    return model


def reshard(model: nn.Module) -> None:
    """Put FSDP2's sharded parameters back in place (a forward without backward, like evaluation, leaves
    the root's gathered): memory is freed, and checkpoints and optimizers see the sharded parameters."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
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


def clip_grad_norm_(parameters, max_norm: float) -> float:
    """torch's clip_grad_norm_, with the norm taken over all shards (a DTensor norm made whole first)."""
    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    if math.isfinite(max_norm):  # no clipping (train.grad_clip: null): the norm alone, for the finite check
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return float(total)


def loss_context(ctx: DistContext):
    """Under tensor parallelism the loss is computed on vocabulary shards (forward and backward)."""
    if ctx.layout.tp > 1:
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()
    return contextlib.nullcontext()


def scalar(t: torch.Tensor) -> float:
    """A loss as a Python float (a replicated DTensor under tensor parallelism)."""
    t = t.detach()
    return float(t.full_tensor() if isinstance(t, DTensor) else t)
