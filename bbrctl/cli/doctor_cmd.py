from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from bbrctl.cli.app import app
from bbrctl.cli.common import RunsRootOpt


@app.command("doctor")
def doctor_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    runs_root: Optional[Path] = RunsRootOpt,
) -> None:
    """Print this machine's environment for bbrctl (versions, GPUs, extras, W&B, SLURM, paths) and what is missing.

    Exit code 1 when something bbrctl needs is broken, else 0.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from bbrctl import doctor

    checks = doctor.run_checks(runs_root)
    if as_json:
        typer.echo(json.dumps(doctor.as_dicts(checks), indent=2))
    else:
        style = {"ok": "green", "missing": "yellow", "problem": "red", "info": ""}
        t = Table(header_style="bold", show_lines=False)
        for col in ("area", "check", "state", "detail"):
            t.add_column(col, overflow="fold")
        for c in checks:
            detail = c.detail + (f" → {c.fix}" if c.fix else "")
            t.add_row(Text(c.area), Text(c.name), Text(c.state, style=style[c.state]), Text(detail))
        Console().print(t)
    if any(c.state == "problem" for c in checks):
        raise typer.Exit(1)
