"""``lmforge finetune``: fine-tune a base model on the run's token shards (recipe section ``finetune:``)."""

from __future__ import annotations

import shutil

import click

from lmforge.command import common_options, require_run_dir, resolve


@click.command()
@common_options
@click.option("--base", help="The model to start from (overrides finetune.base): a checkpoint folder, an exported "
                             "file, a run directory, a Hugging Face folder, or latest/best/selected.")
@click.option("--resume", is_flag=True, help="Continue from the latest fine-tuning checkpoint.")
@click.option("--redo", is_flag=True, help="Discard earlier fine-tuning (finetune/) and start over.")
def finetune(recipe, overrides, run_dir, base, resume, redo):
    """Fine-tune a trained model on the run's data: fully, with parts frozen, or with LoRA adapters (peft).

    Writes <run>/finetune/: checkpoints, metrics.jsonl, summary.json, and for LoRA adapter/ in peft's format
    for the model's Hugging Face export (lmforge export --format hf).
    Also a stage of lmforge run (when the recipe has its section).
    """
    from lmforge.core.atomic import atomic_write_text
    from lmforge.distributed.context import init_distributed, shutdown
    from lmforge.errors import LmforgeError
    from lmforge.transfer.stage import STAGE, FinetuneRunDir, check_finetune, run_finetune

    if base is not None:
        overrides = (*overrides, f"finetune.base={base}")
    cfg, run = resolve(recipe, run_dir, overrides)
    require_run_dir(run)
    plan = check_finetune(run, cfg, resume, redo=redo)  # refuses bad input before anything is written
    stage_dir = FinetuneRunDir(run).stage_dir(STAGE)
    if redo:
        shutil.rmtree(stage_dir, ignore_errors=True)
    new = not stage_dir.exists()
    atomic_write_text(stage_dir / "recipe.yaml", cfg.to_yaml())
    ctx = init_distributed(cfg.train.device)
    try:
        summary = run_finetune(run, cfg, ctx, plan, resume)
    except LmforgeError:
        if new and FinetuneRunDir(run).latest_checkpoint() is None:  # refused before any training: leave no trace
            shutil.rmtree(stage_dir, ignore_errors=True)
        raise
    finally:
        shutdown(ctx)
    click.echo(f"fine-tuned ({summary['mode']}): validation loss {summary['base_val_loss']:.4f} -> "
               f"{summary['final_val_loss']:.4f}; {run.stage_dir(STAGE)}")
