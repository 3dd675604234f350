"""``lmforge merge``: merge models into one (recipe section ``merge:``)."""

from __future__ import annotations

import click

from lmforge.command import common_options, device_for, require_run_dir, resolve


@click.command()
@common_options
@click.option("--input", "inputs", multiple=True, help="A model to merge (repeat; overrides merge.inputs): a "
              "checkpoint folder, an exported file, a run directory, a Hugging Face folder, or latest / best / "
              "selected / finetuned.")
@click.option("--method", type=click.Choice(["linear", "greedy_soup", "task_arithmetic", "ties", "dare_linear",
                                             "dare_ties", "slerp"]), help="Overrides merge.method.")
def merge(recipe, overrides, run_dir, inputs, method):
    """Merge two or more models of one architecture and tokenizer (soups, task arithmetic, TIES, DARE, SLERP),
    tensor by tensor, into <run>/merge/model.safetensors (--checkpoint merged), and evaluate the merge against
    its inputs, the base and their ensemble: merge/summary.md and summary.json.
    Also a stage of lmforge run (when the recipe has its section).
    """
    import json

    from lmforge.merge.stage import check_merge, run_merge

    if inputs:
        overrides = (*overrides, f"merge.inputs={json.dumps(list(inputs))}")
    if method is not None:
        overrides = (*overrides, f"merge.method={method}")
    cfg, run = resolve(recipe, run_dir, overrides)
    require_run_dir(run)
    device = device_for(cfg)
    plan = check_merge(run, cfg)  # refuses bad input before anything is written
    summary = run_merge(run, cfg, plan, device)
    click.echo(f"merged {len(plan.inputs)} models ({summary['method']}) -> {run.root / summary['output']}")
    evaluation = summary.get("evaluation")
    if evaluation is not None:
        for name, entry in evaluation["models"].items():
            if "val" in entry:
                click.echo(f"  {name}: val loss {entry['val']['loss']:.4f}")
        won = evaluation["verdict"]["val_loss"]
        click.echo(f"  the merge {'beat' if won else 'did not beat'} every input on validation loss")
