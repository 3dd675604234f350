"""``lmforge run``: every stage of the table in order, then the run summary."""

from __future__ import annotations

import click

from lmforge.command import common_options, resolve
from lmforge.train.command import make_launch, nproc_option


@click.command()
@common_options
@nproc_option
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its latest checkpoint.")
@click.option("--redo", multiple=True, metavar="STAGE", help="Redo this stage and every stage after it (repeatable).")
def run(recipe, overrides, run_dir, nproc, resume, redo):
    """Run every stage: curate -> tokenizer -> pack -> train -> eval -> sample, then print a summary.

    RECIPE is a YAML file or the name of a built-in recipe (default, debug); default: the built-in default.
    """
    from lmforge import pipeline
    from lmforge.report.summary import print_summary, write_summary

    cfg, run_dir_ = resolve(recipe, run_dir, overrides)
    opts = pipeline.Options(resume=resume, launch=make_launch(cfg, nproc))
    pipeline.run_through(run_dir_, cfg, pipeline.NAMES, opts, redo=redo)
    print_summary(write_summary(run_dir_))
