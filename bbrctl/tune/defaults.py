"""Every default of `bbrctl tune` in one place (the CLI and presets override them)."""

from __future__ import annotations

TRIALS = 20
METRIC = "AP"                     # results.json metrics.bbox.AP; "segm.AP" names another IoU type
DIRECTION = "maximize"
DIRECTIONS = ("maximize", "minimize")
SAMPLER = "tpe"
SAMPLERS = ("tpe", "cmaes", "random", "grid")
SEED = 0
PARALLEL = 1
PRUNER = "median"
PRUNERS = ("median", "halving", "none")
# Optuna's MedianPruner waits for this many finished trials before it prunes (Optuna's own
# default is 5; a study of a dozen trials cannot wait that long).
PRUNER_STARTUP_TRIALS = 2
STORAGES = ("sqlite", "journal")
# SQLite's locking is unsafe on NFS: jobs on a cluster (launcher=slurm) default to the journal file.
STORAGE_BY_LAUNCHER = {"local": "sqlite", "slurm": "journal"}
POLL_S = 2.0                      # how often the driver reads the trials' run directories
MAX_RELAUNCHES = 3                # per trial and driver session: a run that never starts fails
STUDY_NAME = "study"              # the Optuna study name inside the storage (one per directory)
