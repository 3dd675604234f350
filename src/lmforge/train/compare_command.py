"""``lmforge optimizers compare``: the click commands. torch and matplotlib are imported inside."""

from __future__ import annotations

import sys

import click


def _common(func):
    from lmforge.cli import _common as common  # imported here: cli.py registers this group at its end

    return common(func)


@click.group()
def optimizers():
    """Compare the seven optimizers on a recipe's data."""


def _floats(ctx, param, value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


@optimizers.command()
@_common
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
    from lmforge.cli import _device, _resolve
    from lmforge.data.packing import TokenShards
    from lmforge.estimate.memory import default_momentum
    from lmforge.train.compare import LR_RATIO, compare_optimizers
    from lmforge.train.compare_report import recommend, summarize, write_report
    from lmforge.train.loop import sequence_length

    cfg, run_obj = _resolve(recipe, run_dir, overrides)
    names_list = [n.strip() for n in names.split(",") if n.strip()]
    steps = steps or cfg.train.max_steps
    results = compare_optimizers(run_obj, cfg, optimizers=names_list, lr_factors=lr_factors, steps=steps,
                                 device=_device(cfg))
    shards = TokenShards(run_obj.tokens("train"))
    dims = cfg.model.dims(shards.vocab_size)
    seq_len = sequence_length(cfg, dims.context_length)
    per_step = cfg.train.batch_size * seq_len
    momentum = {n: cfg.train.rmsprop.momentum if n == "rmsprop" else
                cfg.train.sgd.momentum if n == "sgd" else default_momentum(n) for n in names_list}
    rows = summarize(results, dims, per_step, momentum)
    text = recommend(rows)
    settings = {"recipe": cfg.name, "steps": steps, "tokens_per_step": per_step, "tokens": steps * per_step,
                "batch_size": cfg.train.batch_size, "seq_len": seq_len, "lr_factors": lr_factors,
                "lr_centres": {n: cfg.train.lr * LR_RATIO[n] for n in names_list}, "schedule": cfg.train.schedule,
                "precision": cfg.train.precision, "model": cfg.model.size, "seed": cfg.seed}
    out = run_obj.root / "optimizers"
    write_report(out, results, rows, text, settings)
    print_table(rows, settings)
    click.echo(text)
    click.echo(f"report: {out} (results.json, results.csv, loss_curves.png, recommendation.txt)")


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
