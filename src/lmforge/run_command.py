"""``lmforge run``: the recipe's stages in the table's order, then the run summary."""

from __future__ import annotations

import click

from lmforge.command import common_options, resolve
from lmforge.train.command import make_launch, nproc_option


@click.command()
@common_options
@nproc_option
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its latest checkpoint.")
@click.option("--redo", multiple=True, metavar="STAGE", help="Redo this stage and every stage after it (repeatable).")
@click.option("--only", multiple=True, metavar="STAGE", help="Run only this stage and what it needs, each unless "
              "done (repeatable; overrides the recipe's stages:).")
@click.option("--skip", multiple=True, metavar="STAGE", help="Leave out this stage and the stages that need it "
              "(repeatable).")
def run(recipe, overrides, run_dir, nproc, resume, redo, only, skip):
    """Run the whole life: curate -> tokenizer -> pack -> train -> eval -> sample -> finetune -> merge -> compress
    -> explain -> attack -> secure -> report (the later stages when the recipe has their section, or as its
    stages: says), each unless already done, then print one line per stage.

    RECIPE is a YAML file or the name of a built-in recipe (default, debug); default: the built-in default.
    """
    from lmforge import pipeline
    from lmforge.report.summary import print_summary, write_summary

    cfg, run_dir_ = resolve(recipe, run_dir, overrides)
    names = pipeline.chosen_stages(cfg, only, skip)
    opts = pipeline.Options(resume=resume, launch=make_launch(cfg, nproc))
    pipeline.run_through(run_dir_, cfg, names, opts, redo=redo)
    print_summary(write_summary(run_dir_, names))
