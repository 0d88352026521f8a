"""The `bbrctl` command line: a thin Typer layer over plain functions.

Each command lives in its own module in this package and registers itself on
``bbrctl.cli.app.app``. Those modules import nothing heavy at import time, so
`bbrctl --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from bbrctl.cli.app import app
from bbrctl.errors import STORAGE_ERRNOS, StorageError, UserError

# Registration happens on import; the order here is the order in --help.
from bbrctl.cli import config_cmd, train_cmd, eval_cmd, sweep_cmd, tune_cmd, status_cmd, report_cmd, simulate_cmd, data_cmd, doctor_cmd  # noqa: E402,F401

__all__ = ["app", "main"]


# Hydra's command-line habits and what bbrctl uses instead (one line each, exit 2).
HYDRA_FLAGS = {
    "--cfg": "bbrctl has no --cfg: `bbrctl config OVERRIDES` prints the composed config (--unresolved keeps interpolations)",
    "-c": "bbrctl has no -c/--cfg: `bbrctl config OVERRIDES` prints the composed config",
    "-m": "bbrctl has no -m/--multirun: `bbrctl sweep a=1,2 b=x,y` runs every combination",
    "--multirun": "bbrctl has no -m/--multirun: `bbrctl sweep a=1,2 b=x,y` runs every combination",
    "--config-path": "bbrctl has no --config-path: add a config directory with --config-dir DIR",
    "-cp": "bbrctl has no -cp/--config-path: add a config directory with --config-dir DIR",
    "--config-name": "bbrctl has no --config-name: pick presets with +experiment=NAME and groups with group=option",
    "-cn": "bbrctl has no -cn/--config-name: pick presets with +experiment=NAME and groups with group=option",
}


def hydra_habit(args: list[str]) -> str | None:
    """The pointer for the first Hydra-only flag in ``args`` (before a ``--``), else None."""
    for a in args:
        if a == "--":
            return None
        flag = a.split("=", 1)[0]
        if flag in HYDRA_FLAGS:
            return HYDRA_FLAGS[flag]
    return None


def main(argv: list[str] | None = None) -> None:
    habit = hydra_habit(list(sys.argv[1:] if argv is None else argv))
    if habit:
        typer.echo(f"bbrctl: error: {habit}", err=True)
        sys.exit(2)
    try:
        app(args=argv, prog_name="bbrctl", standalone_mode=True)
    except (UserError, StorageError) as e:
        typer.echo(f"bbrctl: error: {_one_line(e)}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        # A place that cannot be written (exit 1), or a path the user gave that cannot be
        # one (/proc/x.md, a file as --runs-root, a name over the file-system limit: exit 2),
        # raised by code that does not name it itself: one line either way.
        where = e.filename or "a file"
        if e.errno in STORAGE_ERRNOS:
            typer.echo(f"bbrctl: error: {_one_line(StorageError.of(where, e))}", err=True)
            sys.exit(StorageError.exit_code)
        shown = str(where) if len(str(where)) <= 200 else f"{str(where)[:100]}...{str(where)[-60:]}"
        typer.echo(f"bbrctl: error: cannot use {shown!r}: {e.strerror or e}; give a path of this file system "
                   "that bbrctl can create files in", err=True)
        sys.exit(UserError.exit_code)
    except KeyboardInterrupt:
        typer.echo("bbrctl: interrupted", err=True)
        sys.exit(130)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
