"""Weights & Biases logging for one training run (rank 0 only).

* mode from ``cfg.wandb.mode``: online | offline | disabled. ``online`` without an API
  key (``WANDB_API_KEY`` or a ``~/.netrc`` entry, as wandb itself looks) falls back to
  offline, so a run never stops at a login prompt; ``wandb sync`` uploads it later.
  An explicit ``WANDB_MODE`` in the environment wins (tests set it to disabled).
* the W&B run id is a hash of the run directory's absolute path, so a resumed or
  requeued job continues the same W&B run (``resume="allow"``) instead of starting a
  new one; W&B's files go to ``<run_dir>/wandb``.
* what is logged: the resolved config, per-iteration scalars (losses, learning rate,
  timing), evaluation metrics, and the final metrics in the run summary.

wandb is imported only when the mode is not disabled. The API key is never read into
or written by bbrctl.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

MODES = ("online", "offline", "disabled")


def run_id(run_dir: str | os.PathLike) -> str:
    """Stable W&B run id for a run directory (16 hex chars of its absolute path's hash)."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc, or unreadable
        return False


def resolve_mode(configured: str | None) -> str:
    """The mode a run uses: the environment's WANDB_MODE, else the config's, with the
    online -> offline fallback when no API key is available."""
    mode = (os.environ.get("WANDB_MODE") or configured or "disabled").lower()
    if mode in ("dryrun", "disable"):
        mode = {"dryrun": "offline", "disable": "disabled"}[mode]
    if mode not in MODES:
        from bbrctl.errors import UserError

        raise UserError(f"wandb.mode={mode!r} is not valid; valid: {', '.join(MODES)}")
    if mode == "online" and not _has_api_key():
        mode = "offline"
    return mode


class WandbSink:
    """Log to W&B when enabled; every method is a no-op when disabled."""

    def __init__(self, cfg: Mapping[str, Any], run_dir: str | os.PathLike, name: str | None = None):
        wcfg = dict(cfg.get("wandb") or {})
        self.mode = resolve_mode(wcfg.get("mode"))
        self.run = None
        if self.mode == "disabled":
            return
        import wandb

        run_dir = Path(run_dir)
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=wcfg.get("project") or "bbrctl",
            entity=wcfg.get("entity"),
            group=wcfg.get("group"),
            name=name or run_dir.name,
            id=run_id(run_dir),
            resume="allow",
            dir=str(run_dir),
            mode=self.mode,
            config=dict(cfg),
            job_type="train",
        )

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log(self, scalars: Mapping[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(dict(scalars), step=int(step))

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
