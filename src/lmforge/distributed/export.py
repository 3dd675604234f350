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

import click


def _common(func):
    from lmforge.cli import _common as common  # imported here: cli.py registers this command at its end

    return common(func)


def default_output(checkpoint: Path) -> Path:
    """``<run>/export/step_N.safetensors`` for a run's checkpoint, else beside the checkpoint folder."""
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "export" / f"{checkpoint.name}.safetensors"
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

    from lmforge.core.atomic import atomic_write_with
    from lmforge.distributed.checkpoint import consolidated_weights
    from lmforge.errors import LmforgeError

    check_output(output)
    weights, state = consolidated_weights(checkpoint)
    metadata = {"format": "pt", "lmforge.layout": "canonical", "lmforge.model": json.dumps(state["resume_key"]["model"]),
                "lmforge.step": str(state["step"]), "lmforge.source_format": state.get("format", "safetensors")}
    try:
        atomic_write_with(output, lambda tmp: save_file(weights, str(tmp), metadata=metadata))
    except (OSError, SafetensorError) as exc:  # nothing is left behind: the temporary file is removed
        raise LmforgeError(f"export --output {output}: cannot write there ({getattr(exc, 'strerror', None) or exc})") from exc
    return {"output": str(output), "tensors": len(weights), "parameters": sum(t.numel() for t in weights.values()),
            "step": state["step"], "source_format": metadata["lmforge.source_format"]}


@click.command()
@_common
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint folder (default: the run's latest).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (default: <run>/export/step_N.safetensors).")
def export(recipe, overrides, run_dir, checkpoint, output):
    """Consolidate a checkpoint (sharded or not) into one safetensors file with canonical tensor names."""
    from lmforge.cli import _resolve
    from lmforge.evaluate.stage import pick_checkpoint

    if checkpoint is None:
        _, run_obj = _resolve(recipe, run_dir, overrides)
        checkpoint = pick_checkpoint(run_obj, None)
    checkpoint = checkpoint.resolve()  # "." names no folder: its output would have no name
    result = export_checkpoint(checkpoint, output or default_output(checkpoint))
    click.echo(f"exported step {result['step']} ({result['source_format']}): {result['tensors']} tensors, "
               f"{result['parameters']:,} parameters -> {result['output']}")
