"""Is a recorded process still the one that was recorded? (pid + start time, Linux /proc)."""

from __future__ import annotations

import os
from typing import Any


def proc_start_time(pid: int) -> float | None:
    """A process's start time (clock ticks since boot) to tell it from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
        return float(data.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: Any, start: Any = None) -> bool:
    """True while ``pid`` runs (not a zombie) and, if ``start`` is given, started then."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 1 << 22:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OverflowError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False         # a zombie has finished
    except (OSError, IndexError):
        pass
    if start is not None:
        now = proc_start_time(pid)
        if now is not None and now != start:
            return False
    return True
