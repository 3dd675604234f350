"""The end-of-run summary of ``lmforge run``: built only from the stages' ``<stage>/summary.json`` files,
written to ``<run>/summary.json`` and printed as a short table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lmforge.core.atomic import atomic_write_json
from lmforge.report.headlines import headline
from lmforge.report.runread import STAGE_ORDER, read_json
from lmforge.rundir import RunDir


def _stage_summary(run: RunDir, stage: str) -> dict:
    path = run.stage_summary(stage)
    return read_json(path) if path.exists() else {}


def write_summary(run: RunDir, ran=STAGE_ORDER) -> dict:
    """Collect the headline numbers of a finished run into summary.json and return them: one line per stage of
    ``ran`` (the stages this invocation ran or found done)."""
    curate, pack, train = (_stage_summary(run, s) for s in ("curate", "pack", "train"))
    results = _stage_summary(run, "eval")
    summary = {
        "run_dir": str(run.root),
        "documents_read": curate.get("documents_read"),
        "documents_kept": curate.get("documents_kept"),
        "train_tokens": pack.get("train_tokens"),
        "val_tokens": pack.get("val_tokens"),
        "parameters": train.get("parameters"),
        "steps": train.get("steps"),
        "tokens_per_s": train.get("tokens_per_s"),
        "before": results.get("before"),
        "after": results.get("after"),
        "tasks": results.get("tasks"),
        # every stage's one-line warnings (a filtered-away corpus, too few tokens, a loss that rose)
        "warnings": [w for stage in (curate, train, results) for w in stage.get("warnings") or []],
        "val_loss_worse_than_initial": results.get("val_loss_worse_than_initial"),
        # in the table's order (a list: the JSON file's keys are sorted)
        "stages": [{"stage": stage, "headline": headline(stage, _stage_summary(run, stage))
                    if run.stage_summary(stage).exists() else "not run"} for stage in ran],
    }
    atomic_write_json(run.summary, summary)
    return summary


def print_summary(summary: dict) -> None:
    table = Table(title="lmforge run summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for entry in summary.get("stages") or []:
        table.add_row(entry["stage"], entry["headline"])
    if summary.get("val_loss_worse_than_initial"):
        table.add_row("[bold red]did not learn[/bold red]", "the validation loss is worse than the initial model's")
    for warning in summary.get("warnings") or []:
        table.add_row("[yellow]warning[/yellow]", warning)
    table.add_row("run directory", summary["run_dir"])
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # logs and pipes: never wrap the run directory path
    console.print(table)
