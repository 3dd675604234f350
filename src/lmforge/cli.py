"""The lmforge command line: the click group and ``main()``. Each command lives beside its stage and is
registered here with one import and one ``add_command`` line; nothing here knows what a stage does.

Every command prints one ``error: ...`` line and exits non-zero on bad input (``--debug`` shows the
traceback instead).
"""

from __future__ import annotations

import sys

import click

from lmforge.attack.command import attack
from lmforge.checkpoint.command import export
from lmforge.command import DEBUG
from lmforge.compress.command import compress
from lmforge.data.command import data
from lmforge.errors import LmforgeError
from lmforge.estimate.command import estimate
from lmforge.evaluate.command import eval_, generate
from lmforge.explain.command import explain
from lmforge.merge.command import merge
from lmforge.report.command import report
from lmforge.run_command import run
from lmforge.secure.command import secure
from lmforge.train.command import train
from lmforge.transfer.command import finetune
from lmforge.tune.command import tune
from lmforge.tune.compare_command import optimizers


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lmforge")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def cli(debug: bool) -> None:
    """lmforge: the whole life of a language model, from curating its data to a signed, encrypted release.

    `lmforge run` with no arguments runs the built-in default recipe on the Python standard library.
    """
    DEBUG["on"] = DEBUG["on"] or debug


cli.add_command(run)
cli.add_command(data)
cli.add_command(train)
cli.add_command(eval_)
cli.add_command(generate)
cli.add_command(export)
cli.add_command(tune)
cli.add_command(estimate)
cli.add_command(optimizers)
cli.add_command(finetune)
cli.add_command(merge)
cli.add_command(compress)
cli.add_command(explain)
cli.add_command(attack)
cli.add_command(secure)
cli.add_command(report)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    DEBUG["on"] = "--debug" in args
    try:
        cli.main(args=args, prog_name="lmforge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except LmforgeError as exc:
        if DEBUG["on"]:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        if DEBUG["on"]:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
