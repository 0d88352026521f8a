"""The ``bbrctl report`` flows: find the definition, read runs, build, write files, print.

Output files go to ``reports/<name>.<ext>`` unless ``--out FILE`` says otherwise (``-`` for
stdout only); they are written atomically. The format comes from ``--format``, else from
the file's suffix, else Markdown for tables and CSV for figure data (figures also write a
PNG). Nothing is written when the input is bad: every check runs before the first write.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from bbrctl.errors import UserError
from bbrctl.report import definitions
from bbrctl.report.collect import Collection, collect, sweeps_under
from bbrctl.report.render import FORMATS, FROM_SUFFIX, SUFFIX
from bbrctl.store import atomic_write_bytes, atomic_write_text

DEFAULT_DIR = Path("reports")


@dataclass
class Outcome:
    kind: str                      # table | figure | simulation
    name: str
    fmt: str
    text: str                      # the rendered data (what --out / the data file holds)
    result: Any
    files: list[Path] = field(default_factory=list)
    wandb: dict | None = None


def _check_format(fmt: str | None) -> None:
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; valid: {', '.join(FORMATS)}")


def _format_of(out: str | None, fmt: str | None, default: str) -> str:
    _check_format(fmt)
    if out and out != "-" and Path(out).is_dir():
        raise UserError(f"--out {out!r} is a directory; give a file name such as {Path(out) / 'table1.md'}")
    if fmt:
        return fmt
    if out and out != "-":
        suffix = Path(out).suffix.lower()
        if suffix in FROM_SUFFIX:
            return FROM_SUFFIX[suffix]
        if suffix != ".png":
            raise UserError(f"cannot tell the format of --out {out!r} from its suffix; use --format "
                            f"{'|'.join(FORMATS)} or a {'/'.join(sorted(set(SUFFIX.values())))} file")
    return default


def _collection(runs: str | os.PathLike, sweep: str | None) -> Collection:
    root = Path(runs)
    if not root.is_dir():
        raise UserError(f"runs directory {str(root)!r} does not exist; pass --runs-root DIR "
                        f"(the runs_root where `bbrctl sweep`/`bbrctl train` create run directories)")
    col = collect(root, sweep)
    if sweep and not col.runs and not col.unreadable and not col.denied:
        known = sweeps_under(root)
        raise UserError(f"no runs of sweep {sweep!r} under {root}; sweeps there: {', '.join(known) or 'none'}")
    return col


def _common_sweep(run_dirs: Iterable[str], col: Collection) -> str | None:
    wanted = set(run_dirs)
    names = {r.sweep for r in col.runs if str(r.dir) in wanted}
    return names.pop() if len(names) == 1 else None


def _common_group(run_dirs: Iterable[str], col: Collection, sweep: str | None) -> str | None:
    """The W&B group the runs were logged in, when they share one; else the sweep's name."""
    from bbrctl.config.wandb_settings import run_group

    wanted = set(run_dirs)
    groups = {run_group(r.config, r.sweep, r.dir.name) for r in col.runs if str(r.dir) in wanted}
    return groups.pop() if len(groups) == 1 else sweep or _common_sweep(run_dirs, col)


def _run_wandb(run_dirs: Iterable[str], col: Collection) -> dict:
    wanted = set(run_dirs)
    for r in col.runs:
        if str(r.dir) in wanted and isinstance(r.config.get("wandb"), dict):
            return r.config["wandb"]
    return {}


def _wandb_dir(out: str | None, out_dir: Path) -> Path:
    """Where a report's W&B files go (unless WANDB_DIR says): beside the --out file, else out_dir."""
    return Path(out).parent if out and out != "-" else Path(out_dir)


def _runs_by_dir(col: Collection) -> dict:
    return {str(r.dir): r for r in col.runs}


def _csv_rows(text: str) -> tuple[list[str], list[list[Any]]]:
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]

    def conv(v: str) -> Any:
        if v == "":
            return None  # W&B column types allow None beside a number, not ""
        try:
            return float(v)
        except ValueError:
            return v
    return header, [[conv(v) for v in r] for r in body]


