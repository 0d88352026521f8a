"""Opening files inside run and sweep directories without following links out of them.

Threat model: a shared runs root where anyone in the group can put files (symlinks, FIFOs,
directories) into a run or sweep directory, while bbrctl may run with more rights. The
contract, for every file bbrctl writes, appends to or locks there:

* the directory holding the file is opened with ``O_DIRECTORY | O_NOFOLLOW``: a symlinked
  directory (``checkpoints -> ~/.ssh``, a run directory that is a link) is refused with
  :class:`UnsafePath`, one line, exit 2;
* the file itself is opened relative to that directory's descriptor with ``O_NOFOLLOW``
  (a symlinked ``train.log`` or ``.train.lock`` is refused) and ``O_CLOEXEC``; it must be a
  regular file (a FIFO or directory where a file belongs is refused, never waited on);
* atomic writes create their temp file ``O_EXCL`` in that descriptor and rename inside it,
  so the rename replaces a planted link instead of writing through it.

Components above the directory holding the file (the runs root the user chose) are the
user's and may be links. Nothing here imports anything above the standard library.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Iterator

from bbrctl.errors import STORAGE_ERRNOS, StorageError, UserError

NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW


class UnsafePath(UserError):
    """A link, FIFO or directory where bbrctl writes a file of its own (exit 2)."""


def _refuse(path: Path, what: str) -> UnsafePath:
    return UnsafePath(f"refusing to use {str(path)!r}: {what}; bbrctl writes only real files in real directories "
                      "inside a run or sweep directory (remove it and run again)")


def _os_error(path: Path, e: OSError) -> Exception:
    if e.errno in STORAGE_ERRNOS:
        return StorageError.of(path, e)
    if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
        return _refuse(path, "it is a symbolic link")
    if e.errno == errno.ELOOP:
        return _refuse(path, "it is a symbolic link")
    if e.errno == errno.ENOTDIR:
        return _refuse(path, "it is not a directory")
    if e.errno == errno.EISDIR:
        return _refuse(path, "it is a directory where a file belongs")
    if e.errno == errno.ENXIO:
        return _refuse(path, "it is a FIFO or device, not a file")
    if e.errno == errno.ENAMETOOLONG:
        return UserError(f"{str(path)!r}: a name is longer than the file system allows")
    return e


def ensure_dir(path: str | os.PathLike, levels: int = 1) -> Path:
    """Create ``path`` (and missing parents) as a directory; UnsafePath if it is a link.

    ``levels``: how many trailing components are bbrctl's own and checked, each before the
    next is made in it (``slurm/logs``: 2, so a linked ``slurm/`` never receives ``logs/``).
    """
    path = Path(path)
    if levels <= 0:                 # the user's own path: links followed
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _os_error(path, e) from None
        return path
    for d in [*(path.parents[k] for k in reversed(range(levels - 1))), path]:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            pass                    # a dangling link or a file: the open below names it
        except OSError as e:
            raise _os_error(d, e) from None
        os.close(open_dir(d))
    return path


def open_dir(path: str | os.PathLike, follow: bool = False, reading: bool = False) -> int:
    """A descriptor of directory ``path`` (not followed if it is a link, unless ``follow``);
    UnsafePath else. ``reading``: other OS errors stay OSErrors (a reader says "cannot be
    read", not "cannot write": another user's private run)."""
    path = Path(path)
    try:
        return os.open(path, (_DIR_FLAGS & ~os.O_NOFOLLOW) if follow else _DIR_FLAGS)
    except OSError as e:
        if e.errno == errno.ENOENT or (reading and e.errno in (errno.EACCES, errno.EPERM)):
            raise
        raise _os_error(path, e) from None


def open_file(path: str | os.PathLike, flags: int, mode: int = 0o666, make_dir: bool = True,
              reading: bool = False) -> int:
    """``os.open(path, flags)`` inside its directory, following no link (see module doc).

    The returned descriptor is a regular file's (or UnsafePath is raised). ``make_dir``
    creates a missing directory first.
    """
    path = Path(path)
    if make_dir:
        ensure_dir(path.parent)
    dfd = open_dir(path.parent, reading=reading)
    try:
        try:
            fd = os.open(path.name, flags | NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ENOENT or (reading and e.errno in (errno.EACCES, errno.EPERM)):
                raise
            raise _os_error(path, e) from None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "it is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The content of regular file ``path`` (no link followed); FileNotFoundError if absent.

    ``limit``: refuse (UnsafePath) a file larger than this many bytes.
    """
    path = Path(path)
    fd = open_file(path, os.O_RDONLY, make_dir=False, reading=True)
    try:
        size = os.fstat(fd).st_size
        if limit is not None and size > limit:
            raise _refuse(path, f"it holds {size} bytes, more than the {limit} bbrctl ever writes there")
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_append(path: str | os.PathLike) -> Iterator[int]:
    """An append-only descriptor of ``path`` (created with the umask's mode) for the block."""
    fd = open_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        yield fd
    finally:
        os.close(fd)


def replace_in_dir(dfd: int, src: str, dst: str) -> None:
    os.replace(src, dst, src_dir_fd=dfd, dst_dir_fd=dfd)
