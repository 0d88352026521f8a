"""The runs root: one resolution shared by every command.

``--runs-root DIR`` on the command line, else the config's ``runs_root`` where a command
composes one (``sweep``, ``train``: a ``runs_root=...`` override, else the shipped default,
which reads ``BBRCTL_RUNS_ROOT``), else the ``BBRCTL_RUNS_ROOT`` environment variable
(``status``, ``report``, ``sweep --cancel``), else ``runs`` in the current directory. The runs root is where things
live, not what they are: it is never part of a signature.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bbrctl.errors import UserError

ENV = "BBRCTL_RUNS_ROOT"
DEFAULT = "runs"


def runs_root(option: str | os.PathLike | None = None, configured: Any = None) -> Path:
    """The runs root as an absolute path (nothing is created)."""
    for value, what in ((option, "--runs-root"), (configured, "runs_root"), (os.environ.get(ENV) or None, ENV)):
        if value is None or value == "":
            continue
        text = str(value)
        if not isinstance(value, (str, os.PathLike)) or "\n" in text or "\0" in text:
            raise UserError(f"{what} must be a directory path, got {value!r}")
        return Path(text).expanduser().resolve()
    return Path(DEFAULT).resolve()
