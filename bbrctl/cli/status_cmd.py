from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from bbrctl.cli.app import app
from bbrctl.cli.common import RunsRootOpt
from bbrctl.cli.complete import complete_sweeps


@app.command("status")
def status_command(
    sweep: Optional[str] = typer.Argument(None, help="Sweep name (under the runs root) or directory; all sweeps if left out.",
                                          autocompletion=complete_sweeps),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    runs_root: Optional[Path] = RunsRootOpt,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep watching until nothing is queued or running."),
) -> None:
    """Show every job's state (pending/running/done/failed/requeued), SLURM id, progress and AP."""
    from bbrctl import status as S
    from bbrctl.store import discovery
    from bbrctl.store.root import runs_root as resolve_runs_root

    root = resolve_runs_root(runs_root)
    if sweep is None:
        rows = S.render_overview(root, console=False if as_json else None)
        if as_json:
            typer.echo(json.dumps({"runs_root": str(root), "sweeps": rows}, indent=2))
        return
    sweep_dir = discovery.find_sweep_dir(sweep, root)
    from bbrctl.tune.storage import is_study_dir

    if is_study_dir(sweep_dir) and not follow:
        # A `bbrctl tune` study: its trials, best so far and pruned ones (bbrctl.tune.summary).
        from bbrctl.tune.summary import describe, render

        d = describe(sweep_dir)
        typer.echo(json.dumps(d, indent=2) if as_json else render(d, "md").rstrip("\n"))
        return
    if follow:
        from bbrctl.launch import follow as do_follow

        do_follow(sweep_dir.name, sweep_dir, progress=not as_json)
    jobs = S.sweep_jobs(sweep_dir)
    if as_json:
        typer.echo(json.dumps({"sweep": sweep_dir.name, "dir": str(sweep_dir), "counts": S.counts(jobs),
                               "jobs": [j.to_dict() for j in jobs]}, indent=2))
    else:
        S.render_table(sweep_dir.name, jobs)
