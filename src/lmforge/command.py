"""What every command shares: the common options (``--set``, ``--run-dir``, ``--debug``, ``--quiet``),
resolving the recipe and run directory, and the device. Commands import this module, never ``cli.py``."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from lmforge.core import progress
from lmforge.errors import LmforgeError
from lmforge.rundir import RunDir

DEBUG = {"on": False}  # --debug anywhere on the command line: main() shows the traceback instead of one line


def output_flags(func):
    """``--debug`` and ``--quiet``: what every command takes, stage commands and ``lmforge secure``'s alike."""

    @click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
    @click.option("--quiet", is_flag=True, help="No progress bars or stage messages.")
    @functools.wraps(func)
    def wrapper(*args, debug: bool, quiet: bool, **kwargs):
        DEBUG["on"] = DEBUG["on"] or debug
        progress.set_enabled(not quiet)
        return func(*args, **kwargs)

    return wrapper


def common_options(func):
    """RECIPE and the options every stage command shares."""

    @click.argument("recipe", required=False)
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a recipe value with a dotted key, e.g. --set train.max_steps=50 (repeatable).")
    @click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
                  help="Run directory (default: <out_dir>/<name> from the recipe). Without RECIPE, the "
                       "recipe stored in the run directory is used.")
    @click.option("--key", "model_key", type=click.Path(dir_okay=False, path_type=Path),
                  help="Private key (X25519 or RSA PEM) that opens encrypted models (lmforge secure encrypt); a "
                       "passphrase is read from LMFORGE_KEY_PASSPHRASE.")
    @click.option("--verify-with", "verify_with", type=click.Path(dir_okay=False, path_type=Path),
                  help="EC P-256 public key: every model loaded must carry a valid signature by it (lmforge "
                       "secure sign), checked before any byte of it is parsed.")
    @output_flags
    @functools.wraps(func)
    def wrapper(*args, model_key: Path | None, verify_with: Path | None, **kwargs):
        from lmforge.checkpoint.load import opened_with
        from lmforge.secure.gate import gate_for

        with opened_with(gate_for(model_key, verify_with)):
            return func(*args, **kwargs)

    return wrapper


def resolve(recipe: str | None, run_dir: Path | None, overrides: tuple[str, ...]):
    """The typed recipe (a file, a built-in name, or the one stored in ``run_dir``) and its run directory."""
    from lmforge.recipe import apply_override, build_config, load_recipe, read_yaml

    if recipe is None and run_dir is not None and (run_dir / "recipe.yaml").exists():
        raw = read_yaml(run_dir / "recipe.yaml")
        for assignment in overrides:
            apply_override(raw, assignment)
        cfg = build_config(raw, str(run_dir / "recipe.yaml"))
    else:
        cfg = load_recipe(recipe, list(overrides))
    return cfg, RunDir(run_dir if run_dir is not None else Path(cfg.out_dir) / cfg.name)


def require_run_dir(run: RunDir) -> None:
    if not run.root.is_dir():
        raise LmforgeError(f"run directory {run.root} does not exist (give RECIPE or --run-dir of an existing run)")


def device_for(cfg):
    from lmforge.core.device import pick_device

    return pick_device(cfg.train.device)


def with_section(cfg, name: str, config_class, raw: dict, error: type[LmforgeError]):
    """``cfg`` with its section ``name`` validated anew from ``raw`` (the recipe's, command-line options merged
    in); the first problem is one ``error`` line naming its key under the section."""
    from pydantic import ValidationError

    try:
        return cfg.model_copy(update={name: config_class.model_validate(raw)})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in (name, *err["loc"]))
        raise error(f"{key}: {err['msg'].removeprefix('Value error, ')}") from None
