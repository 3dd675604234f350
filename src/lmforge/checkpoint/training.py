"""Training checkpoints in any layout: what the training loop saves and resumes from.

Sharded layouts (FSDP2, tensor parallel) write DCP from every process (``sharded.py``); one process and DDP
write ``formats.py``'s safetensors from rank 0. Either format resumes into every layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.checkpoint.formats import load_safetensors, read_state, restore_rng, save_checkpoint
from lmforge.checkpoint.sharded import (
    DCP_FORMAT,
    agreed_state,
    load_dcp_into,
    load_safetensors_into_sharded,
    save_sharded,
)
from lmforge.distributed.context import DistContext


def save_training_checkpoint(path: Path, model: torch.nn.Module, optimizer, state: dict, ctx: DistContext) -> None:
    """Sharded layouts: DCP from every process. One process or DDP: rank 0 writes safetensors."""
    if ctx.layout.sharded:
        save_sharded(path, model, optimizer, state, ctx)
        return
    if ctx.is_main:
        save_checkpoint(path, model, optimizer, dict(state, format="safetensors"))
    ctx.barrier()


def load_training_checkpoint(path: Path, model: torch.nn.Module, optimizer, ctx: DistContext) -> dict:
    """Load any checkpoint (safetensors or DCP) into a model of any layout; returns its JSON state."""
    path = Path(path)
    fmt = read_state(path, verify=False).get("format", "safetensors")
    if fmt != DCP_FORMAT and not ctx.layout.sharded:  # every rank verifies and loads the whole files
        return load_safetensors(path, model, optimizer, read_state(path, verify=True))
    state = agreed_state(path, ctx)
    if fmt == DCP_FORMAT:
        load_dcp_into(path, state, model, optimizer)
    else:
        load_safetensors_into_sharded(path, state, model, optimizer)
    restore_rng(state["rng"])
    return state
