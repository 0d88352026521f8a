"""The run store: the on-disk truth of every run and sweep, and the only code that writes it.

Modules (each imports only the standard library and the ones above it in this list)::

    paths.py       RunDir / SweepDir: every file's path as a property; the file-name constants
    safe.py        opens that follow no link inside a run or sweep directory (O_NOFOLLOW, dir fds)
    atomic.py      atomic writes (temp + fsync + rename), tolerant reads, metrics.jsonl appends
    yamlcheck.py   YAML someone else may have written, read with bounds (config dirs, config.yaml)
    schemas.py     the schemas of results/status/job/sweep JSON files; results_record()
    names.py       safe directory names; ensure_inside() keeps every path in the runs root
    procs.py       pid + start time checks (a reused pid is not the recorded process)
    locks.py       flock-based locks that name their holder
    rundir.py      prepare_run_dir, write_status, write_results, write_eval, schema-checked readers
    manifest.py    a sweep's sweep.json
    decision.py    a seeds-until-decided sweep's decision.json
    discovery.py   finding sweeps and runs under a runs root
    root.py        the runs root shared by every command (--runs-root, BBRCTL_RUNS_ROOT)

Nothing in this package imports torch, Hydra or anything above it (config, sweep, launch,
status, cli). The names below are the package's API.
"""

from bbrctl.store.atomic import (PRIVATE, append_jsonl, append_lines, atomic_write_bytes, atomic_write_json,
                                 atomic_write_text, atomic_write_with, default_mode, read_json)
from bbrctl.store.paths import (CHECKPOINTS, CONFIG, EVALS, JOB, LOG, MANIFEST, METRICS, RESULTS, STATUS, STDOUT_LOG,
                                STOP_REQUEST, TRAIN_SWEEP, RunDir, SweepDir)
from bbrctl.store.rundir import (DamagedFile, load_checked, prepare_run_dir, read_config, read_eval, read_job,
                                 read_progress, read_results, read_status, write_eval, write_results, write_status)
from bbrctl.store.schemas import AP_KEYS, FINAL, STATES, results_record

__all__ = [
    "PRIVATE", "default_mode", "append_jsonl", "append_lines", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "atomic_write_with",
    "read_json", "CHECKPOINTS", "CONFIG", "JOB", "LOG", "MANIFEST", "METRICS", "RESULTS", "STATUS", "STDOUT_LOG",
    "STOP_REQUEST", "TRAIN_SWEEP", "RunDir", "SweepDir", "DamagedFile", "load_checked", "prepare_run_dir", "read_config", "read_eval",
    "read_job", "read_progress", "read_results", "read_status", "write_eval", "write_results", "write_status",
    "AP_KEYS", "FINAL", "STATES", "results_record",
]
