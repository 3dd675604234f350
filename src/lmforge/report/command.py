"""``lmforge report [RUN_DIR]``: write ``<run>/report.html`` (and TensorBoard events where tensorboard is
installed); ``lmforge report RUN_A RUN_B ...``: compare runs side by side in one page (``--output``)."""

from __future__ import annotations

from pathlib import Path

import click

from lmforge.command import output_flags

COMPARE_FILE = "report-compare.html"


def stage_names() -> list[str]:
    from lmforge.pipeline import NAMES

    return list(NAMES)


@click.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path), metavar="[RUN_DIR]...")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help=f"With several runs: the comparison page to write (default: ./{COMPARE_FILE}).")
@output_flags
def report(run_dirs: tuple[Path, ...], output: Path | None) -> None:
    """Write RUN_DIR/report.html, one self-contained page of the run (default RUN_DIR: the built-in default
    recipe's run, runs/default); with several RUN_DIRs, compare them side by side into --output."""
    from lmforge.errors import LmforgeError
    from lmforge.report.compare import write_compare
    from lmforge.report.page import write_report
    from lmforge.rundir import RunDir

    if len(run_dirs) > 1:
        path = write_compare(run_dirs, output or Path(COMPARE_FILE), stage_names())
        click.echo(str(path))
        return
    if output is not None:
        raise LmforgeError("--output: only with several RUN_DIRs (one run's report is RUN_DIR/report.html)")
    if run_dirs:
        root = run_dirs[0]
    else:
        from lmforge.command import resolve

        _, run = resolve(None, None, ())
        root = run.root
    path = write_report(RunDir(root), stage_names())
    click.echo(str(path))
