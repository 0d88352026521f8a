"""Optional dependencies: which extra brings each, and the one-line error when it is missing.

The core install (``pip install bbrctl``) trains, sweeps and reports every detector but DETR
with W&B off. W&B logging needs ``bbrctl[wandb]``, DETR's Hungarian matching needs scipy
(``bbrctl[detr]``); ``bbrctl[all]`` brings both. A config that needs a missing one is refused
when it is validated, before anything is created or submitted (:func:`check_config`), and a
code path that imports one goes through :func:`require`, so a job on a machine that lacks it
fails with the same line instead of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, Mapping

from bbrctl.errors import UserError

# import name -> (extra, what needs it)
EXTRAS = {
    "wandb": ("wandb", "W&B logging"),
    "scipy": ("detr", "DETR's Hungarian matching"),
    "optuna": ("tune", "`bbrctl tune`"),
}


def available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def message(module: str, feature: str | None = None) -> str:
    extra, what = EXTRAS[module]
    return (f"{feature or what} needs the {module} package, which is not installed; install it with "
            f"pip install 'bbrctl[{extra}]' (or pip install {module})")


def require(module: str, feature: str | None = None) -> ModuleType:
    """Import ``module`` (a key of EXTRAS) or raise a one-line UserError naming its extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(message(module, feature)) from None


def check_config(cfg: Mapping[str, Any]) -> None:
    """Refuse a config whose features need an extra this environment lacks."""
    wandb_mode = str(os.environ.get("WANDB_MODE") or (cfg.get("wandb") or {}).get("mode") or "disabled").lower()
    if wandb_mode not in ("disabled", "disable") and not available("wandb"):
        raise UserError(message("wandb", f"wandb.mode={wandb_mode}"))
    if (cfg.get("model") or {}).get("name") == "detr" and not available("scipy"):
        raise UserError(message("scipy", "model=detr"))
