"""The short end-of-run summary printed by ``lmforge run``."""

from __future__ import annotations

from rich.table import Table

from rich.console import Console


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
    table.add_row("run directory", summary["run_dir"])
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # logs and pipes: never wrap the run directory path
    console.print(table)
