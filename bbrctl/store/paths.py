"""Where everything of a run or a sweep lives: every path is a property, nowhere else spelled.

::

    <runs_root>/
      <sweep>/                       SweepDir
        sweep.json                   the manifest (bbrctl.store.manifest)
        decision.json                seeds until decided: rule, seeds, looks (bbrctl.store.decision)
        .sweep.lock                  held while a `bbrctl sweep` launches it
        sweep.log                    the local supervisor's log
        launches/local-<k>.json      a background supervisor's plan
        slurm/launch-<k>.sbatch      the submitted script, its task list and logs/
        <readable>-<signature>/      RunDir
          config.yaml                resolved config, written first
          job.json                   signature, name, sweep, overrides, created, config
          status.json                progress while it runs
          metrics.jsonl              one record per logged iteration (append-only)
          train.log, stdout.log      human-readable logs
          checkpoints/last.pt        the resume point
          results.json               the outcome: done | failed
          stop.request               asks the trainer to checkpoint and stop (a pruned `bbrctl tune` trial)
          evals/<name>.json          `bbrctl eval` re-evaluations (results.json untouched)
      train/<model>-<backbone>-<loss>-<signature>/   single `bbrctl train` runs

Nothing here touches the disk: these are names. Reading and writing what they name is
the business of the other modules of this package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
JOB = "job.json"
STATUS = "status.json"
RESULTS = "results.json"
METRICS = "metrics.jsonl"
LOG = "train.log"
STDOUT_LOG = "stdout.log"
CHECKPOINTS = "checkpoints"
EVALS = "evals"
TRAIN_LOCK = ".train.lock"
STOP_REQUEST = "stop.request"

MANIFEST = "sweep.json"
DECISION = "decision.json"
SWEEP_LOCK = ".sweep.lock"
SWEEP_LOG = "sweep.log"
TRAIN_SWEEP = "train"           # the folder of single `bbrctl train` runs


@dataclass(frozen=True)
class _Dir:
    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name


class RunDir(_Dir):
    """One job's directory."""

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def job(self) -> Path:
        return self.path / JOB

    @property
    def status(self) -> Path:
        return self.path / STATUS

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def stdout_log(self) -> Path:
        return self.path / STDOUT_LOG

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def lock(self) -> Path:
        return self.path / TRAIN_LOCK

    @property
    def evals(self) -> Path:
        return self.path / EVALS

    @property
    def stop_request(self) -> Path:
        return self.path / STOP_REQUEST

    def eval_file(self, name: str) -> Path:
        return self.evals / f"{name}.json"


class SweepDir(_Dir):
    """One sweep's directory (also the ``train/`` folder of single runs)."""

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def decision(self) -> Path:
        return self.path / DECISION

    @property
    def lock(self) -> Path:
        return self.path / SWEEP_LOCK

    @property
    def log(self) -> Path:
        return self.path / SWEEP_LOG

    @property
    def launches(self) -> Path:
        return self.path / "launches"

    def local_plan(self, launch_id: int) -> Path:
        return self.launches / f"local-{launch_id}.json"

    @property
    def slurm(self) -> Path:
        return self.path / "slurm"

    @property
    def slurm_logs(self) -> Path:
        return self.slurm / "logs"

    def slurm_script(self, launch_id: int) -> Path:
        return self.slurm / f"launch-{launch_id}.sbatch"

    def slurm_tasks(self, launch_id: int) -> Path:
        return self.slurm / f"launch-{launch_id}.tasks"

    def run(self, dir_name: str) -> RunDir:
        return RunDir(self.path / dir_name)
