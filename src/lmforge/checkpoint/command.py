"""``lmforge export``."""

from __future__ import annotations

from pathlib import Path

import click

from lmforge.command import common_options, resolve


@click.command()
@common_options
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint folder (default: the run's latest; also: best).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (default: <run>/export/step_N.safetensors).")
def export(recipe, overrides, run_dir, checkpoint, output):
    """Consolidate a checkpoint (sharded or not) into one safetensors file with canonical tensor names."""
    from lmforge.checkpoint.export import default_output, export_checkpoint
    from lmforge.checkpoint.load import CHOICES, pick

    if checkpoint is None or str(checkpoint) in CHOICES:
        _, run = resolve(recipe, run_dir, overrides)
        checkpoint = pick(run, checkpoint)
    checkpoint = checkpoint.resolve()  # "." names no folder: its output would have no name
    result = export_checkpoint(checkpoint, output or default_output(checkpoint))
    click.echo(f"exported step {result['step']} ({result['source_format']}): {result['tensors']} tensors, "
               f"{result['parameters']:,} parameters -> {result['output']}")
