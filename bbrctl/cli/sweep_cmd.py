from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from bbrctl.cli.app import app
from bbrctl.cli.common import ConfigDirOpt, OverridesArg, RunsRootOpt, as_list
from bbrctl.cli.complete import complete_sweeps
from bbrctl.config.tree import group_options


def _presets() -> str:
    """The shipped presets (and $BBRCTL_CONFIG_PATH's), read from the files: never a hand list."""
    try:
        # tune_* presets hold a search space for `bbrctl tune`, not a sweep.
        return "|".join(n for n in group_options("experiment") if not n.startswith("tune_")) or "none"
    except Exception:  # noqa: BLE001 - a help text must not fail
        return "see conf/experiment/"


def sweep_command(
    overrides: Optional[List[str]] = OverridesArg,
    config_dir: Optional[List[str]] = ConfigDirOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="List the jobs (and what would be launched); create and submit nothing."),
    show_script: bool = typer.Option(False, "--show-script", help="With launcher=slurm: print the batch script and the sbatch command that would be submitted, and the task list (implies --dry-run)."),
    as_json: bool = typer.Option(False, "--json", help="Print the job list as JSON."),
    wait: bool = typer.Option(False, "--wait", help="Block until every job has finished, with a progress view."),
    name: Optional[str] = typer.Option(None, "--name", help="Sweep name: runs go to runs/\\<name>/ (default: the preset's sweep.name, else the swept keys)."),
    cancel: Optional[str] = typer.Option(None, "--cancel", metavar="SWEEP", help="Cancel what is queued or running for SWEEP (name or directory).",
                                         autocompletion=complete_sweeps),
    runs_root: Optional[Path] = RunsRootOpt,
) -> None:
    """Run a Hydra sweep: one job per combination, locally or as one SLURM job array.

    Sweeps use Hydra's grammar (quoted for the shell): gamma=0.25,0.5,1,2  'seed=range(0,3)'  'loss=choice(eiou,giou)'  'loss=glob(focal_*)'.

    Presets (conf/experiment/ and $BBRCTL_CONFIG_PATH): +experiment=PRESETS.

    Done jobs are skipped, failed ones relaunched, queued or running ones left alone. launcher=local (default) or launcher=slurm.

    Seeds until decided: sweep.seeds=auto sweep.compare=A:B [sweep.max_seeds=8] --wait runs seeds in rounds until a group-sequential paired t-test decides A against B (docs/sequential.md).
    """
    from bbrctl.errors import UserError

    if cancel is not None:
        if overrides or dry_run or wait or show_script:
            raise UserError("--cancel SWEEP takes no overrides, --dry-run, --show-script or --wait")
        from bbrctl.launch import cancel as do_cancel
        from bbrctl.store.root import runs_root as resolve_runs_root

        out = do_cancel(cancel, resolve_runs_root(runs_root))
        if as_json:
            typer.echo(json.dumps(out, indent=2))
        else:
            parts = []
            if out["slurm_cancelled"]:
                parts.append(f"scancel {' '.join(out['slurm_cancelled'])}")
            if out["local_stopped"]:
                parts.append(f"stopped local pid(s) {' '.join(map(str, out['local_stopped']))} (jobs checkpoint and stop)")
            typer.echo(f"sweep {out['sweep']}: " + ("; ".join(parts) if parts else "nothing queued or running"))
            for e in out["errors"]:
                typer.echo(f"bbrctl: warning: {e}", err=True)
        raise typer.Exit(1 if out["errors"] else 0)

    from bbrctl import launch as L
    from bbrctl.sweep import expand

    if show_script and wait:
        raise UserError("--show-script only shows what would be submitted; it does not go with --wait")
    plan = expand(as_list(overrides), as_list(config_dir), name=name, runs_root=runs_root)
    from bbrctl.launch import rounds

    if rounds.is_auto(plan):
        if dry_run or show_script:
            plan = rounds.next_round(as_list(overrides), as_list(config_dir), name=name, runs_root=runs_root)
        elif not wait:
            raise UserError("sweep.seeds=auto decides between rounds of seeds, so it runs until decided in this "
                            "terminal: add --wait")
        else:
            res = rounds.run_until_decided(as_list(overrides), as_list(config_dir), name=name, runs_root=runs_root,
                                           progress=not as_json)
            if as_json:
                typer.echo(json.dumps({**res.plan.summary(), "decision": res.record,
                                       "outcome": res.outcome.as_dict()}, indent=2, default=str))
            else:
                typer.echo(rounds.summary(res))
            return
    if show_script:
        result = L.LaunchResult(plan, L.decide(plan))
        sub = L.show_script(plan, result.decisions)     # checks the launcher first
        if as_json:
            typer.echo(json.dumps({**result.to_dict(), "submission": sub.to_dict() if sub else None}, indent=2,
                                  default=str))
        else:
            _print_submission(result, sub)
        return
    if dry_run:
        L.check_launcher(plan)
        result = L.LaunchResult(plan, L.decide(plan))
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
        else:
            _print_plan(result)
        return

    result = L.launch(plan, wait=wait, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    elif not wait:
        typer.echo(result.message)
    if wait:
        final = result.waited
        if not as_json:
            typer.echo(f"sweep {plan.name}: " + ", ".join(f"{v} {k}" for k, v in final.items() if v))
        unfinished = sum(v for k, v in final.items() if k != "done")
        if unfinished:
            typer.echo(f"bbrctl: {unfinished} job(s) did not finish; see `bbrctl status {plan.name}`", err=True)
            raise typer.Exit(1)


def _print_plan(result) -> None:
    from rich.console import Console
    from rich.table import Table

    plan = result.plan
    launch_n = len(result.to_launch)
    title = (f"sweep {plan.name} ({plan.launcher.get('name')}): {len(plan.jobs)} job(s)"
             + (f", {plan.duplicates} duplicate(s) merged" if plan.duplicates else "")
             + f" — would launch {launch_n}, skip {len(plan.jobs) - launch_n}")
    table = Table(title=title, title_justify="left")
    for col in ("#", "run directory", "state", "action", "overrides"):
        table.add_column(col, overflow="fold")
    for i, d in enumerate(result.decisions):
        table.add_row(str(i), str(d.run_dir.relative_to(plan.runs_root.parent)) if plan.runs_root.parent in d.run_dir.parents else str(d.run_dir),
                      d.state, d.action + (f" ({d.reason})" if d.reason and d.reason != d.action else ""),
                      " ".join(d.overrides))
    console = Console(width=200)
    console.print(table)
    console.print(f"dry run: nothing created or submitted; runs would go to {plan.sweep_dir}")


def _print_submission(result, sub) -> None:
    import shlex

    plan = result.plan
    if sub is None:
        from bbrctl.launch.submit import skip_summary

        typer.echo(f"# sweep {plan.name}: nothing would be submitted ({skip_summary(result.decisions)})")
        return
    typer.echo(f"# sweep {plan.name}: {len(sub.run_dirs)} array task(s); dry run, nothing created or submitted")
    typer.echo("# sbatch command:")
    typer.echo(" ".join(shlex.quote(a) for a in sub.argv))
    typer.echo(f"# task list {sub.tasks_file} (line i+1 is array task i's run directory):")
    for d in sub.run_dirs:
        typer.echo(f"#   {d}")
    typer.echo(f"# batch script {sub.script}:")
    typer.echo(sub.text, nl=not sub.text.endswith("\n"))


# Registered after the docstring names the presets found in the config files.
sweep_command.__doc__ = (sweep_command.__doc__ or "").replace("PRESETS", _presets())
app.command("sweep")(sweep_command)
