"""The record of a seeds-until-decided sweep: ``<sweep>/decision.json``.

Written by bbrctl.launch.rounds before each round (the seeds it starts) and after it (the
looks taken, the state); read back to resume and by ``bbrctl report``, which recomputes the
rule from the runs' own results and uses the record only for what the runs cannot say: the
design fixed at the start, which seeds were started, which were counted missing, and at
which seed counts the rule looked. Written atomically; every reader checks its schema.

Fields: ``schema`` (1), ``sweep``, ``settings`` (compare key/a/b, metric, alpha, boundary,
min_seeds, max_seeds, seeds_per_round: fixed at the first round), ``seeds`` (seeds 0..n-1
started), ``missing`` (seeds failed twice, left out of both rows), ``retried`` (seeds
re-run once after a failure), ``looks`` (pair counts looked at, in order), ``pairs``
(seed -> {"a": run dir, "b": run dir}), ``state`` (running | decided | undecided).
"""

from __future__ import annotations

import os
import time
from typing import Any

from bbrctl.store.atomic import atomic_write_json
from bbrctl.store.paths import SweepDir
from bbrctl.store.rundir import load_checked
from bbrctl.store.schemas import SchemaError

SETTINGS = ("key", "a", "b", "metric", "alpha", "boundary", "min_seeds", "max_seeds", "seeds_per_round")
DECISION_STATES = ("running", "decided", "undecided")


def _is_int_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def check_decision(d: Any) -> dict:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise SchemaError(msg)

    need(isinstance(d, dict), "must hold a JSON object")
    need(d.get("schema") == 1, f"'schema' must be 1, got {d.get('schema')!r}")
    st = d.get("settings")
    need(isinstance(st, dict) and all(k in st for k in SETTINGS), f"'settings' must hold {', '.join(SETTINGS)}")
    need(isinstance(d.get("seeds"), int) and d["seeds"] >= 0, "'seeds' must be an integer >= 0")
    for k in ("missing", "retried", "looks"):
        need(_is_int_list(d.get(k, [])), f"'{k}' must be a list of integers >= 0")
    need(isinstance(d.get("pairs", {}), dict), "'pairs' must be a mapping of seed to run directories")
    need(d.get("state") in DECISION_STATES, f"'state' must be one of {', '.join(DECISION_STATES)}")
    return d


def read_decision(sweep_dir: str | os.PathLike) -> dict | None:
    """The sweep's decision record, None if it has none; DamagedFile if it is not one."""
    return load_checked(SweepDir(sweep_dir).decision, check_decision)


def write_decision(sweep_dir: str | os.PathLike, record: dict) -> None:
    record = {**record, "schema": 1, "updated": time.time()}
    check_decision(record)
    atomic_write_json(SweepDir(sweep_dir).decision, record)
