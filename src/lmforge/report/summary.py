"""The end-of-run summary of ``lmforge run``: built only from the stages' ``<stage>/summary.json`` files,
written to ``<run>/summary.json`` and printed as a short table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lmforge.core.atomic import atomic_write_json
from lmforge.report.runread import read_json
from lmforge.rundir import RunDir


def _stage_summary(run: RunDir, stage: str) -> dict:
    path = run.stage_summary(stage)
    return read_json(path) if path.exists() else {}


def write_summary(run: RunDir) -> dict:
    """Collect the headline numbers of a finished run into summary.json and return them."""
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
    }
    atomic_write_json(run.summary, summary)
    return summary


SHOWN = ("acc", "acc_norm", "f1_macro", "exact_match", "prefix_match", "perplexity", "bits_per_byte")  # per task


def _fmt(value, spec: str = ",") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def print_summary(summary: dict) -> None:
    before, after = summary.get("before") or {}, summary.get("after") or {}
    table = Table(title="lmforge run summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("documents", f"{_fmt(summary['documents_read'])} read, {_fmt(summary['documents_kept'])} kept")
    table.add_row("tokens", f"{_fmt(summary['train_tokens'])} train, {_fmt(summary['val_tokens'])} validation")
    table.add_row("parameters", _fmt(summary["parameters"]))
    table.add_row("training", f"{_fmt(summary['steps'])} steps at {_fmt(summary['tokens_per_s'], ',.0f')} tokens/s")
    table.add_row("val loss", f"{_fmt(before.get('loss'), '.4f')} -> {_fmt(after.get('loss'), '.4f')}")
    table.add_row("val perplexity", f"{_fmt(before.get('perplexity'), ',.2f')} -> {_fmt(after.get('perplexity'), ',.2f')}")
    table.add_row("val bits/byte", f"{_fmt(before.get('bits_per_byte'), '.3f')} -> {_fmt(after.get('bits_per_byte'), '.3f')}")
    for name, metrics in (summary.get("tasks") or {}).items():
        shown = [(m, metrics[m]) for m in SHOWN if m in metrics][:2]
        table.add_row(name, ", ".join(f"{m} {v['estimate']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for m, v in shown))
    if summary.get("val_loss_worse_than_initial"):
        table.add_row("[bold red]did not learn[/bold red]", "the validation loss is worse than the initial model's")
    for warning in summary.get("warnings") or []:
        table.add_row("[yellow]warning[/yellow]", warning)
    table.add_row("run directory", summary["run_dir"])
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # logs and pipes: never wrap the run directory path
    console.print(table)
