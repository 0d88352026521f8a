"""Advisory locks (flock) on a file inside the directory they guard.

A lock is held by an open file description, so it dies with its process: a killed
holder never leaves a stale lock. The holder writes who it is into the lock file, so the
one refused can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from bbrctl.errors import UserError
from bbrctl.store.procs import proc_start_time


class Locked(UserError):
    """The lock is held by someone else (exit 2: the user started a second one)."""


def holder(path: str | os.PathLike) -> str:
    """Who holds (or last held) the lock at ``path``, for messages."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    what = info.get("what") or "a process"
    return f"{what} (pid {info.get('pid')} on {info.get('host')})"


def try_lock(path: str | os.PathLike, what: str) -> int | None:
    """Take the lock at ``path``; its fd, or None when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    me = {"pid": os.getpid(), "pid_start": proc_start_time(os.getpid()), "host": socket.gethostname(),
          "what": what, "since": time.time()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
    except OSError:
        pass            # a full disk must not stop the lock itself from working
    return fd


def release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: str | os.PathLike, what: str, busy: str) -> Iterator[None]:
    """Hold the lock for the block; :class:`Locked` ("<busy>: held by ...") if taken."""
    fd = try_lock(path, what)
    if fd is None:
        raise Locked(f"{busy}: held by {holder(path)}")
    try:
        yield
    finally:
        release(fd)


def is_locked(path: str | os.PathLike) -> bool:
    """Whether some process holds the lock at ``path`` right now (without taking it)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
