"""Shell completion of what the commands take: overrides (groups and their options, keys
of the schema, presets), sweep names under the runs root.

Typer calls these with the word being completed (``bbrctl --install-completion`` installs
the hook). They read only the config tree and the runs root's folder names, so a TAB
costs a listing, never a composition. Presets are ``+experiment=NAME``; the groups'
options include a ``--config-dir`` given earlier on the same line.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from bbrctl.config.schema import GROUPS, TOP, group_keys
from bbrctl.config.tree import group_options

# Groups chosen with `group=option` (their options are the YAML files of conf/<group>/);
# `wandb` and `sweep` are groups of keys with no option files.
OPTION_GROUPS = ("loss", "model", "backbone", "data", "schedule", "launcher")
# Groups added with `+group=option`: presets, Table 3's detector pairs, the weighting rows.
PLUS_GROUPS = ("experiment", "detector", "weighting")


def override_candidates(incomplete: str, config_dirs: list[str] | None = None) -> list[str]:
    """Every override that ``incomplete`` can become, sorted: ``loss=`` ... ``loss=eiou``,
    ``+experiment=table1``, ``schedule.max_iter=``, ``gamma=``."""
    dirs = list(config_dirs or [])
    if "=" in incomplete:
        key, prefix = incomplete.split("=", 1)
        group = key.lstrip("+~")
        if (key.startswith("+") and group in PLUS_GROUPS) or (not key.startswith("+") and group in OPTION_GROUPS):
            return [f"{key}={o}" for o in group_options(group, dirs) if o.startswith(prefix)]
        return []
    words = [f"{g}=" for g in OPTION_GROUPS] + [f"+{g}=" for g in PLUS_GROUPS] + [f"{k}=" for k in TOP]
    if "." in incomplete:
        group = incomplete.lstrip("+").split(".", 1)[0]
        if group in GROUPS:
            lead = "+" if incomplete.startswith("+") else ""
            words = [f"{lead}{group}.{k}=" for k in group_keys(group)]
    return sorted(w for w in words if w.startswith(incomplete))


def complete_overrides(ctx: typer.Context, incomplete: str) -> list[str]:
    return override_candidates(incomplete, (ctx.params or {}).get("config_dir"))


def sweep_candidates(incomplete: str, runs_root: str | os.PathLike | None = None) -> list[str]:
    """The sweeps under the runs root (folders holding a sweep.json) that start with ``incomplete``."""
    root = Path(runs_root or os.environ.get("BBRCTL_RUNS_ROOT") or "runs")
    try:
        names = [p.name for p in root.iterdir() if (p / "sweep.json").is_file()]
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(incomplete))


def complete_sweeps(ctx: typer.Context, incomplete: str) -> list[str]:
    return sweep_candidates(incomplete, (ctx.params or {}).get("runs_root"))
