"""``lmforge data``: the curate, tokenizer and pack stages."""

from __future__ import annotations

import click

from lmforge.command import common_options, resolve


@click.command()
@common_options
@click.option("--redo", multiple=True, metavar="STAGE", help="Redo this data stage (curate, tokenizer, pack) and the "
                                                             "ones after it.")
def data(recipe, overrides, run_dir, redo):
    """Curate the corpus, train the tokenizer and pack token shards."""
    from lmforge import pipeline
    from lmforge.errors import LmforgeError

    data_stages = pipeline.closure(["pack"])
    for name in redo:
        if name not in data_stages:
            raise LmforgeError(f"--redo {name}: not a data stage (choose from {', '.join(data_stages)})")
    cfg, run = resolve(recipe, run_dir, overrides)
    pipeline.run_through(run, cfg, ["pack"], redo=redo)
