"""``lmforge export``."""

from __future__ import annotations

from pathlib import Path

import click

from lmforge.command import common_options, resolve


@click.command()
@common_options
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint folder, exported file or HF folder (default: the run's latest; also: best).")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "hf"]), default="safetensors", show_default=True,
              help="safetensors: one file of canonical tensors; hf: a Hugging Face LlamaForCausalLM folder.")
@click.option("--output", type=click.Path(path_type=Path),
              help="File to write (default: <run>/export/step_N.safetensors); with --format hf, the folder "
                   "(default: <run>/export/step_N-hf).")
def export(recipe, overrides, run_dir, checkpoint, fmt, output):
    """Consolidate a checkpoint (sharded or not) into one safetensors file with canonical tensor names, or
    write it as a Hugging Face model folder (--format hf)."""
    from lmforge.checkpoint.export import default_output, export_checkpoint
    from lmforge.checkpoint.hf_export import export_hf
    from lmforge.checkpoint.load import CHOICES, pick

    if checkpoint is None or str(checkpoint) in CHOICES:
        _, run = resolve(recipe, run_dir, overrides)
        checkpoint = pick(run, checkpoint)
    checkpoint = checkpoint.resolve()  # "." names no folder: its output would have no name
    write = export_hf if fmt == "hf" else export_checkpoint
    result = write(checkpoint, output or default_output(checkpoint, fmt))
    click.echo(f"exported step {result['step']} ({result['source_format']}): {result['tensors']} tensors, "
               f"{result['parameters']:,} parameters -> {result['output']}")
