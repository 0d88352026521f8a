"""``--wandb``: log a report's table (and figures) to a W&B run in the sweep's group.

Mode: ``WANDB_MODE`` when set, else the runs' own ``wandb.mode`` (from job.json), else
offline. The user asked for W&B explicitly, so a run config's ``disabled`` becomes
offline; ``online`` without credentials (no ``WANDB_API_KEY`` and no api.wandb.ai entry
in ~/.netrc) also falls back to offline, so no account is ever needed: ``wandb sync``
uploads the offline run later. The key itself is never read or written by bbrctl.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from bbrctl.errors import UserError


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(run_wandb: dict | None) -> str:
    env = os.environ.get("WANDB_MODE")
    mode = env or (run_wandb or {}).get("mode") or "offline"
    if mode in ("disabled", "dryrun") and not env:
        mode = "offline"
    if mode == "online" and not _has_credentials():
        mode = "offline"
    return mode


def log_report(name: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
               images: Sequence[Path] = (), markdown: str | None = None, group: str | None = None,
               run_wandb: dict | None = None, out_dir: Path = Path("reports")) -> dict:
    """Create one W&B run (job_type "report") holding ``name`` as a wandb.Table and the images.

    Returns {"mode", "project", "group", "run_dir"}; raises UserError when W&B cannot start.
    """
    try:
        import wandb
    except ImportError as e:  # pragma: no cover - wandb is a dependency
        raise UserError(f"--wandb needs the wandb package: {e}") from None
    cfg = dict(run_wandb or {})
    mode = resolve_mode(cfg)
    project = cfg.get("project") or "bbrctl"
    # The training runs' own group when their config names one, else the sweep's name.
    group = cfg.get("group") or group
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(project=project, entity=cfg.get("entity"), group=group,
                         job_type="report", name=f"report-{name}", dir=str(out_dir), mode=mode,
                         config={"report": name, "title": title}, reinit="create_new")
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
    finally:
        run.finish()
    return {"mode": mode, "project": project, "group": group, "run_dir": run_dir}


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
