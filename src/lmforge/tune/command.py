"""``lmforge tune``: the hyperparameter search stage. Optuna and torch are imported inside the command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lmforge.command import common_options, resolve


@click.command()
@common_options
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run trials in this many processes on this machine, sharing the study's storage.")
@click.option("--worker-id", type=click.IntRange(min=0), hidden=True)
@click.option("--tune-dir", type=click.Path(file_okay=False, path_type=Path), hidden=True)
def tune(recipe, overrides, run_dir, workers, worker_id, tune_dir):
    """Search hyperparameters with Optuna: the space, sampler and pruner are the recipe's `tune:` section.

    The data stages run first where needed; each trial trains the recipe with its sampled values on those token
    shards. The study lives in <run>/tune/study.db (or tune.storage); run the same command again to
    continue it. Writes <run>/tune/best.yaml, trials.csv, importances.json and plots.
    """
    from lmforge import pipeline
    from lmforge.tune.study import plan_study, run_study, run_worker_process

    cfg, run = resolve(recipe, run_dir, overrides)
    tune_dir = tune_dir or run.stage_dir("tune")
    if worker_id is not None:
        run_worker_process(run, cfg, tune_dir, worker_id)
        return
    pipeline.check_fits(run, cfg, ["pack"])  # the run's data fits the recipe: checked before plan_study writes
    plan = plan_study(cfg, tune_dir)  # the space, the strategy and the storage: before any data work
    pipeline.run_through(run, cfg, ["pack"], keep_recipe=True)  # the token shards every trial trains on
    print_summary(run_study(run, cfg, workers=workers, tune_dir=tune_dir, plan=plan))


MAX_ROWS = 30


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    rows, title = summary["rows"], f"study {summary['study']}"
    if len(rows) > MAX_ROWS:  # a long study: its best trials here, every trial in trials.csv
        rows = sorted((r for r in rows if r["value"] is not None), key=lambda r: r["value"])[:MAX_ROWS]
        title += f": the {len(rows)} best of {len(summary['rows'])} trials (all in trials.csv)"
    table = Table(title=title, title_justify="left")
    keys = [k for k in rows[0] if k not in ("duration_s", "reason")] if rows else []
    for key in [*keys, "reason"]:
        table.add_column(key, overflow="fold")
    for row in rows:
        table.add_row(*[_cell(row[k]) for k in [*keys, "reason"]])
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    console.print(table)
    c = summary["counts"]
    click.echo(f"trials: {summary['trials']} ({c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed"
               + (f", {c['RUNNING']} running" if c["RUNNING"] else "") + f"), {summary['tokens']:,} training tokens")
    best = summary["best"]
    if best is None:
        click.echo("best: no trial completed")
    else:
        params = " ".join(f"{k}={v}" for k, v in best["params"].items())
        click.echo(f"best: trial {best['number']}  val_loss {best['value']:.4f}  {params}")
        click.echo(f"best recipe: {best['recipe']}   (lmforge run {best['recipe']})")
    if summary["importances"]:
        click.echo("importance: " + "  ".join(f"{k} {v:.2f}" for k, v in summary["importances"].items()))
    click.echo(f"report: {summary['tune_dir']} (trials.csv, importances.json, history.png, parallel_coordinates.png)")
    click.echo(f"study: {summary['study']!r} in {summary['storage']}   (optuna-dashboard {summary['storage']})")


def _cell(value) -> str:
    from rich.markup import escape

    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))
