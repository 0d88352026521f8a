"""Errors the CLI turns into one-line messages and exit codes; the trainer's requeue exit code."""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2, nothing written."""

    exit_code = 2


class StorageError(Exception):
    """A file could not be written (disk full, read-only, no permission): one line, exit code 1."""

    exit_code = 1

    @classmethod
    def of(cls, path, err: OSError) -> "StorageError":
        what = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system"}.get(err.errno or -1)
        reason = err.strerror or str(err)
        return cls(f"cannot write {path}: {reason}" + (f" ({what})" if what and what not in reason.lower() else ""))


# OS errors that mean "this place cannot be written", whoever raised them.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


# A trainer that checkpointed on a stop signal (USR1/TERM) exits with this (EX_TEMPFAIL): the
# local supervisor and the SLURM script read it as "requeue me", not as a failure.
REQUEUE_EXIT = 75
