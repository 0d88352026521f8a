"""The `bbrctl` command line: a thin Typer layer over plain functions.

Each command lives in its own module in this package and registers itself on ``app``.
Those modules import nothing heavy at import time, so `bbrctl --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from bbrctl.errors import UserError

app = typer.Typer(
    name="bbrctl",
    help="Bounding-box-regression loss experiments (Focal-EIoU): configs, sweeps, SLURM, reports, simulations.",
    no_args_is_help=True,
    # Markdown: docstring paragraphs are re-flowed to the terminal width (the default keeps
    # the source's line breaks, which wrap badly on narrow terminals).
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _version(value: bool) -> None:
    if value:
        from bbrctl import __version__

        typer.echo(f"bbrctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print bbrctl's version and exit.")) -> None:
    """Bounding-box-regression loss experiments (Focal-EIoU): configs, sweeps, SLURM, reports, simulations."""


# Registration happens on import; the order here is the order in --help.
from bbrctl.cli import config_cmd, train_cmd, sweep_cmd, status_cmd, report_cmd, simulate_cmd, data_cmd  # noqa: E402,F401


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print a one-line error to stderr and return the Exit to raise."""
    typer.echo(f"bbrctl: error: {message}", err=True)
    return typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="bbrctl", standalone_mode=True)
    except UserError as e:
        typer.echo(f"bbrctl: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("bbrctl: interrupted", err=True)
        sys.exit(130)
