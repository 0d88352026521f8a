"""Is a recorded process still the one that was recorded? (pid + start time, Linux /proc)."""

from __future__ import annotations

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


def pid_alive(pid: Any, start: Any) -> bool:
    """True only with proof that the recorded process still runs: ``pid`` runs (not a
    zombie) and its start time is ``start``.

    A record without a start time (hand-made, or from someone else's file) proves nothing:
    False, so such a pid is never signalled and never counts as running; a reused pid has
    another start time.
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 1 << 22:
        return False
    if not isinstance(start, (int, float)) or isinstance(start, bool):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        if fields[0] == b"Z":
            return False             # a zombie has finished
        return float(fields[19]) == float(start)
    except (OSError, IndexError, ValueError):
        return False
