"""Showing sweeps: the status table, the overview of a runs root, and the live progress view.

Text that comes from a run (error messages, notes) is printed as text, never as rich
markup: a "[/bold]" in an error message must not break the table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

from bbrctl.status.inspect import JobState, counts, summary_line, sweep_jobs
from bbrctl.store import DamagedFile, discovery


def render_table(name: str, jobs: Sequence[JobState], console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    table = Table(title=Text(summary_line(name, jobs)), title_justify="left", show_lines=False)
    for col, kw in (("job", {}), ("state", {}), ("slurm", {}), ("progress", {"justify": "right"}),
                    ("AP", {"justify": "right"}), ("note", {"overflow": "fold"})):
        table.add_column(col, **kw)
    for j in jobs:
        table.add_row(Text(f"{j.name}-{j.signature}"), _styled(j.state),
                      Text(j.slurm_id + (f" {j.slurm_state}" if j.slurm_state else "") if j.slurm_id else "-"),
                      _progress_text(j), f"{j.ap:.1f}" if j.ap is not None else "-", Text(j.note or ""))
    console.print(table)


def _styled(state: str):
    from rich.text import Text

    return Text(state, style={"done": "green", "failed": "red", "running": "cyan", "requeued": "yellow"}.get(state, ""))


def _progress_text(j: JobState) -> str:
    if j.iteration is None or not j.max_iter:
        return "-" if j.state != "done" else "100%"
    return f"{j.iteration}/{j.max_iter} ({100 * (j.progress or 0):.0f}%)"


def render_overview(runs_root: Path, console=None) -> list[dict]:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rows = []
    for d in discovery.list_sweep_dirs(runs_root):
        try:
            jobs = sweep_jobs(d)
        except DamagedFile as e:        # one damaged sweep.json must not hide the other sweeps
            rows.append({"sweep": d.name, "dir": str(d), "jobs": 0, **counts([]), "damaged": str(e)})
            continue
        rows.append({"sweep": d.name, "dir": str(d), "jobs": len(jobs), **counts(jobs)})
    if console is not False:
        console = console or Console()
        if not rows:
            console.print(f"no sweeps under {runs_root}", markup=False, highlight=False)
            return rows
        table = Table(title=Text(f"sweeps under {runs_root}"), title_justify="left")
        for col in ("sweep", "jobs", "pending", "running", "requeued", "done", "failed"):
            table.add_column(col, justify="left" if col == "sweep" else "right")
        for r in rows:
            if r.get("damaged"):
                table.add_row(Text(r["sweep"]), Text(f"damaged: {r['damaged']}", style="red"))
                continue
            table.add_row(Text(r["sweep"]), *(str(r[k]) for k in ("jobs", "pending", "running", "requeued", "done", "failed")))
        console.print(table)
    return rows


class ProgressView:
    """Live view of a sweep while it runs: a rich table on a terminal, else a line per change."""

    # Without a terminal (a log, a batch job's output), a summary line this often even when
    # no job changed state, so a long run is visibly alive.
    HEARTBEAT_S = 60.0

    def __init__(self, name: str, sweep_dir: Path, signatures: Sequence[str], stream=None):
        self.name = name
        self.sweep_dir = sweep_dir
        self.sigs = list(signatures)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._live = None
        self._last: dict[str, str] = {}
        self._next = 0.0
        self._heartbeat = time.monotonic() + self.HEARTBEAT_S
        self.jobs: list[JobState] = []

    def __enter__(self) -> "ProgressView":
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh(force=True)
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def refresh(self, force: bool = False, query_scheduler: bool = True) -> list[JobState]:
        now = time.monotonic()
        if not force and now < self._next:
            return self.jobs
        self._next = now + 1.0
        self.jobs = sweep_jobs(self.sweep_dir, only=self.sigs, query_scheduler=query_scheduler)
        if self._live is not None:
            self._live.update(self._renderable())
        else:
            for j in self.jobs:
                line = f"{j.state}" + (f" {j.iteration}/{j.max_iter}" if j.state == "running" and j.iteration else "")
                key = f"{j.name}-{j.signature}"
                if self._last.get(key, "").split(" ")[0] != line.split(" ")[0]:
                    ap = f" AP={j.ap:.1f}" if j.ap is not None else ""
                    print(f"[{time.strftime('%H:%M:%S')}] {key}: {j.state}{ap}{(' — ' + j.note) if j.note else ''}",
                          file=self.stream, flush=True)
                self._last[key] = line
            if now >= self._heartbeat:
                self._heartbeat = now + self.HEARTBEAT_S
                running = [f"{j.name} {j.iteration}/{j.max_iter}" for j in self.jobs
                           if j.state == "running" and j.iteration is not None and j.max_iter]
                print(f"[{time.strftime('%H:%M:%S')}] {summary_line(self.name, self.jobs)}"
                      + (f"; running: {', '.join(running)}" if running else ""), file=self.stream, flush=True)
        return self.jobs

    def _renderable(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        c = counts(self.jobs)
        finished = c["done"] + c["failed"]
        table = Table.grid(padding=(0, 1))
        table.add_row(Text(summary_line(self.name, self.jobs), style="bold"))
        table.add_row(ProgressBar(total=max(1, len(self.jobs)), completed=finished, width=50))
        for j in self.jobs:
            if j.state == "running":
                table.add_row(Text.assemble("  ", ("running", "cyan"), f" {j.name}  {_progress_text(j)}"))
        return table
