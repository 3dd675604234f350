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
@click.option("--recipient", "recipients", type=click.Path(path_type=Path), multiple=True,
              help="Encrypt the file for this public key (X25519 or RSA; repeatable): no plaintext on disk.")
@click.option("--sign-with", type=click.Path(path_type=Path),
              help="Sign the file with this EC P-256 private key (OpenSSF model-signing, <output>.sig).")
def export(recipe, overrides, run_dir, checkpoint, fmt, output, recipients, sign_with):
    """Consolidate a checkpoint (sharded or not) into one safetensors file with canonical tensor names, or
    write it as a Hugging Face model folder (--format hf)."""
    from lmforge.checkpoint.export import default_output, export_checkpoint
    from lmforge.checkpoint.hf_export import export_hf
    from lmforge.checkpoint.load import CHOICES, pick

    seal = None
    if recipients or sign_with:
        if fmt == "hf":
            raise click.UsageError("--recipient/--sign-with: only with --format safetensors (a Hugging Face folder "
                                   "is encrypted with lmforge secure encrypt)")
        from lmforge.secure.keys import ENCRYPTION_KINDS, load_public
        from lmforge.secure.seal import Seal

        seal = Seal(tuple(load_public(r, ENCRYPTION_KINDS, "--recipient") for r in recipients), sign_with)
    if checkpoint is None or str(checkpoint) in CHOICES:
        _, run = resolve(recipe, run_dir, overrides)
        checkpoint = pick(run, checkpoint)
    checkpoint = checkpoint.resolve()  # "." names no folder: its output would have no name
    output = output or default_output(checkpoint, fmt)
    result = export_hf(checkpoint, output) if fmt == "hf" else export_checkpoint(checkpoint, output, seal)
    click.echo(f"exported step {result['step']} ({result['source_format']}): {result['tensors']} tensors, "
               f"{result['parameters']:,} parameters -> {result['output']}")
