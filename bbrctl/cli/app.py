"""The Typer application every command registers on (bbrctl.cli imports the commands)."""

from __future__ import annotations

import typer

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
