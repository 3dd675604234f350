"""``lmforge compress``: pruned variants of a model and their size / speed / quality table (``compress:``)."""

from __future__ import annotations

import click

from lmforge.command import common_options, device_for, require_run_dir, resolve


@click.command()
@common_options
@click.option("--checkpoint", type=click.Path(path_type=str), help="The dense model (overrides compress.checkpoint).")
def compress(recipe, overrides, run_dir, checkpoint):
    """Make every variant of compress.variants (magnitude, Wanda and 2:4 pruning, structured MLP channels) from
    one model, written as compress/<name>/model.safetensors, and tabulate parameters, speed and quality against
    the dense model: compress/table.md, table.json, table.png.
    Also a stage of lmforge run (when the recipe has its section).
    """
    from lmforge.compress.stage import check_compress, run_compress

    if checkpoint is not None:
        overrides = (*overrides, f"compress.checkpoint={checkpoint}")
    cfg, run = resolve(recipe, run_dir, overrides)
    require_run_dir(run)
    plan = check_compress(run, cfg)  # refuses bad input before anything is written
    summary = run_compress(run, cfg, plan, device_for(cfg))
    for name, row in summary["variants"].items():
        r = row["ratio_to_dense"]
        click.echo(f"{name}: {row['nonzero_parameters']:,} nonzero ({r['nonzero_parameters']:.2f}x), perplexity "
                   f"{row['perplexity']:.2f} ({r['perplexity']:.3f}x), decode {row['decode_tokens_per_s']:.0f} tok/s "
                   f"({r['decode_tokens_per_s']:.2f}x)" + (f"; closes {row['gap_closed']:.0%} of the CE student's gap "
                                                            "to the teacher" if row.get("gap_closed") is not None else ""))
    click.echo(f"table: {run.stage_dir('compress') / 'table.md'}")
