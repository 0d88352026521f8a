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
import re
import socket
import time
from typing import Iterator

from bbrctl.errors import UserError
from bbrctl.store import safe
from bbrctl.store.procs import proc_start_time


class Locked(UserError):
    """The lock is held by someone else (exit 2: the user started a second one)."""


def holder(path: str | os.PathLike) -> str:
    """Who holds (or last held) the lock at ``path``, for messages."""
    try:
        info = json.loads(safe.read_bytes(path, limit=4096) or b"{}")
    except (OSError, ValueError, UserError):
        return "another process"
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    # The lock file is anyone's to write: only plain characters of it reach a message.
    pid = info.get("pid") if isinstance(info.get("pid"), int) else "?"
    return f"{_plain(info.get('what') or 'a process')} (pid {pid} on {_plain(info.get('host'))})"


def _plain(v: object) -> str:
    return re.sub(r"[^A-Za-z0-9 ._:@/`-]", "?", str(v))[:80]


def try_lock(path: str | os.PathLike, what: str) -> int | None:
    """Take the lock at ``path``; its fd, or None when another process holds it."""
    # No link followed, no FIFO waited on (bbrctl.store.safe): UnsafePath (exit 2) instead.
    fd = safe.open_file(path, os.O_RDWR | os.O_CREAT, 0o644)
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
        fd = safe.open_file(path, os.O_RDWR, make_dir=False)
    except (OSError, UserError):
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
