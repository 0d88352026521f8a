from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer

from bbrctl.cli.app import app
from bbrctl.cli.common import ConfigDirOpt, OverridesArg, RunsRootOpt, as_list
from bbrctl.errors import UserError


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_command(
    args: Optional[List[str]] = OverridesArg,
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run or resume the job prepared in DIR (its config.yaml).",
                                           metavar="DIR"),
    config_dir: Optional[List[str]] = ConfigDirOpt,
    runs_root: Optional[Path] = RunsRootOpt,
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available) | cpu | cuda."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Show the progress bar (default: when stderr is a terminal)."),
) -> None:
    """Train one detector with a BBR loss, then evaluate it (COCO AP).

    With overrides (e.g. `loss=eiou model=fcos`) the job runs in
    `runs/train/<model>-<backbone>-<loss>-<signature>/`; with --run-dir it runs the job a
    sweep prepared there. A directory holding a checkpoint resumes; a finished one is
    not re-run. Exit codes: 0 done, 1 training failed, 2 bad input, 75 stopped by
    SIGTERM/SIGUSR1 with a checkpoint (requeue). Multi-GPU: `torchrun --nproc-per-node N
    -m bbrctl train ...`.
    """
    from bbrctl.train import TrainingFailed, TrainingRequeued, train, train_from_overrides

    overrides = as_list(args)
    try:
        if run_dir is not None:
            if overrides or runs_root is not None:
                raise UserError(f"--run-dir runs the config in {run_dir}/config.yaml and takes no overrides "
                                f"or --runs-root (got {' '.join(overrides) or '--runs-root'})")
            results = train(run_dir, device=device, progress=progress)
        else:
            run_dir, results = train_from_overrides(overrides, as_list(config_dir), device=device, progress=progress,
                                                    runs_root=runs_root)
    except TrainingRequeued as e:
        typer.echo(f"bbrctl: {e}", err=True)
        raise typer.Exit(e.exit_code)
    except TrainingFailed as e:
        typer.echo(f"bbrctl: error: {e}", err=True)
        raise typer.Exit(e.exit_code)
    if results.get("rank"):  # a non-zero torchrun rank: rank 0 reports
        return
    _print_results(run_dir, results)


def _print_results(run_dir: Path, results: dict) -> None:
    if results.get("skipped"):
        typer.echo(f"{run_dir}: already done (results.json); not re-run")
    else:
        typer.echo(f"{run_dir}: done in {results.get('wall_time_s') or 0:.0f} s")
    for iou_type, m in (results.get("metrics") or {}).items():
        cells = "  ".join(f"{k} {_fmt(v)}" for k, v in m.items())
        typer.echo(f"  {iou_type}: {cells}")
    w = results.get("wandb")
    if isinstance(w, dict) and not results.get("skipped"):
        segments = w.get("segments") or [w.get("location")]
        hint = "" if w.get("mode") == "online" else \
            f" (upload it with `wandb sync {' '.join(shlex.quote(str(x)) for x in segments)}`)"
        typer.echo(f"  W&B run {w.get('id')} ({w.get('mode')}, group {w.get('group')}): {w.get('location')}{hint}")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"
