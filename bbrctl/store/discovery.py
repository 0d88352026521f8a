"""Finding sweeps and runs under a runs root, without trusting or descending into runs.

A run directory is any directory holding ``job.json``; a sweep directory is a directory
of the runs root holding ``sweep.json`` or run directories. Walks never enter a run
directory (checkpoints can be large) and never follow symbolic links.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from bbrctl.errors import UserError
from bbrctl.store.paths import JOB, MANIFEST

# Never walked into: they belong to a run, not to the runs tree.
_SKIP_DIRS = {"checkpoints", "wandb", "__pycache__"}
_MAX_DEPTH = 8


def run_dirs(sweep_dir: str | os.PathLike, skip: frozenset[str] | set[str] = frozenset()) -> Iterator[Path]:
    """The run directories directly inside ``sweep_dir`` (unordered)."""
    try:
        with os.scandir(sweep_dir) as it:
            for e in it:
                if e.name not in skip and e.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(e.path, JOB)):
                    yield Path(e.path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return


def dirs_by_suffix(sweep_dir: str | os.PathLike) -> dict[str, str]:
    """Directory names inside ``sweep_dir`` by the suffix after their last '-' (a signature)."""
    out: dict[str, str] = {}
    try:
        with os.scandir(sweep_dir) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False) and "-" in e.name:
                    out.setdefault(e.name.rsplit("-", 1)[1], e.name)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        pass
    return out


def list_sweep_dirs(runs_root: str | os.PathLike) -> list[Path]:
    out = []
    try:
        with os.scandir(runs_root) as it:
            for e in sorted(it, key=lambda e: e.name):
                if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                    p = Path(e.path)
                    if (p / MANIFEST).is_file() or next(run_dirs(p), None) is not None:
                        out.append(p)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        pass
    return out


def find_sweep_dir(sweep: str, runs_root: str | os.PathLike) -> Path:
    """A sweep by name (under runs_root) or by path; UserError listing the known ones."""
    runs_root = Path(runs_root)
    cand = runs_root / sweep
    if "/" not in sweep and sweep not in (".", "..") and cand.is_dir():
        return cand.resolve()
    p = Path(sweep).expanduser()
    if p.is_dir() and ((p / MANIFEST).is_file() or next(run_dirs(p), None) is not None):
        return p.resolve()
    known = ", ".join(s.name for s in list_sweep_dirs(runs_root)) or "none"
    raise UserError(f"no sweep {sweep!r} under {str(runs_root)!r} (sweeps there: {known})")


def find_dirs_holding(root: str | os.PathLike, name: str, max_depth: int = _MAX_DEPTH,
                      denied: list[Path] | None = None) -> list[Path]:
    """Every directory under ``root`` (itself included) holding a file ``name``; sorted.

    Such a directory is not descended into; hidden directories and a run's own
    checkpoints/ and wandb/ are skipped; links are not followed. Directories this user may
    not list are appended to ``denied`` when given (another user's private runs: what
    they hold is unknown, not absent).
    """
    found: list[str] = []
    stack = [(str(root), 0)]
    while stack:
        d, depth = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except PermissionError:
            if denied is not None:
                denied.append(Path(d))
            continue
        except OSError:
            continue
        if any(e.name == name for e in entries):
            found.append(d)
            continue
        if depth >= max_depth:
            continue
        for e in entries:
            if e.name.startswith(".") or e.name in _SKIP_DIRS:
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append((e.path, depth + 1))
            except OSError:
                continue
    found.sort()
    return [Path(d) for d in found]


def find_run_dirs(root: str | os.PathLike, denied: list[Path] | None = None) -> list[Path]:
    """Every run directory (one holding job.json) under ``root``; sorted (``denied``: as above)."""
    return find_dirs_holding(root, JOB, denied=denied)
