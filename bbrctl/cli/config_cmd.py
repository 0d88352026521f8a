from __future__ import annotations

from typing import List, Optional

import typer

from bbrctl.cli.app import app
from bbrctl.cli.common import ConfigDirOpt, OverridesArg, as_list


@app.command("config")
def config_command(
    overrides: Optional[List[str]] = OverridesArg,
    config_dir: Optional[List[str]] = ConfigDirOpt,
    signature: bool = typer.Option(False, "--signature", help="Print the job signature instead of the YAML."),
    unresolved: bool = typer.Option(False, "--unresolved", help="Keep ${...} interpolations as written."),
) -> None:
    """Print the fully composed config for the given overrides."""
    from bbrctl import config as C

    cfg = C.compose(as_list(overrides), as_list(config_dir), resolve=not unresolved)
    if signature:
        typer.echo(C.signature(cfg))
    else:
        from omegaconf import OmegaConf

        from bbrctl.redact import withhold_setup

        # launcher.setup lines appear only in the batch script (`sweep --show-script` shows it).
        typer.echo(OmegaConf.to_yaml(withhold_setup(OmegaConf.to_container(cfg, resolve=not unresolved))), nl=False)
