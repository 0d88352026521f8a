"""Atomic file writes and tolerant reads: the one way bbrctl puts bytes on disk.

Every file a run or sweep directory holds is written through :func:`atomic_write_with`
(temp file in the same directory, fsync, rename), so a reader sees the old file or the
new one, never half of one, whatever kills the writer. ``metrics.jsonl`` is the one
append-only file: :func:`append_jsonl` writes each record as a single ``write()`` of one
line, so concurrent readers see whole lines.

File modes: a written file gets the mode a plain ``open(path, "w")`` would give it
(0666 less the process umask), so a lab that shares a runs root with ``umask 002`` or
``022`` gets files its members can read; ``mkstemp``'s own 0600 would hide finished runs
from everyone but their owner. A file that holds secrets (the SLURM batch script with the
launcher's setup lines) passes ``mode=PRIVATE`` and is readable by its owner only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from bbrctl.errors import STORAGE_ERRNOS, StorageError, UserError
from bbrctl.store import safe

TMP_SUFFIX = ".tmp"
PRIVATE = 0o600  # owner read/write only, whatever the umask


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (threads may be writing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(base: int = 0o666) -> int:
    """``base`` less the umask: the mode open()/mkdir() would give a new file or directory."""
    return base & ~current_umask()


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], None], mode: int | None = None,
                      levels: int = 1) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    ``mode``: the file's permission bits (default: 0666 less the umask, as open() gives).
    A failure (or Ctrl-C) inside ``write`` leaves the old file and no temp file behind. A
    place that cannot be written (disk full, read-only, no permission) raises
    StorageError naming ``path``. The directory is opened without following a link and
    the temp file is made and renamed inside it (bbrctl.store.safe): a planted link is
    replaced, never written through. ``levels``: how many directories above the file are
    bbrctl's and checked (2 for ``checkpoints/last.pt``: neither the run directory nor
    ``checkpoints/`` may be a link; 0 for a path the user named, ``report --out``, whose
    directory may be a link of theirs).
    """
    path = Path(path)
    safe.ensure_dir(path.parent, levels=levels)
    dfd = safe.open_dir(path.parent, follow=levels == 0)
    try:
        tmp, fd = _make_temp(dfd, path)
        try:
            os.fchmod(fd, default_mode() if mode is None else mode)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            safe.replace_in_dir(dfd, tmp, path.name)
        except BaseException as e:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except FileNotFoundError:
                pass
            if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
                raise StorageError.of(path, e) from None
            raise
    finally:
        os.close(dfd)


def _make_temp(dfd: int, path: Path) -> tuple[str, int]:
    """A new temp file ``.<name>.<random>.tmp`` in directory ``dfd`` (O_EXCL: never an existing one)."""
    for _ in range(100):
        tmp = f".{path.name[:200]}.{secrets.token_hex(6)}{TMP_SUFFIX}"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | safe.NOFOLLOW, 0o600, dir_fd=dfd)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno in STORAGE_ERRNOS:
                raise StorageError.of(path, e) from None
            # /proc, a name over the file-system limit: the path given cannot hold a file.
            raise UserError(f"cannot write {str(path)!r}: {e.strerror or e}; give a path bbrctl can create "
                            "files in") from None
    raise StorageError(f"cannot write {path}: no free temp file name")


@contextlib.contextmanager
def made_dirs(path: str | os.PathLike, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Create ``path`` (and missing parents) for the block; on failure remove what was created.

    ``keep``: names of files the block may leave in ``path`` that count as nothing (a lock
    file): removed with it.
    """
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise StorageError.of(path, e) from None
        raise
    try:
        yield path
    except BaseException:
        for d in created:           # deepest first
            for name in keep:
                try:
                    (d / name).unlink()
                except OSError:
                    pass
            try:
                d.rmdir()
            except OSError:
                break               # not empty: something else lives there now
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None, levels: int = 1) -> None:
    atomic_write_with(path, lambda f: f.write(data), mode=mode, levels=levels)


def atomic_write_text(path: str | os.PathLike, text: str, mode: int | None = None, levels: int = 1) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode, levels=levels)


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any, levels: int = 1) -> None:
    atomic_write_text(path, dumps_json(obj), levels=levels)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """A JSON file written by atomic_write_json; ``default`` if absent, unreadable or not a
    regular file (a link, FIFO or directory in its place is never followed or waited on)."""
    try:
        return json.loads(safe.read_bytes(path))
    except (OSError, ValueError, UnicodeDecodeError, safe.UnsafePath):
        return default


def append_lines(path: str | os.PathLike, lines: str) -> None:
    """Append whole lines (one write() call: concurrent readers see whole lines or nothing new).

    The file is opened without following a link (bbrctl.store.safe): a ``train.log`` that
    is a symlink is refused, not appended through.
    """
    try:
        with safe.open_append(path) as fd:
            os.write(fd, lines.encode("utf-8"))
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise StorageError.of(path, e) from None
        raise


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    append_lines(path, json.dumps(record, sort_keys=True, default=float) + "\n")
