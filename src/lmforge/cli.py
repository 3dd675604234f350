"""The lmforge command line: one command per stage, each calling that stage's code; ``run`` does all.

Every command prints one ``error: ...`` line and exits non-zero on bad input (``--debug`` shows the
traceback instead).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from lmforge.core import progress
from lmforge.errors import LmforgeError
from lmforge.rundir import STAGES, RunDir

_DEBUG = False


def _common(func):
    """Options every stage command shares."""

    @click.argument("recipe", required=False)
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a recipe value with a dotted key, e.g. --set train.max_steps=50 (repeatable).")
    @click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
                  help="Run directory (default: <out_dir>/<name> from the recipe). Without RECIPE, the "
                       "recipe stored in the run directory is used.")
    @click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
    @click.option("--quiet", is_flag=True, help="No progress bars or stage messages.")
    @functools.wraps(func)
    def wrapper(*args, debug: bool, quiet: bool, **kwargs):
        global _DEBUG
        _DEBUG = _DEBUG or debug
        progress.set_enabled(not quiet)
        return func(*args, **kwargs)

    return wrapper


def _nproc_option(func):
    return click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
                        help="Train in this many processes on this machine (torchrun); the recipe's parallel: "
                             "section says how they share the work (default: DDP).")(func)


def _launch_options(func):
    """Multi-node and elastic options of torchrun, for ``lmforge train``."""
    options = [
        click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Machines in the job; run the same command on each, with its --node-rank."),
        click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True,
                     help="This machine's rank; node 0 hosts the rendezvous at --rdzv-endpoint."),
        click.option("--rdzv-endpoint", metavar="HOST:PORT",
                     help="Where the nodes meet (torchrun c10d rendezvous): node 0's address and a free port."),
        click.option("--rdzv-id", help="Job id shared by the nodes (default: lmforge-<recipe name>)."),
        click.option("--max-restarts", type=click.IntRange(min=0), default=0, show_default=True,
                     help="If a worker fails, torchrun restarts all of them this many times; they resume from "
                          "the latest checkpoint."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _resolve(recipe: str | None, run_dir: Path | None, overrides: tuple[str, ...]):
    from lmforge.recipe import apply_override, build_config, load_recipe, read_yaml

    if recipe is None and run_dir is not None and (run_dir / "recipe.yaml").exists():
        raw = read_yaml(run_dir / "recipe.yaml")
        for assignment in overrides:
            apply_override(raw, assignment)
        cfg = build_config(raw, str(run_dir / "recipe.yaml"))
    else:
        cfg = load_recipe(recipe, list(overrides))
    return cfg, RunDir(run_dir if run_dir is not None else Path(cfg.out_dir) / cfg.name)


def _require_run_dir(run: RunDir) -> None:
    if not run.root.is_dir():
        raise LmforgeError(f"run directory {run.root} does not exist (give RECIPE or --run-dir of an existing run)")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lmforge")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def cli(debug: bool) -> None:
    """lmforge: curate data, train a tokenizer, pretrain, evaluate and sample a language model.

    `lmforge run` with no arguments runs the built-in default recipe on the Python standard library.
    """
    global _DEBUG
    _DEBUG = debug


@cli.command()
@_common
@_nproc_option
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its latest checkpoint.")
@click.option("--redo", multiple=True, type=click.Choice(STAGES), help="Redo this stage and every stage after it.")
def run(recipe, overrides, run_dir, nproc, resume, redo):
    """Run every stage: curate -> tokenizer -> pack -> train -> eval -> sample, then print a summary.

    RECIPE is a YAML file or the name of a built-in recipe (default, debug); default: the built-in default.
    """
    from lmforge import pipeline
    from lmforge.report.summary import print_summary

    cfg, run_obj = _resolve(recipe, run_dir, overrides)
    launch = _launch(cfg, nproc)  # the parallel degrees fit the processes: checked before anything is written
    pipeline.prepare(run_obj, cfg, redo=redo, resume=resume)
    progress.info(f"run directory: {run_obj.root}")
    pipeline.stage_data(run_obj, cfg)
    _train(run_obj, cfg, launch, resume=resume)
    device = _device(cfg)
    _eval(run_obj, cfg, device)
    _sample(run_obj, cfg, device)
    print_summary(pipeline.write_summary(run_obj, cfg))


@cli.command()
@_common
@click.option("--redo", multiple=True, type=click.Choice(STAGES[:3]), help="Redo this data stage and the ones after it.")
def data(recipe, overrides, run_dir, redo):
    """Curate the corpus, train the tokenizer and pack token shards."""
    from lmforge import pipeline

    cfg, run_obj = _resolve(recipe, run_dir, overrides)
    pipeline.prepare(run_obj, cfg, redo=redo)
    pipeline.stage_data(run_obj, cfg)


@cli.command()
@_common
@_nproc_option
@_launch_options
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint.")
@click.option("--redo", is_flag=True, help="Discard existing checkpoints and train from the start.")
@click.option("--worker", is_flag=True, hidden=True)
def train(recipe, overrides, run_dir, nproc, nnodes, node_rank, rdzv_endpoint, rdzv_id, max_restarts, resume, redo,
          worker):
    """Pretrain the model on the packed token shards of a run directory.

    On several machines: the same command on each, with --nnodes, --node-rank and --rdzv-endpoint, and
    the run directory on storage they share.
    """
    from lmforge import pipeline
    from lmforge.distributed.context import restarted_by_torchrun

    cfg, run_obj = _resolve(recipe, run_dir, overrides)
    if worker:
        _train_worker(run_obj, cfg, resume or restarted_by_torchrun())
        return
    launch = _launch(cfg, nproc, nnodes, node_rank, rdzv_endpoint, rdzv_id, max_restarts)
    pipeline.require_tokens(run_obj)
    layout = None
    if launch.world_size > 1:  # a bad layout, or a damaged checkpoint to resume from: refused before any write
        from lmforge.train.loop import preflight

        layout = preflight(run_obj, cfg, launch.world_size, resume=resume, checkpoints=resume)
    if launch.node_rank == 0:  # the other nodes only check: node 0 writes the run directory they share
        pipeline.prepare(run_obj, cfg, redo=("train",) if redo else (), resume=resume)
    # resuming, the checkpoint was verified above; else _train's preflight also refuses existing checkpoints
    _train(run_obj, cfg, launch, resume=resume, layout=layout if resume else None)


@cli.command("eval")
@_common
@click.option("--checkpoint", type=click.Path(path_type=str), help="Checkpoint folder (default: the latest).")
def eval_(recipe, overrides, run_dir, checkpoint):
    """Validation loss, perplexity and bits per byte before and after training."""
    from lmforge.evaluate.stage import stage_eval

    cfg, run_obj = _resolve(recipe, run_dir, overrides)
    _require_run_dir(run_obj)
    results = stage_eval(run_obj, cfg, _device(cfg), checkpoint)
    click.echo(f"val loss {results['after']['loss']:.4f}  perplexity {results['after']['perplexity']:.2f}  "
               f"bits/byte {results['after']['bits_per_byte']:.4f}  ({results['checkpoint']})")


@cli.command()
@_common
@click.option("--prompt", help="Text to continue (default: generate.prompt of the recipe).")
@click.option("--max-new-tokens", type=click.IntRange(min=1))
@click.option("--temperature", type=click.FloatRange(min=0), help="0 means greedy.")
@click.option("--top-k", type=click.IntRange(min=1))
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True))
@click.option("--num-samples", type=click.IntRange(min=1))
@click.option("--seed", type=int)
@click.option("--no-cache", is_flag=True, help="Recompute the whole sequence each step (slow reference path).")
@click.option("--checkpoint", type=click.Path(path_type=str), help="Checkpoint folder (default: the latest).")
def generate(recipe, overrides, run_dir, prompt, max_new_tokens, temperature, top_k, top_p, num_samples, seed,
             no_cache, checkpoint):
    """Continue a prompt with the trained model (KV cache, temperature, top-k, top-p)."""
    from lmforge.evaluate.stage import sample_texts

    cfg, run_obj = _resolve(recipe, run_dir, overrides)
    _require_run_dir(run_obj)
    for key, value in dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           num_samples=num_samples, seed=seed).items():
        if value is not None:
            setattr(cfg.generate, key, value)
    text = cfg.generate.prompt if prompt is None else prompt
    if not text:
        raise LmforgeError("--prompt: the prompt is empty")
    for sample in sample_texts(run_obj, cfg, _device(cfg), prompt=text, checkpoint=checkpoint,
                               use_cache=not no_cache):
        click.echo(sample["prompt"] + sample["completion"])
        if cfg.generate.num_samples > 1:
            click.echo("-" * 40)


# --- helpers shared by the commands --------------------------------------------------------------
def _device(cfg):
    from lmforge.core.device import pick_device

    return pick_device(cfg.train.device)


def _launch(cfg, nproc: int, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None,
            rdzv_id: str | None = None, max_restarts: int = 0):
    from lmforge.distributed.context import Launch

    if nnodes > 1 and not rdzv_endpoint:
        raise LmforgeError(f"--nnodes {nnodes}: give --rdzv-endpoint HOST:PORT (node 0's address and a free port)")
    if node_rank >= nnodes:
        raise LmforgeError(f"--node-rank {node_rank}: must be below --nnodes ({nnodes})")
    if rdzv_endpoint and (":" not in rdzv_endpoint or not rdzv_endpoint.rsplit(":", 1)[1].isdigit()):
        raise LmforgeError(f"--rdzv-endpoint {rdzv_endpoint}: expected HOST:PORT")
    launch = Launch(nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                    rdzv_id=rdzv_id or f"lmforge-{cfg.name}", max_restarts=max_restarts)
    from lmforge.distributed.layout import resolve_layout

    resolve_layout(cfg.parallel, launch.world_size)  # the degrees alone; the model is checked once it is known
    return launch


def _train(run_obj: RunDir, cfg, launch, *, resume: bool, layout=None) -> None:
    """Train in this process, or in ``launch``'s processes through torchrun; ``layout``: the preflight
    already ran (it hashes the checkpoint to resume from, which can be large)."""
    from lmforge import pipeline

    if run_obj.stage_fingerprint("train") == pipeline.fingerprint(cfg, "train"):
        progress.info("[dim]train: already done, skipped[/dim]")
        return
    if launch.world_size == 1 and launch.max_restarts == 0 and launch.rdzv_endpoint is None:  # in this process
        _train_worker(run_obj, cfg, resume)
        return
    from lmforge.distributed.context import launch_torchrun
    from lmforge.train.loop import preflight

    if layout is None:  # bad layout or checkpoint: refused before any process starts
        layout = preflight(run_obj, cfg, launch.world_size, resume=resume)
    progress.info(f"train: {layout.describe()} through torchrun")
    args = ["train", "--run-dir", str(run_obj.root), "--worker"] + (["--resume"] if resume else [])
    code = launch_torchrun(launch, args)
    if code != 0:
        raise LmforgeError(f"training in {launch.world_size} processes failed (exit code {code}); "
                           "see the messages above")


def _train_worker(run_obj: RunDir, cfg, resume: bool) -> None:
    from lmforge import pipeline
    from lmforge.distributed.context import init_distributed, shutdown
    from lmforge.train.loop import train as train_loop

    ctx = init_distributed(cfg.train.device)
    if not ctx.is_main:
        progress.set_enabled(False)
    try:
        result = train_loop(run_obj, cfg, ctx, resume=resume)
        if ctx.is_main:
            run_obj.invalidate("train")
            run_obj.mark_done("train", pipeline.fingerprint(cfg, "train"), **result)
    finally:
        shutdown(ctx)


def _eval(run_obj: RunDir, cfg, device) -> None:
    from lmforge.evaluate.stage import stage_eval

    _once(run_obj, cfg, "eval", run_obj.eval_results, lambda: stage_eval(run_obj, cfg, device))


def _sample(run_obj: RunDir, cfg, device) -> None:
    from lmforge.evaluate.stage import stage_sample

    _once(run_obj, cfg, "sample", run_obj.samples, lambda: stage_sample(run_obj, cfg, device))


def _once(run_obj: RunDir, cfg, stage: str, output: Path, work) -> None:
    """Run a stage unless it already ran with the same recipe and its output is there."""
    from lmforge import pipeline

    fp = pipeline.fingerprint(cfg, stage)
    if run_obj.stage_fingerprint(stage) == fp and output.exists():
        progress.info(f"[dim]{stage}: already done, skipped[/dim]")
        return
    work()
    run_obj.mark_done(stage, fp)


# --- commands of later stages: each module defines one click command and imports heavy libraries
# --- inside it, so `lmforge --help` stays fast. Add one line per command here.
from lmforge.tune.command import tune as _tune_command  # noqa: E402

cli.add_command(_tune_command)
from lmforge.estimate.command import estimate as _estimate_command  # noqa: E402

cli.add_command(_estimate_command)
from lmforge.train.compare_command import optimizers as _optimizers_command  # noqa: E402

cli.add_command(_optimizers_command)
from lmforge.distributed.export import export as _export_command  # noqa: E402

cli.add_command(_export_command)


def main(argv: list[str] | None = None) -> None:
    global _DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    _DEBUG = "--debug" in args
    try:
        cli.main(args=args, prog_name="lmforge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except LmforgeError as exc:
        if _DEBUG:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        if _DEBUG:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
