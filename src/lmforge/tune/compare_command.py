"""``lmforge optimizers compare``: the click commands. torch and matplotlib are imported inside."""

from __future__ import annotations

import sys

import click

from lmforge.command import common_options, device_for, resolve


@click.group()
def optimizers():
    """Compare the seven optimizers on a recipe's data."""


def _floats(ctx, param, value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


@optimizers.command()
@common_options
@click.option("--optimizers", "names", default="adamw,adam,rmsprop,sgd,lion,adafactor,muon", show_default=True,
              help="Comma-separated optimizers to compare.")
@click.option("--steps", type=click.IntRange(min=2), help="Training steps per run (default: train.max_steps); every "
              "run sees the same train.batch_size x seq_len tokens per step.")
@click.option("--lr-factors", default="0.33,1,3", show_default=True, callback=_floats,
              help="Learning rates tried per optimizer, as multiples of its centre (train.lr x a per-optimizer ratio).")
def compare(recipe, overrides, run_dir, names, steps, lr_factors):
    """Train each optimizer on an equal token budget with a small learning-rate sweep, then report.

    Runs the recipe's data stages first if needed. Writes <run>/optimizers/: results.json, results.csv,
    loss_curves.png and recommendation.txt; a run already done with the same settings is reused.
    """
    from lmforge import pipeline
    from lmforge.tune.compare import check_compare, run_compare

    cfg, run = resolve(recipe, run_dir, overrides)
    names_list = [n.strip() for n in names.split(",") if n.strip()]
    steps = steps or cfg.train.max_steps
    check_compare(cfg, names_list, lr_factors, steps)  # before any data work
    pipeline.run_through(run, cfg, ["pack"], keep_recipe=True)  # the token shards every run trains on
    summary = run_compare(run, cfg, optimizers=names_list, lr_factors=lr_factors, steps=steps, device=device_for(cfg))
    print_table(summary["rows"], summary["settings"])
    click.echo(summary["recommendation"])
    click.echo(f"report: {run.stage_dir('optimizers')} (results.json, results.csv, loss_curves.png, recommendation.txt)")


def print_table(rows: list[dict], settings: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"optimizers: {settings['tokens']:,} tokens each ({settings['steps']} steps x "
                        f"{settings['tokens_per_step']:,}), {settings['model']} model", title_justify="left")
    for name, justify in (("optimizer", "left"), ("best lr", "right"), ("best val loss", "right"),
                          ("val loss per lr", "left"), ("tokens/s", "right"), ("optimizer state", "right")):
        table.add_column(name, justify=justify)
    for r in rows:
        sweep = "  ".join(f"{lr}: {'-' if v is None else f'{v:.4f}'}" for lr, v in r["sweep"].items())
        table.add_row(r["optimizer"], "" if r["best_lr"] is None else f"{r['best_lr']:g}",
                      "diverged" if r["best_val_loss"] is None else f"{r['best_val_loss']:.4f}", sweep,
                      f"{r['tokens_per_s'] or 0:,.0f}", f"{r['state_bytes'] / 2**20:.2f} MiB")
    Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(table)
