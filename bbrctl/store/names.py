"""Names that become directory names, and the one check that a path stays in the runs root.

Every directory bbrctl creates from config values (a sweep's name, a job's readable name,
a single run's ``<model>-<backbone>-<loss>``) goes through :func:`sanitize` (one safe path
component) and is then checked by :func:`ensure_inside`, so no value can place a run
outside the runs root.
"""

from __future__ import annotations

import re
from pathlib import Path

from bbrctl.errors import UserError

_SAFE = re.compile(r"[^A-Za-z0-9._=-]+")
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,99}$")
READABLE_MAX = 80


def sanitize(text: str, max_len: int = READABLE_MAX) -> str:
    """A single safe path component: [A-Za-z0-9._=-] only, no leading dot or dash."""
    out = _SAFE.sub("_", str(text))
    out = re.sub(r"^[.-]+", "_", out)[:max_len]
    return out or "_"


def check_sweep_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_OK.fullmatch(name) or name in (".", ".."):
        raise UserError(f"invalid sweep name {name!r}: use 1-100 letters, digits and . _ = - "
                        "(starting with a letter or digit)")
    return name


def job_dir_name(readable: str, signature: str) -> str:
    return f"{sanitize(readable)}-{signature}"


def ensure_inside(path: str | Path, root: str | Path) -> Path:
    """``path`` resolved, or a UserError when it would land outside ``root``."""
    rp, rr = Path(path).resolve(), Path(root).resolve()
    if rp != rr and rr not in rp.parents:
        raise UserError(f"refusing {str(path)!r}: it resolves outside the runs directory {str(rr)!r}")
    return rp
