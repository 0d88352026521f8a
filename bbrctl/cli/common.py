"""Options shared by several commands."""

from __future__ import annotations

from typing import List, Optional

import typer

from bbrctl.cli.complete import complete_overrides

OverridesArg = typer.Argument(None, help="Hydra overrides, e.g. loss=focal_eiou gamma=0.5 weight=2.5", show_default=False,
                              autocompletion=complete_overrides)
ConfigDirOpt = typer.Option(None, "--config-dir", help="Extra config directory searched before the shipped one (repeatable).")
RunsRootOpt = typer.Option(None, "--runs-root", metavar="DIR",
                           help="Where sweeps and runs live (default: the config's runs_root, else $BBRCTL_RUNS_ROOT, else ./runs).")


def as_list(values: Optional[List[str]]) -> list[str]:
    return list(values or [])
