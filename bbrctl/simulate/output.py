"""Where a simulation's files go, and how they get there whole.

A simulation writes one run directory (default ``runs/simulate/<kind>-<signature>/``).
Every file is first written into a hidden sibling staging directory, which is renamed
into place only when everything in it is complete; on any failure the staging directory
is removed and nothing appears. Re-running the same settings finds the finished
directory and reuses it unless forced.

Files of a setup run:

* ``summary.json``: {"setup", "config", "signature", "losses": {name: {"final_error",
  "initial_error", "mean_iou", "median_iou", "frac_iou_gt_0.5", "frac_iou_gt_0.75",
  "frac_iou_gt_0.9", "wall_time_s"}}, "device", "pairs", ...}
* ``error_curves.csv``: iteration, then E(t) per loss.
* ``iou_quantiles.csv``: loss, iteration, q0, q05, q25, q50, q75, q95, q100, mean, then the
  fractions of pairs with IoU above 0.5 / 0.75 / 0.9.
* ``error_curves.png``, ``iou_boxplots.png`` (Figures 7/8 (a) and (b)) unless plots are off.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bbrctl.errors import STORAGE_ERRNOS, StorageError, UserError
from bbrctl.store import atomic_write_json, atomic_write_text, default_mode, read_json

SUMMARY = "summary.json"
ERROR_CSV = "error_curves.csv"
QUANTILE_CSV = "iou_quantiles.csv"
DONE_MARKERS = (SUMMARY, "figure.json")
# Written first into every simulation output: --force replaces only directories holding it
# (a regular file with this text), never someone's other data, whatever else they hold.
MARKER = ".bbrctl-simulation"
MARKER_TEXT = "written by bbrctl simulate; --force may replace this directory\n"


def default_run_dir(kind: str, signature: str, runs_root: str | os.PathLike = "runs") -> Path:
    return Path(runs_root) / "simulate" / f"{kind}-{signature}"


def is_complete(run_dir: Path) -> bool:
    return any(isinstance(read_json(run_dir / m), dict) for m in DONE_MARKERS)


def is_simulation_output(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds bbrctl's own marker (a summary.json or figure.json alone
    proves nothing: anyone can write one)."""
    from bbrctl.store import safe

    try:
        return safe.read_bytes(run_dir / MARKER, limit=4096).decode("utf-8", "replace") == MARKER_TEXT
    except (OSError, UserError):
        return False


def check_destination(run_dir: Path, *, explicit: bool, force: bool) -> bool:
    """Refuse unusable destinations before any work; True if a finished run can be reused.

    An explicit ``--out`` that exists and is not empty is refused unless forced; even
    forced, only a simulation output (its marker file) is replaced, never other data. The
    default, signature-named directory is reused when complete.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {str(run_dir)!r} exists and is not a directory; give a directory path")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return False
    if force:
        if not is_simulation_output(run_dir):
            raise UserError(f"{str(run_dir)!r} holds files that are not a bbrctl simulation (no {MARKER}); "
                            "--force replaces only simulation outputs: choose another directory")
        return False
    if explicit:
        raise UserError(f"--out {str(run_dir)!r} exists and is not empty; pass --force to replace it "
                        f"or choose another directory")
    if is_complete(run_dir) and is_simulation_output(run_dir):
        return True
    raise UserError(f"{str(run_dir)!r} exists but holds no finished simulation; pass --force to replace it")


@contextmanager
def staged(run_dir: Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty staging directory; on success it becomes ``run_dir`` (atomically)."""
    run_dir = Path(run_dir)
    created = []
    for parent in reversed(run_dir.parents):  # remember what we create, to undo on failure
        if not parent.exists():
            created.append(parent)
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".tmp", dir=run_dir.parent))
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise StorageError.of(run_dir, e) from None
        raise
    try:
        os.chmod(tmp, default_mode(0o777))   # mkdtemp makes it 0700; a run dir is for everyone to read
        atomic_write_text(tmp / MARKER, MARKER_TEXT)
        yield tmp
        if run_dir.exists():
            if any(run_dir.iterdir()) and (not force or not is_simulation_output(run_dir)):
                raise UserError(f"{str(run_dir)!r} appeared while simulating; pass --force to replace it"
                                if not force else f"{str(run_dir)!r} now holds files that are not a bbrctl "
                                "simulation; not replaced")
            old = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".old", dir=run_dir.parent))
            os.replace(run_dir, old / "d")
            os.replace(tmp, run_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, run_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            raise StorageError.of(run_dir, e) from None
        raise


def _csv_text(header: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([f"{v:.10g}" if isinstance(v, float) else v for v in r])
    return buf.getvalue()


def write_error_csv(path: Path, traces) -> None:
    names = list(traces)
    T = len(next(iter(traces.values())).error) - 1
    rows = ([t, *(traces[n].error[t] for n in names)] for t in range(T + 1))
    atomic_write_text(path, _csv_text(["iteration", *names], rows))


def write_quantile_csv(path: Path, traces) -> None:
    from bbrctl.simulate.descent import QUANTILE_NAMES, THRESHOLDS

    fracs = [f"frac_iou_gt_{th:g}" for th in THRESHOLDS]
    header = ["loss", "iteration", *QUANTILE_NAMES, "mean", *fracs]
    rows = []
    for name, tr in traces.items():
        for t, rec in zip(tr.record_iterations, tr.records):
            rows.append([name, t, *(rec[q] for q in QUANTILE_NAMES), rec["mean"], *(rec[f] for f in fracs)])
    atomic_write_text(path, _csv_text(header, rows))


def write_rows_csv(path: Path, header: list[str], rows) -> None:
    atomic_write_text(path, _csv_text(header, rows))


def write_json(path: Path, obj) -> None:
    atomic_write_json(path, obj)
