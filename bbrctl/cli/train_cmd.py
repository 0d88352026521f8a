from __future__ import annotations

from typing import List, Optional

from bbrctl.cli import app
from bbrctl.cli.common import OverridesArg
from bbrctl.errors import NotBuiltError


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_command(args: Optional[List[str]] = OverridesArg) -> None:
    """(not built yet) See the project's open issues."""
    raise NotBuiltError("`bbrctl train` is not built yet")
