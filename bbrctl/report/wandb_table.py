"""``--wandb``: log a report's table (and figures) to a W&B run in the sweep's group.

One W&B run per ``bbrctl report --wandb`` (job_type ``report``, name ``report-<name>``,
in the group its training runs are in: ``wandb.group`` of the runs, else the sweep's name
and the setting's hash, bbrctl.config.wandb_settings.run_group). It holds the table as a ``wandb.Table`` under the report's name, whose every
row ends with the columns :data:`TRACE_COLUMNS`: the row's run directories, their
signatures, their W&B run ids (from each run's ``wandb_run.json``) and their seeds, so
each cell traces back to the runs (and W&B runs) it aggregates; the figure's PNG as
``<name>/<png stem>``; the Markdown as ``<name>/markdown``.

Files go to ``$WANDB_DIR/wandb/`` when WANDB_DIR is set, else ``wandb/`` beside the
report's output (the folder of ``--out``, or ``reports/``). The caller prints the run's
URL (online) or its offline directory (``wandb sync DIR`` uploads it).

Mode: as training resolves it (bbrctl.config.wandb_settings.resolve): ``WANDB_MODE`` when
set, else the runs' own ``wandb.mode`` (from job.json), else offline. The user asked for
W&B explicitly, so a run config's ``disabled`` becomes offline; ``online`` without an API
key for the server (``WANDB_BASE_URL``) falls back to offline with a notice, so no account
is ever needed: ``wandb sync`` uploads the offline run later. The key itself is never read
or written by bbrctl.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from bbrctl import extras
from bbrctl.config import wandb_settings
from bbrctl.errors import UserError


def resolve_mode(run_wandb: dict | None) -> str:
    """The report run's mode (bbrctl.config.wandb_settings.resolve with explicit=True)."""
    return wandb_settings.resolve((run_wandb or {}).get("mode"), explicit=True)[0]


TRACE_COLUMNS = ("run_dirs", "signatures", "wandb_run_ids", "seeds")


def trace_cells(run_dirs: Sequence[str], runs_by_dir: dict) -> list[str]:
    """The :data:`TRACE_COLUMNS` cells of one row: comma-separated, in the row's run order.

    ``runs_by_dir``: {str(run dir): bbrctl.report.collect.Run}. A run that never logged
    to W&B shows "-" in the ids column.
    """
    from bbrctl.detection.tracking.wandb_run import run_id

    sigs, ids, seeds = [], [], []
    for d in run_dirs:
        run = runs_by_dir.get(str(d))
        sigs.append(run.signature if run is not None else "?")
        ids.append(run_id(d) or "-")
        seed = run.config.get("seed") if run is not None else None
        seeds.append("?" if seed is None else str(seed))
    return [", ".join(str(d) for d in run_dirs), ", ".join(sigs), ", ".join(ids), ", ".join(seeds)]


def with_trace(columns: Sequence[str], rows: Sequence[Sequence[Any]], row_runs: Sequence[Sequence[str]],
               runs_by_dir: dict) -> tuple[list[str], list[list[Any]]]:
    """``columns``/``rows`` with the trace columns appended (``row_runs[i]``: row i's run dirs)."""
    if len(rows) != len(row_runs):
        raise ValueError(f"{len(rows)} rows but {len(row_runs)} run lists")
    return ([*columns, *TRACE_COLUMNS],
            [[*r, *trace_cells(dirs, runs_by_dir)] for r, dirs in zip(rows, row_runs)])


def log_report(name: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
               images: Sequence[Path] = (), markdown: str | None = None, group: str | None = None,
               run_wandb: dict | None = None, out_dir: Path = Path("reports"), config: dict | None = None) -> dict:
    """Create one W&B run (job_type "report") holding ``name`` as a wandb.Table and the images.

    Returns {"mode", "project", "group", "run_dir", "url", "run_id"}; raises UserError when
    W&B cannot start.
    """
    wandb = extras.require("wandb", "report --wandb")
    cfg = dict(run_wandb or {})
    mode, notice = wandb_settings.resolve(cfg.get("mode"), explicit=True)
    project = cfg.get("project") or "bbrctl"
    if mode == "disabled":          # nothing is logged, and nothing may say it was
        return {"mode": "disabled", "project": project, "group": group, "run_dir": None, "url": None, "run_id": None,
                "notice": notice}
    # The caller passes the training runs' own group (bbrctl.config.wandb_settings.run_group).
    group = cfg.get("group") or group
    # Passed explicitly: wandb reads WANDB_DIR once per process, at the first init.
    root = Path(os.environ.get("WANDB_DIR") or out_dir)
    (root / "wandb").mkdir(parents=True, exist_ok=True)
    from bbrctl.redact import redact

    try:
        run = wandb.init(project=project, entity=cfg.get("entity"), group=group,
                         job_type="report", name=f"report-{name}", dir=str(root), mode=mode,
                         config=redact({"report": name, "title": title, **(config or {})}), reinit="create_new")
    except Exception as e:  # wandb raises many types; the user needs one line either way
        raise UserError(f"--wandb: could not start a W&B run ({mode}): {' '.join(str(e).split())[:200]}") from None
    try:
        table = wandb.Table(columns=[str(c) for c in columns],
                            data=[list(r) for r in rows])
        payload: dict[str, Any] = {name: table}
        for img in images:
            payload[f"{name}/{Path(img).stem}"] = wandb.Image(str(img))
        if markdown:
            payload[f"{name}/markdown"] = wandb.Html(f"<pre>{_html_escape(markdown)}</pre>")
        run.log(payload)
        files_dir = getattr(run, "dir", None)  # <run>/files; the run directory is its parent
        run_dir = str(Path(files_dir).parent) if files_dir else None
        url = getattr(run, "url", None) if mode == "online" else None
        rid = run.id
    finally:
        run.finish()
    return {"mode": mode, "project": project, "group": group, "run_dir": run_dir, "url": url, "run_id": rid,
            "notice": notice}


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