def report_table(key: str, *, runs: str | os.PathLike = "runs", sweep: str | None = None,
                 where: Sequence[str] = (), fmt: str | None = None, out: str | None = None,
                 paper: bool = False, wandb: bool = False, config_dirs: Sequence[str] = (),
                 precision: int = 1, out_dir: Path = DEFAULT_DIR) -> Outcome:
    from bbrctl.report.matching import parse_where
    from bbrctl.report.render import render
    from bbrctl.report.table import build_table

    fmt = _format_of(out, fmt, "md")
    if out and Path(out).suffix.lower() == ".png":
        raise UserError("--out for a table must be a .md/.csv/.tex/.json file (PNG is for --figure)")
    _check_precision(precision)
    filters = parse_where(where)
    defn = definitions.load("table", key, config_dirs)
    col = _collection(runs, sweep)
    tr = build_table(defn, col, where=filters, paper=paper, sweep=sweep)
    text = render(tr, fmt, precision)
    files = []
    if out != "-":
        path = Path(out) if out else Path(out_dir) / f"{defn.name}{SUFFIX[fmt]}"
        atomic_write_text(path, text, levels=0)
        files.append(path)
    outcome = Outcome("table", defn.name, fmt, text, tr, files)
    if wandb:
        from bbrctl.report.render import to_csv, to_markdown
        from bbrctl.report.wandb_table import log_report, with_trace

        dirs = [d for r in tr.rows for d in r.runs]
        header, rows = with_trace(*_csv_rows(to_csv(tr)), [r.runs for r in tr.rows], _runs_by_dir(col))
        outcome.wandb = log_report(defn.name, defn.title, header, rows, markdown=to_markdown(tr, precision),
                                   group=_common_group(dirs, col, sweep), run_wandb=_run_wandb(dirs, col),
                                   out_dir=_wandb_dir(out, out_dir),
                                   config={"runs_root": str(runs), "sweep": sweep, "where": list(where)})
    return outcome


def report_figure(key: str, *, runs: str | os.PathLike = "runs", sweep: str | None = None,
                  where: Sequence[str] = (), fmt: str | None = None, out: str | None = None,
                  paper: bool = False, wandb: bool = False, config_dirs: Sequence[str] = (),
                  precision: int = 1, out_dir: Path = DEFAULT_DIR) -> Outcome:
    from bbrctl.report.matching import parse_where

    fmt = _format_of(out, fmt, "csv")
    _check_precision(precision)
    if out == "-":
        raise UserError("--out - (stdout) is for tables; a figure writes a PNG: give --out FILE.png")
    filters = parse_where(where)
    defn = definitions.load("figure", key, config_dirs)
    if out:
        out_path = Path(out)
        png = out_path.with_suffix(".png")
        data = out_path if out_path.suffix.lower() != ".png" else out_path.with_suffix(SUFFIX[fmt])
    else:
        png = Path(out_dir) / f"{defn.name}.png"
        data = Path(out_dir) / f"{defn.name}{SUFFIX[fmt]}"

    if isinstance(defn, definitions.SimulationDef):
        from bbrctl.report.simulation import load_simulation, plot_simulation, simulation_text, summary_rows

        if where:
            raise UserError("--where applies to training runs; for a simulation figure pass --runs-root DIR")
        root = Path(runs)
        if not root.is_dir():
            raise UserError(f"runs directory {str(root)!r} does not exist; pass --runs-root DIR holding `bbrctl simulate` output")
        sr = load_simulation(defn, root)
        text = simulation_text(sr, fmt)
        image = plot_simulation(sr)
        atomic_write_text(data, text, levels=0)
        atomic_write_bytes(png, image, levels=0)
        outcome = Outcome("simulation", defn.name, fmt, text, sr, [png, data])
        if paper:
            sr.notes.append("--paper: the paper publishes Figures 7 and 8 as plots only; no numbers to compare")
        if wandb:
            from bbrctl.report.wandb_table import log_report

            header, rows = summary_rows(sr)
            outcome.wandb = log_report(defn.name, defn.title, header, rows, images=[png],
                                       markdown=simulation_text(sr, "md"), group=sweep, out_dir=_wandb_dir(out, out_dir),
                                       config={"runs_root": str(runs)})
        return outcome

    from bbrctl.report.ablation_plots import build_figure, figure_csv, figure_dict, figure_markdown, plot_figure

    col = _collection(runs, sweep)
    fr = build_figure(defn, col, where=filters, sweep=sweep)
    if paper:
        fr.notes.append("--paper: the paper publishes Figure 9 as a plot only; no numbers to overlay")
    if fmt == "csv":
        text = figure_csv(fr)
    elif fmt == "json":
        import json

        text = json.dumps(figure_dict(fr), indent=2, default=str) + "\n"
    elif fmt == "md":
        text = figure_markdown(fr, precision)
    else:
        raise UserError("figure data can be written as csv, json or md (not latex)")
    image = plot_figure(fr)
    atomic_write_text(data, text, levels=0)
    atomic_write_bytes(png, image, levels=0)
    outcome = Outcome("figure", defn.name, fmt, text, fr, [png, data])
    if wandb:
        from bbrctl.report.wandb_table import log_report, with_trace

        dirs = [d for p in fr.points for d in p.runs]
        points = fr.points + ([fr.reference] if fr.reference else [])  # figure_csv's row order
        header, rows = with_trace(*_csv_rows(figure_csv(fr)), [p.runs for p in points], _runs_by_dir(col))
        outcome.wandb = log_report(defn.name, defn.title, header, rows, images=[png],
                                   markdown=figure_markdown(fr, precision),
                                   group=_common_group(dirs, col, sweep), run_wandb=_run_wandb(dirs, col),
                                   out_dir=_wandb_dir(out, out_dir),
                                   config={"runs_root": str(runs), "sweep": sweep, "where": list(where)})
    return outcome


