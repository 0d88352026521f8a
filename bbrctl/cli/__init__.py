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
from bbrctl.cli import config_cmd, train_cmd, eval_cmd, sweep_cmd, status_cmd, report_cmd, simulate_cmd, data_cmd  # noqa: E402,F401

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
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
