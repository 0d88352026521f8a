"""Seeds until decided: a sweep run in rounds of seeds until the sequential rule decides.

``bbrctl sweep ... sweep.seeds=auto sweep.compare=A:B --wait`` (docs/sequential.md). The
sweep's own overrides define the rows (e.g. ``loss=baseline,focal_eiou``); this module
chooses the seeds. Round 1 runs seeds 0 .. min_seeds-1 in every row, each later round
``seeds_per_round`` more, each round one ordinary launch (bbrctl.launch.submit: done runs
skipped, failed ones relaunched; one SLURM array per round). After a round the pairs
(seeds finished in both rows A and B) are handed to bbrctl.report.sequential; a look is
taken when their count is one of the design's planned looks. It stops when the rule
decides or max_seeds seeds have been started (undecided).

Failures: a seed whose run failed in either row is re-run once (the next launch relaunches
it from its checkpoint); failed again, it is counted missing in both rows and never enters
a look, so no row loses a seed the other keeps. Missing seeds still count towards
max_seeds.

Resume: ``<sweep>/decision.json`` (bbrctl.store.decision) records the design, the seeds
started, the retries, the missing seeds and the looks before and after every round; a
second invocation continues from it (finished seeds are done runs, never re-run) and
refuses changed settings: the boundaries are fixed before the first look.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from bbrctl.errors import UserError
from bbrctl.launch.submit import launch
from bbrctl.report import sequential
from bbrctl.store import read_results
from bbrctl.store.decision import read_decision, write_decision
from bbrctl.sweep import SweepPlan, expand, parse_overrides


@dataclass(frozen=True)
class Settings:
    key: str                 # the swept key whose two values are compared (e.g. loss)
    a: str
    b: str
    metric: str
    alpha: float
    boundary: str
    min_seeds: int
    max_seeds: int
    seeds_per_round: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def design(self) -> sequential.Design:
        return sequential.design(self.alpha, self.min_seeds, self.max_seeds, self.boundary)


def is_auto(plan: SweepPlan) -> bool:
    return (plan.jobs[0].config.get("sweep") or {}).get("seeds") == "auto"


def settings(plan: SweepPlan) -> Settings:
    """The rule's settings from the composed sweep node, checked against the plan's rows."""
    sw = plan.jobs[0].config["sweep"]
    a, _, b = str(sw["compare"]).partition(":")
    keys = [k for k in plan.swept_keys if k != "seed"]
    found = [k for k in keys if {a, b} <= {v for j in plan.jobs for kk, v in j.swept if kk.lstrip("+~") == k}]
    if not found:
        swept = ", ".join(f"{k}" for k in keys) or "none"
        raise UserError(f"sweep.compare={a}:{b}: {a} and {b} must both be values of one swept key "
                        f"(swept keys besides seed: {swept}); e.g. loss=baseline,focal_eiou sweep.compare=focal_eiou:baseline")
    return Settings(found[0], a, b, str(sw.get("metric", "AP")), float(sw.get("alpha", 0.05)),
                    str(sw.get("boundary", "pocock")), int(sw.get("min_seeds", 3)), int(sw.get("max_seeds", 8)),
                    int(sw.get("seeds_per_round", 1)))


def check_no_seed_override(overrides: Sequence[str], config_dirs: Sequence[str]) -> None:
    for o in parse_overrides(overrides, config_dirs):
        if o.get_key_element().lstrip("+~") == "seed":
            raise UserError(f"sweep.seeds=auto chooses the seeds (0, 1, 2, ... until decided); drop {o.input_line!r}")


def next_round(overrides: Sequence[str], config_dirs: Sequence[str] = (), *, name: str | None = None,
               runs_root=None) -> SweepPlan:
    """The plan the command would launch first (for --dry-run): seeds 0 .. n-1, n the seeds the
    record says were started (the round in progress), else min_seeds; done runs show as skipped."""
    check_no_seed_override(overrides, config_dirs)
    plan = _round_plan(overrides, config_dirs, 2, name, runs_root)   # 2: the seed is swept, as in every round
    st = settings(plan)
    rec = read_decision(plan.sweep_dir) or {}
    return _round_plan(overrides, config_dirs, max(int(rec.get("seeds", 0)), st.min_seeds), name, runs_root)


def _round_plan(overrides: Sequence[str], config_dirs: Sequence[str], n: int, name: str | None,
                runs_root) -> SweepPlan:
    return expand([*overrides, "seed=" + ",".join(str(s) for s in range(n))], config_dirs, name=name,
                  runs_root=runs_root)


def _pairs_of(plan: SweepPlan, st: Settings) -> dict[int, dict]:
    """seed -> {"a": job, "b": job}: exactly one job per compared row and seed."""
    out: dict[int, dict] = {}
    for j in plan.jobs:
        vals = {k.lstrip("+~"): v for k, v in j.swept}
        row = "a" if vals.get(st.key) == st.a else "b" if vals.get(st.key) == st.b else None
        if row is None:
            continue
        seed = int(j.config["seed"])
        if row in out.setdefault(seed, {}):
            raise UserError(f"sweep.compare={st.a}:{st.b}: more than one job of {st.key}={vals[st.key]} per seed "
                            f"(another swept key varies: {', '.join(k for k in vals if k not in (st.key, 'seed'))}); "
                            f"compare two single rows")
        out[seed][row] = j
    return out


def _outcome(run_dir: Path, metric: str) -> tuple[str, float | None]:
    res = read_results(run_dir)
    if res is None:
        return "unfinished", None
    if res.get("status") != "done":
        return "failed", None
    v = ((res.get("metrics") or {}).get("bbox") or {}).get(metric)
    return ("done", float(v)) if isinstance(v, (int, float)) and v >= 0 else ("failed", None)


@dataclass
class RoundsResult:
    plan: SweepPlan
    settings: Settings
    record: dict
    outcome: sequential.Outcome
    diffs: dict[int, float]


def run_until_decided(overrides: Sequence[str], config_dirs: Sequence[str] = (), *, name: str | None = None,
                      runs_root=None, progress: bool = True,
                      echo: Callable[[str], None] | None = None) -> RoundsResult:
    """Run rounds of seeds until the rule decides or the cap is reached (see the module)."""
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    overrides, config_dirs = list(overrides), list(config_dirs)
    check_no_seed_override(overrides, config_dirs)
    plan = _round_plan(overrides, config_dirs, 2, name, runs_root)   # 2: the seed is swept, as in every round
    st = settings(plan)
    dsg = st.design()
    rec = read_decision(plan.sweep_dir) or {}
    if rec and rec["settings"] != st.as_dict():
        changed = ", ".join(f"{k} {rec['settings'].get(k)!r} -> {v!r}" for k, v in st.as_dict().items()
                            if rec["settings"].get(k) != v)
        raise UserError(f"sweep {plan.name} was started with other seeds-until-decided settings ({changed}); "
                        f"the boundaries are fixed before the first look: keep them, or use a new --name")
    rec = {"sweep": plan.name, "settings": st.as_dict(), "seeds": 0, "missing": [], "retried": [], "looks": [],
           "pairs": {}, "state": "running", **{k: v for k, v in rec.items() if k not in ("schema", "updated")}}
    n = max(rec["seeds"], st.min_seeds)

    while True:
        plan = _round_plan(overrides, config_dirs, n, name, runs_root)
        by_seed = _pairs_of(plan, st)
        rec["seeds"] = n
        rec["pairs"] = {str(s): {r: str(j.run_dir) for r, j in p.items()} for s, p in sorted(by_seed.items())}
        if rec["state"] == "running":
            write_decision(plan.sweep_dir, rec)
            echo(f"sweep {plan.name}: seeds until decided ({st.a} vs {st.b}, {st.metric}): round with seeds 0-{n - 1}")
            launch(plan, wait=True, echo=echo, progress=progress)
        diffs, failed = {}, []
        for s, p in sorted(by_seed.items()):
            if s in rec["missing"]:
                continue
            got = [_outcome(p[r].run_dir, st.metric) if r in p else ("failed", None) for r in ("a", "b")]
            if all(g[0] == "done" for g in got):
                diffs[s] = got[0][1] - got[1][1]
            elif any(g[0] in ("failed", "unfinished") for g in got):
                failed.append(s)
        if rec["state"] == "running" and failed:
            again = [s for s in failed if s not in rec["retried"]]
            rec["missing"] = sorted(set(rec["missing"]) | {s for s in failed if s in rec["retried"]})
            if again:
                rec["retried"] = sorted(set(rec["retried"]) | set(again))
                write_decision(plan.sweep_dir, rec)
                echo(f"sweep {plan.name}: seed(s) {', '.join(map(str, again))} did not finish in both rows; "
                     f"re-running once")
                continue
            echo(f"sweep {plan.name}: seed(s) {', '.join(map(str, rec['missing']))} failed twice: counted missing "
                 f"in both rows")
        m = len(diffs)
        if rec["state"] == "running" and m in dsg.looks and (not rec["looks"] or m > rec["looks"][-1]):
            rec["looks"].append(m)
        out = sequential.evaluate(diffs, dsg, attempted=n, look_at=rec["looks"])
        if rec["state"] == "running":
            rec["state"] = out.state
            write_decision(plan.sweep_dir, rec)
        if out.state != "running" or n >= st.max_seeds or rec["state"] != "running":
            return RoundsResult(plan, st, rec, out, diffs)
        n = min(n + st.seeds_per_round, st.max_seeds)


def summary(res: RoundsResult) -> str:
    """One line: the state, at which seed count, the rule's interval."""
    st, out = res.settings, res.outcome
    lk = out.last
    iv = f"{lk.mean:+.2f} [{lk.low:+.2f}, {lk.high:+.2f}]" if lk else "no look yet"
    missing = f"; missing seeds {res.record['missing']}" if res.record["missing"] else ""
    if out.state == "decided":
        head = f"decided at {lk.n} seeds: {st.a if lk.mean > 0 else st.b} has the higher {st.metric}"
    elif out.state == "undecided":
        head = f"undecided after {res.record['seeds']} seeds (the cap)"
    else:
        head = f"not decided yet after {res.record['seeds']} seeds"
    return (f"sweep {res.plan.name}: {st.a} - {st.b} ({st.metric}) {head}; {iv} "
            f"({100 * (1 - st.alpha):g}% repeated interval; {out.design.describe()}){missing}")
