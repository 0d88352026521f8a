"""A study's Optuna storage, kept inside its study directory ``<runs_root>/<study>/``.

``study.db``       SQLite (``--storage sqlite``): for a study directory on a local disk. SQLite's
                   locking relies on POSIX byte-range locks that NFS does not implement
                   reliably, so a database there can be corrupted; never put it on a shared
                   cluster file system.
``study.journal``  Optuna's journal file (``--storage journal``, JournalFileBackend): an append-only
                   log guarded by a lock file created atomically, which is what a shared file
                   system (NFS, Lustre, GPFS) offers; the default for launcher=slurm.

One storage file per study directory: the kind is whichever exists, and asking for the
other one is refused rather than starting a second, empty study beside the first.
"""

from __future__ import annotations

from pathlib import Path

from bbrctl.errors import UserError
from bbrctl.tune import defaults

FILES = {"sqlite": "study.db", "journal": "study.journal"}
LOCK = ".tune.lock"                  # held by the driver: one `bbrctl tune` per study at a time


def existing_kind(study_dir: Path) -> str | None:
    found = [k for k, f in FILES.items() if (study_dir / f).is_file()]
    if len(found) > 1:
        raise UserError(f"{study_dir} holds both {FILES['sqlite']} and {FILES['journal']}; keep the one the study "
                        "ran with and move the other away")
    return found[0] if found else None


def choose_kind(study_dir: Path, requested: str | None, launcher: str) -> str:
    """The storage kind to use: the existing file's, the requested one, or the launcher's default."""
    if requested is not None and requested not in defaults.STORAGES:
        raise UserError(f"unknown --storage {requested!r}; valid: {', '.join(defaults.STORAGES)}")
    have = existing_kind(study_dir)
    if have is not None:
        if requested is not None and requested != have:
            raise UserError(f"study {study_dir.name} is stored in {FILES[have]} ({have}); it cannot continue with "
                            f"--storage {requested} (use --storage {have}, or another --name)")
        return have
    return requested or defaults.STORAGE_BY_LAUNCHER.get(launcher, "sqlite")


def is_study_dir(path: Path) -> bool:
    return any((path / f).is_file() for f in FILES.values())


def open_storage(study_dir: Path, kind: str):
    """The Optuna storage object for ``study_dir`` (the file is created on first use)."""
    from bbrctl.tune.optuna_import import optuna

    op = optuna()
    path = (study_dir / FILES[kind]).resolve()
    if kind == "sqlite":
        return op.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}})
    from optuna.storages.journal import JournalFileBackend

    return op.storages.JournalStorage(JournalFileBackend(str(path)))


def load_study(study_dir: Path):
    """The stored study of ``study_dir`` for reading (status, report); UserError if there is none."""
    from bbrctl.tune.optuna_import import optuna

    kind = existing_kind(study_dir)
    if kind is None:
        raise UserError(f"{study_dir} holds no study ({' or '.join(FILES.values())}); start one with `bbrctl tune`")
    try:
        return optuna().load_study(study_name=defaults.STUDY_NAME, storage=open_storage(study_dir, kind))
    except KeyError:
        raise UserError(f"{study_dir / FILES[kind]} holds no study named {defaults.STUDY_NAME!r}") from None
