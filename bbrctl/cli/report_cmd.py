"""`bbrctl report`: the paper's tables and figures from finished runs (logic in bbrctl.report)."""

from __future__ import annotations

from typing import List, Optional

import typer

from bbrctl.cli.app import app
from bbrctl.cli.common import ConfigDirOpt, RunsRootOpt, as_list
from bbrctl.errors import UserError


@app.command("report")
def report_command(
    table: Optional[str] = typer.Option(None, "--table", "-t", help="Table to build: 1, 2, 3 or a name from report/*.yaml."),
    figure: Optional[str] = typer.Option(None, "--figure", "-f", help="Figure to build: 7, 8, 9a, 9b, 9c, detections or a name from report/*.yaml."),
    list_: bool = typer.Option(False, "--list", help="List the table and figure definitions and exit."),
    runs_root: Optional[str] = RunsRootOpt,
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Only runs of this sweep."),
    where: Optional[List[str]] = typer.Option(None, "--where", help="Only runs whose config has KEY=VALUE (dotted key; repeatable)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="md | csv | latex | json (default: from --out's suffix, else md; csv for figure data)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output file (default reports/\\<name>.\\<ext>; '-' for stdout only)."),
    paper: bool = typer.Option(False, "--paper", help="Add the paper's published numbers beside ours."),
    wandb: bool = typer.Option(False, "--wandb", help="Also log the table/figure to a W&B run in the sweep's group (offline without an account)."),
    precision: int = typer.Option(1, "--precision", help="Decimals in md/latex/terminal cells."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Write the files, print nothing but their paths."),
    run: Optional[List[str]] = typer.Option(None, "--run", help="--figure detections: a run directory to draw (repeat it: one column per run).", metavar="DIR"),
    images: int = typer.Option(4, "--images", help="--figure detections: val images to draw (rows), 1-32."),
    score_threshold: float = typer.Option(0.5, "--score-threshold", help="--figure detections: lowest score drawn."),
    device: Optional[str] = typer.Option(None, "--device", help="--figure detections: cpu | cuda (default: cuda if available)."),
    config_dir: Optional[List[str]] = ConfigDirOpt,
    study: Optional[str] = typer.Option(None, "--study", help="A `bbrctl tune` study: best trial, trials table (md, csv, json) and Optuna's plots as PNG."),
) -> None:
    """Build the paper's tables (--table 1|2|3) and figures (--figure 7|8|9a|9b|9c) from runs.

    Rows are matched to runs by config values (conf/report/*.yaml); seeds are aggregated as
    mean ± std (n); unfinished or failed runs show in their cells with a footnote.
    `--figure detections --run A --run B` draws the same val images under runs A and B
    side by side with their boxes (as the paper's Figures 10-11), from their checkpoints.
    """
    from bbrctl.report import definitions
    from bbrctl.report.main import print_outcome, report_detections, report_figure, report_table

    dirs = as_list(config_dir)
    if list_:
        for kind, key, title, path in definitions.listing(dirs):
            flag = "--table" if kind == "table" else "--figure"
            typer.echo(f"{flag} {key:<6} {title}  ({path})")
        typer.echo("--figure detections  the same val images under each --run DIR, boxes drawn (Figs. 10-11)")
        return
    if study is not None:
        if table is not None or figure is not None:
            raise UserError("--study STUDY builds the study's own report; it does not go with --table or --figure")
        _report_study(study, runs_root, fmt, out, precision, quiet, wandb)
        return
    if (table is None) == (figure is None):
        raise UserError("give exactly one of --table ID or --figure ID (see `bbrctl report --list`)")
    if figure == "detections":
        outcome = report_detections(as_list(run), images=images, score_threshold=score_threshold, out=out,
                                    wandb=wandb, device=device)
    else:
        if run:
            raise UserError("--run is for --figure detections; tables and other figures read every run under "
                            "the runs root")
        from bbrctl.store.root import runs_root as resolve_runs_root

        kwargs = dict(runs=str(resolve_runs_root(runs_root)), sweep=sweep, where=as_list(where), fmt=fmt, out=out, paper=paper, wandb=wandb,
                      config_dirs=dirs, precision=precision)
        outcome = report_table(table, **kwargs) if table is not None else report_figure(figure, **kwargs)
    if out == "-":
        typer.echo(outcome.text, nl=False)
    elif not quiet:
        print_outcome(outcome, precision)
    for path in outcome.files:
        typer.echo(f"wrote {path}", err=True)
    if outcome.wandb and outcome.wandb.get("mode") == "disabled":
        typer.echo("bbrctl: note: W&B is disabled (WANDB_MODE or the runs' wandb.mode): nothing was logged; "
                   "set WANDB_MODE=offline or online to log", err=True)
    elif outcome.wandb:
        w = outcome.wandb
        if w.get("notice"):
            typer.echo(f"bbrctl: note: {w['notice']}", err=True)
        where_ = w.get("url") or f"{w['run_dir']} (upload it with `wandb sync {w['run_dir']}`)"
        typer.echo(f"logged to W&B ({w['mode']}, project {w['project']}, group {w['group']}, run "
                   f"{w.get('run_id')}): {where_}", err=True)


def _report_study(study: str, runs_root, fmt, out, precision: int, quiet: bool, wandb: bool) -> None:
    from pathlib import Path

    from bbrctl.store import discovery
    from bbrctl.store.root import runs_root as resolve_runs_root
    from bbrctl.tune.summary import FORMATS, write_report

    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one a study report has; valid: {', '.join(FORMATS)}")
    if out not in (None, "-"):
        raise UserError("--study writes into reports/ (or prints with --out -); give no other --out")
    study_dir = discovery.find_sweep_dir(study, resolve_runs_root(runs_root))
    text, files, notes, logged = write_report(study_dir, Path("reports"), fmt, precision, plots=out != "-",
                                              wandb=wandb)
    if not quiet:
        typer.echo(text, nl=False)
    for note in notes:
        typer.echo(f"bbrctl: note: plot skipped, {note}", err=True)
    for path in files:
        typer.echo(f"wrote {path}", err=True)
    if logged:
        where_ = logged.get("url") or f"{logged['run_dir']} (upload it with `wandb sync {logged['run_dir']}`)"
        typer.echo(f"logged the study to W&B ({logged['mode']}, group {logged['group']}, run {logged['run_id']}): "
                   f"{where_}", err=True)
