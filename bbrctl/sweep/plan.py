"""What a sweep expands to: its jobs (config, signature, run directory) and its manifest entry."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bbrctl.store.names import sanitize


@dataclass
class Job:
    index: int
    overrides: list[str]             # concrete Hydra overrides that compose this job
    swept: list[tuple[str, str]]     # (key, value) of the swept keys, for the readable name
    config: dict                     # resolved config (plain data; read-only: jobs share subtrees)
    signature: str
    name: str                        # readable part of the directory name
    dir_name: str = ""               # <name>-<signature>, or an existing dir of this job
    run_dir: Path | None = None
    previous_signatures: list[str] = field(default_factory=list)   # its dir was made under these


@dataclass
class SweepPlan:
    name: str
    runs_root: Path
    sweep_dir: Path
    jobs: list[Job]
    overrides: list[str]             # as typed
    swept_keys: list[str]
    launcher: dict
    experiment: str | None = None
    duplicates: int = 0              # jobs merged because their signature repeated
    stats: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "sweep": self.name, "sweep_dir": str(self.sweep_dir), "runs_root": str(self.runs_root),
            "launcher": self.launcher.get("name"), "experiment": self.experiment, "swept_keys": self.swept_keys,
            "n_jobs": len(self.jobs), "duplicates_merged": self.duplicates,
        }

    def merge_into(self, manifest: dict) -> dict:
        """Add the plan's jobs to the manifest (which keeps every job the sweep ever had).

        A job adopted from a previous signature takes over that signature's entry and
        launch records, so its history stays attached to it.
        """
        manifest.setdefault("name", self.name)
        manifest.setdefault("created", time.time())
        manifest["runs_root"] = str(self.runs_root)
        manifest["swept_keys"] = self.swept_keys
        manifest["experiment"] = self.experiment
        manifest["overrides"] = self.overrides
        jobs = manifest.setdefault("jobs", {})
        launches = manifest.setdefault("launches", [])
        for j in self.jobs:
            for old in j.previous_signatures:
                if old in jobs and j.signature not in jobs:
                    jobs[j.signature] = jobs.pop(old)
                for launch in launches:
                    launch["jobs"] = [j.signature if s == old else s for s in launch.get("jobs") or []]
                    tasks = launch.get("tasks")
                    if isinstance(tasks, dict) and old in tasks:
                        tasks[j.signature] = tasks.pop(old)
        nxt = 1 + max((v["index"] for v in jobs.values() if isinstance(v.get("index"), int)), default=-1)
        for j in self.jobs:
            old = jobs.get(j.signature) or {}
            index = old.get("index")
            if index is None:
                index, nxt = nxt, nxt + 1
            jobs[j.signature] = {"dir": j.dir_name, "name": j.name, "overrides": j.overrides, "index": index}
        return manifest


def readable_name(swept: Sequence[tuple[str, str]], cfg: dict) -> str:
    if swept:
        return sanitize("-".join(f"{k.lstrip('+~')}={v}" for k, v in swept))
    loss = cfg.get("loss", {}).get("name") if isinstance(cfg.get("loss"), dict) else None
    return sanitize(f"loss={loss}" if loss else "job")
