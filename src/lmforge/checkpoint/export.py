"""``lmforge export``: any checkpoint (sharded DCP or safetensors) -> one safetensors file of whole tensors.

The tensors carry canonical names, the same whatever layout trained them: q/k/v and gate/up as separate
projections (``layers.N.attn.q_proj.weight``, ``layers.N.mlp.gate_proj.weight``, Hugging Face Llama's
names); with tied embeddings the table is stored once, as ``embed_tokens.weight``. The file's metadata
holds the model dimensions (``lmforge.model``, JSON) and the step. The checkpoint's integrity manifest
is checked before anything is read; the file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.rundir import RunDir


def default_output(checkpoint: Path) -> Path:
    """``<run>/export/step_N.safetensors`` for a run's checkpoint, else beside the checkpoint folder."""
    if len(checkpoint.parents) > 2 and RunDir(checkpoint.parents[2]).checkpoints == checkpoint.parent:
        return RunDir(checkpoint.parents[2]).stage_dir("export") / f"{checkpoint.name}.safetensors"
    return checkpoint.with_name(f"{checkpoint.name}.safetensors")


def check_output(output: Path) -> None:
    """Refuse, before any checkpoint is read, an output that names a folder or lies under a file."""
    from lmforge.errors import LmforgeError

    if output.is_dir():
        raise LmforgeError(f"export --output {output}: is a folder; name the file to write")
    parent = next(p for p in output.absolute().parents if p.exists())  # the nearest part that exists
    if not parent.is_dir():
        raise LmforgeError(f"export --output {output}: {parent} is a file, not a folder")


def export_checkpoint(checkpoint: Path, output: Path) -> dict:
    """Consolidate ``checkpoint`` into ``output``; returns what was written."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from lmforge.checkpoint.load import consolidated_weights
    from lmforge.core.atomic import atomic_write_with
    from lmforge.errors import LmforgeError

    check_output(output)
    weights, state = consolidated_weights(checkpoint)
    metadata = {"format": "pt", "lmforge.layout": "canonical", "lmforge.model": json.dumps(state["resume_key"]["model"]),
                "lmforge.step": str(state["step"]), "lmforge.source_format": state.get("format", "safetensors")}
    if "seq_len" in state["resume_key"]:  # what the model was trained with (evaluation scores at it)
        metadata["lmforge.seq_len"] = str(state["resume_key"]["seq_len"])
    try:
        atomic_write_with(output, lambda tmp: save_file(weights, str(tmp), metadata=metadata))
    except (OSError, SafetensorError) as exc:  # nothing is left behind: the temporary file is removed
        raise LmforgeError(f"export --output {output}: cannot write there ({getattr(exc, 'strerror', None) or exc})") from exc
    return {"output": str(output), "tensors": len(weights), "parameters": sum(t.numel() for t in weights.values()),
            "step": state["step"], "source_format": metadata["lmforge.source_format"]}