def report_detections(run_dirs: Sequence[str], *, images: int = 4, score_threshold: float = 0.5,
                      out: str | None = None, wandb: bool = False, device: str | None = None,
                      out_dir: Path = DEFAULT_DIR) -> Outcome:
    """``--figure detections``: the same val images under each run, boxes drawn (PNG)."""
    from bbrctl.report.detections import check_runs, detections_figure

    dirs = check_runs(run_dirs, images, score_threshold)  # bad input fails before torch loads
    if out == "-":
        raise UserError("--out - (stdout) is for tables; --figure detections writes a PNG: give --out FILE.png")
    if out and Path(out).suffix.lower() != ".png":
        raise UserError(f"--out {out!r}: --figure detections writes a PNG; give a .png file name")
    png_path = Path(out) if out else Path(out_dir) / "detections.png"
    if png_path.is_dir():
        raise UserError(f"--out {out!r} is a directory; give a file name such as {png_path / 'detections.png'}")
    png, info = detections_figure(dirs, images=images, score_threshold=score_threshold, device=device)
    atomic_write_bytes(png_path, png, levels=0)
    lines = [f"{label}: {sum(info['detections_shown'][label])} detections drawn" for label in info["labels"]]
    text = (f"detections on val images {', '.join(str(i) for i in info['image_ids'])} "
            f"(score >= {score_threshold:g}):\n" + "".join(f"  {line}\n" for line in lines))
    outcome = Outcome("detections", "detections", "png", text, info, [png_path])
    if wandb:
        from bbrctl.report.wandb_table import TRACE_COLUMNS, log_report, trace_cells

        by_dir = {str(d): r for d in dirs for r in collect(d).runs[:1]}  # a run dir collects itself
        rows = [[label, *trace_cells([str(d)], by_dir)] for label, d in zip(info["labels"], dirs)]
        sweeps = {r.sweep for r in by_dir.values()}
        run_wandb = next((r.config["wandb"] for r in by_dir.values() if isinstance(r.config.get("wandb"), dict)), {})
        outcome.wandb = log_report("detections", "Detections on the same val images", ["run", *TRACE_COLUMNS], rows,
                                   images=[png_path], group=sweeps.pop() if len(sweeps) == 1 else None,
                                   run_wandb=run_wandb, out_dir=_wandb_dir(out, out_dir),
                                   config={"runs": [str(d) for d in dirs], "images": images,
                                           "score_threshold": score_threshold})
    return outcome


def _check_precision(precision: int) -> None:
    if not isinstance(precision, int) or not 0 <= precision <= 6:
        raise UserError(f"--precision must be an integer in [0, 6], got {precision!r}")


def print_outcome(outcome: Outcome, precision: int = 1, console=None, stream=None) -> None:
    """Show the result: a rich table on a terminal, plain Markdown/CSV/JSON text otherwise."""
    stream = stream or sys.stdout
    tty = console is not None or (hasattr(stream, "isatty") and stream.isatty())
    if outcome.kind == "table":
        if outcome.fmt == "md" and tty:
            from bbrctl.report.render import print_rich

            print_rich(outcome.result, precision, console=console)
        else:
            stream.write(outcome.text)
        return
    if outcome.kind == "figure":
        from bbrctl.report.ablation_plots import figure_markdown, figure_rows

        if tty:
            _rich_simple(outcome.result.definition.title, *figure_rows(outcome.result, precision),
                         notes=outcome.result.notes, console=console)
        else:
            stream.write(figure_markdown(outcome.result, precision))
        return
    if outcome.kind == "detections":
        stream.write(outcome.text)
        return
    from bbrctl.report.simulation import simulation_text

    stream.write(simulation_text(outcome.result, "md"))


def _rich_simple(title: str, header: list[str], rows: list[list[str]], footnotes: list[str],
                 notes: list[str], console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    t = Table(title=Text(str(title or "")), title_justify="left", header_style="bold")   # text, not markup
    for i, h in enumerate(header):
        t.add_column(Text(str(h)), justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows:
        t.add_row(*[Text(c) for c in r])
    console.print(t)
    for i, n in enumerate(footnotes, 1):
        console.print(Text(f"[{i}] {n}"))
    for n in notes:
        console.print(Text(f"Note: {n}", style="yellow"))
