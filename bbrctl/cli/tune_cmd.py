from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from bbrctl.cli.app import app
from bbrctl.cli.common import ConfigDirOpt, RunsRootOpt, as_list
from bbrctl.tune import defaults as D


@app.command("tune")
def tune_command(
    overrides: Optional[List[str]] = typer.Argument(None, show_default=False, help=(
        "Search space and fixed overrides: gamma=interval(0.1,2.0) weight=tag(log,interval(0.5,5)) "
        "loss=choice(eiou,focal_eiou) schedule.max_iter=400 +experiment=tune_table3_cpu")),
    trials: Optional[int] = typer.Option(None, "--trials", "-n", help=f"Trials in the study (default {D.TRIALS}, or the preset's)."),
    metric: Optional[str] = typer.Option(None, "--metric", help=f"Result metric to optimise (default {D.METRIC}): AP, AP50, AP75, APs, APm, APl, segm.AP, ..."),
    direction: Optional[str] = typer.Option(None, "--direction", help=f"{' | '.join(D.DIRECTIONS)} (default {D.DIRECTION})."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help=f"{' | '.join(D.SAMPLERS)} (default {D.SAMPLER})."),
    seed: Optional[int] = typer.Option(None, "--seed", help=f"Sampler seed (default {D.SEED})."),
    parallel: Optional[int] = typer.Option(None, "--parallel", "-k", help=f"Trials running at once (default {D.PARALLEL}); on SLURM, at most this many per job array."),
    pruner: Optional[str] = typer.Option(None, "--pruner", help=f"{' | '.join(D.PRUNERS)} (default {D.PRUNER}); acts on schedule.eval_period's evaluations."),
    pruner_startup: Optional[int] = typer.Option(None, "--pruner-startup-trials", help=f"Median pruner: complete trials before it prunes (default {D.PRUNER_STARTUP_TRIALS})."),
    storage: Optional[str] = typer.Option(None, "--storage", help="sqlite (local disk; default for launcher=local) | journal (shared file systems such as NFS; default for launcher=slurm)."),
    name: Optional[str] = typer.Option(None, "--name", help="Study name: its trials and storage go to runs/\\<name>/."),
    config_dir: Optional[List[str]] = ConfigDirOpt,
    runs_root: Optional[Path] = RunsRootOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON."),
) -> None:
    """Search any config key with Optuna; every trial is a signed run directory, launched locally or as SLURM arrays.

    Run the same command again to continue a study (after a crash, a kill or with a larger --trials).
    Trials report AP every schedule.eval_period iterations; the pruner stops poor ones with a checkpoint.
    """
    from bbrctl.tune.driver import TuneOptions, tune
    from bbrctl.tune.summary import best_line, describe

    opts = TuneOptions(overrides=as_list(overrides), config_dirs=as_list(config_dir), name=name, runs_root=runs_root,
                       trials=trials, metric=metric, direction=direction, sampler=sampler, seed=seed,
                       parallel=parallel, pruner=pruner, pruner_startup_trials=pruner_startup, storage=storage)
    result = tune(opts)
    d = describe(result.dir)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
    else:
        typer.echo(best_line(d))
