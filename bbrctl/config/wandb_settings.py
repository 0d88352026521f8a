"""W&B settings shared by training and reports: the mode, credentials, and the run group.

One resolver for every command (training runs and ``report --wandb`` used to disagree on
``WANDB_BASE_URL``):

* **mode**: ``WANDB_MODE`` when set, else the config's ``wandb.mode``. ``online`` without an
  API key for the server (``WANDB_API_KEY``, or a ``~/.netrc`` entry for the host of
  ``WANDB_BASE_URL``, default api.wandb.ai, as wandb itself looks) becomes ``offline`` and
  says so in one notice line, so a run never stops at a login prompt nor goes offline
  silently. A report asked for with ``--wandb`` (``explicit``) turns a config's
  ``disabled`` into ``offline``. The key itself is never read into bbrctl.
* **group**: ``wandb.group`` when set; else the sweep's name plus a short hash of the
  setting (model, backbone, data, schedule and its length: :data:`SETTING_KEYS`), so a
  ``table1`` on the embedded data and a ``table1`` on COCO land in two groups while the
  rows of one table (losses, seeds) share one; a single ``bbrctl train``: the run's name.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

from bbrctl.config.signature import SETTING_KEYS
from bbrctl.errors import UserError

MODES = ("online", "offline", "disabled")
_ALIASES = {"dryrun": "offline", "disable": "disabled"}
DEFAULT_SERVER = "https://api.wandb.ai"


def server() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_SERVER


def has_api_key() -> bool:
    """Whether wandb would find credentials for :func:`server` (the key is not returned)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    host = server().split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc, or unreadable
        return False


def resolve(configured: str | None, *, explicit: bool = False) -> tuple[str, str | None]:
    """``(mode, notice)``: the mode a run uses and, when online fell back to offline, why."""
    env = os.environ.get("WANDB_MODE")
    mode = str(env or configured or ("offline" if explicit else "disabled")).lower()
    mode = _ALIASES.get(mode, mode)
    if mode not in MODES:
        raise UserError(f"wandb.mode={mode!r} is not valid; valid: {', '.join(MODES)}")
    if explicit and mode == "disabled" and not env:
        mode = "offline"
    if mode == "online" and not has_api_key():
        host = server().split("://")[-1].split("/")[0]
        return "offline", (f"W&B: online mode but no API key for {host} (WANDB_API_KEY or ~/.netrc; "
                           f"`wandb login` sets one): logging offline, `wandb sync` uploads it later")
    return mode, None


def _flat(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def setting_hash(cfg: Mapping[str, Any]) -> str:
    """Six hex digits of the config's :data:`SETTING_KEYS` values (not of the loss or seed)."""
    setting = {k: _flat(cfg, k) for k in SETTING_KEYS}
    return hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:6]


def run_group(cfg: Mapping[str, Any], sweep: str | None, run_name: str) -> str:
    """The W&B group of a run (see the module docstring)."""
    configured = (cfg.get("wandb") or {}).get("group")
    if configured:
        return str(configured)
    if sweep:
        return f"{sweep}-{setting_hash(cfg)}"
    return run_name
