"""Build a table (rows × metrics, with seeds aggregated) from a definition and runs.

Cells are ``mean ± s`` over a row's finished seeds, where s is the sample standard deviation
(n − 1 in the denominator; no s for n = 1). The Δ column is the row's mean minus its
baseline row's mean, with what tells a gain from seed noise (:mod:`bbrctl.report.stats`):

* both rows n ≥ 2: a 95% confidence interval of the difference: paired t over the seeds
  when both rows ran the same seeds (one finished run each), else Welch's t;
* otherwise, when a seed study of the table's setting ships with bbrctl
  (:mod:`bbrctl.report.seed_noise`): the range t_ν σ sqrt(1/n + 1/n_base) that a difference
  of two configurations of equal mean stays within with 95% probability, σ the study's
  pooled seed noise; a smaller |Δ| is "within noise";
* otherwise nothing but the difference, and the legend says that one seed cannot tell.

``RowResult.delta`` keeps (difference, standard error or None) with the standard error
sqrt(s₁²/n₁ + s₂²/n₂) when both rows have n ≥ 2; ``RowResult.interval`` holds the test.
The paper reports single runs, so its rows have neither.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from bbrctl.config.signature import SETTING_KEYS
from bbrctl.report.collect import Collection, Run, load_outcome, metric_value
from bbrctl.report.definitions import TableDef
from bbrctl.report.matching import MISSING, Group, lookup, matches, row_exclusions, select

# When no run of a row has finished, the cell shows the most hopeful state.
STATE_ORDER = ("running", "requeued", "pending", "incomplete", "unreadable", "failed")


@dataclass
class Stat:
    mean: float | None
    std: float | None
    n: int
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        n = len(values)
        if n == 0:
            return cls(None, None, 0, [])
        mean = math.fsum(values) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        return cls(mean, std, n, list(values))


@dataclass
class RowResult:
    id: str
    labels: tuple[str, ...]
    source: str                     # "ours" | "paper"
    state: str                      # done | partial | running | requeued | pending | incomplete | unreadable | failed | missing | not run
    stats: dict[str, Stat] = field(default_factory=dict)
    n_done: int = 0
    n_runs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    baseline: str | None = None
    delta: tuple[float, float | None] | None = None   # (difference, standard error or None)
    notes: dict[str, list[str]] = field(default_factory=dict)  # cell ("n", a column, "delta") → footnote texts
    runs: list[str] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    seed_values: dict[Any, float] | None = None  # the Δ metric by seed, when each finished seed is unique
    interval: Any = None                          # bbrctl.report.stats.Interval of the Δ
    envs: list[dict] = field(default_factory=list)  # the distinct environments its finished runs recorded
    # Against each of the table's ``compare`` rows: row id -> (difference, se or None, Interval or None).
    compared: dict[str, tuple[float, float | None, Any]] = field(default_factory=dict)
    decision: dict | None = None                  # seeds until decided (bbrctl.report.decision)

    def note(self, cell: str, text: str) -> None:
        self.notes.setdefault(cell, []).append(text)


@dataclass
class TableResult:
    definition: TableDef
    rows: list[RowResult]
    notes: list[str]
    setting: dict[str, str]
    root: str
    sweep: str | None
    where: dict[str, Any]
    paper: bool
    paper_caption: str | None
    noise: dict | None = None       # the seed study used for single-seed Δs (see seed_noise)
    build_seconds: float = 0.0
    generated: float = field(default_factory=time.time)

    @property
    def title(self) -> str:
        return self.definition.title


def _fmt_match(m: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in m.items()) + "}"


def _seed(run: Run) -> Any:
    v = lookup(run.config, "seed")
    return None if v is MISSING else v


def _seed_order(run: Run) -> tuple:
    seed = _seed(run)
    number = isinstance(seed, (int, float)) and not isinstance(seed, bool)
    return (0 if number else 1, seed if number else 0, str(seed), str(run.dir))


def _near_miss(runs: list[Run], full_match: dict[str, Any]) -> str:
    """Which single key keeps the closest runs out of a row (e.g. ``weight=2``), for footnotes."""
    seen: dict[str, set[str]] = {}
    for run in runs:
        failing = [k for k, v in full_match.items() if not matches(run.config, {k: v})]
        # A run of another method (another *.name) is not a near miss, just another row.
        if len(failing) == 1 and not failing[0].endswith(".name"):
            k = failing[0]
            have = lookup(run.config, k)
            seen.setdefault(k, set()).add("(unset)" if have is MISSING else (f"{have:g}" if isinstance(have, float) else str(have)))
    if not seen:
        return ""
    parts = [f"{k}={'/'.join(sorted(vals)[:4])}" for k, vals in sorted(seen.items())]
    return "; runs exist that differ only in " + ", ".join(parts)


def _fill_from_group(res: RowResult, group: Group, defn: TableDef) -> None:
    runs = sorted(group.runs, key=_seed_order)
    res.n_runs = len(runs)
    res.runs = [str(r.dir) for r in runs]
    res.seeds = [_seed(r) for r in runs]
    for r in runs:
        res.states[r.state] = res.states.get(r.state, 0) + 1
    done = [r for r in runs if r.state == "done"]
    res.n_done = len(done)
    for env in (r.env for r in done if r.env):
        if env not in res.envs:
            res.envs.append(env)
    for col in defn.columns:
        vals = [v for v in (metric_value(r, defn.metric, col) for r in done) if v is not None]
        res.stats[col] = Stat.of(vals)
        if col == defn.delta:
            by_seed = {_seed(r): metric_value(r, defn.metric, col) for r in done}
            if len(by_seed) == len(done) and None not in by_seed and None not in by_seed.values():
                res.seed_values = by_seed
        if done and not vals:
            res.note(col, "no value: the evaluation set has no objects in that size range (COCO reports -1)"
                     if col in ("APs", "APm", "APl") else f"no value: results.json has no metrics.{defn.metric}.{col}")
    if res.n_done:
        res.state = "done" if res.n_done == res.n_runs else "partial"
    else:
        res.state = next((s for s in STATE_ORDER if res.states.get(s)), "pending")
    label = " / ".join(res.labels)
    pending = [r for r in runs if r.state != "done"]
    if pending:
        parts = []
        for r in pending[:3]:
            detail = f" ({r.detail})" if r.detail else ""
            parts.append(f"seed {_seed(r)} {r.state}{detail}: {r.dir}")
        more = f"; and {len(pending) - 3} more" if len(pending) > 3 else ""
        res.note("n", f"{label}: {res.n_done} of {res.n_runs} seeds finished; " + "; ".join(parts) + more)
    stale = [r for r in done if r.results_signature and r.results_signature != r.signature]
    if stale:
        res.note("n", f"{label}: results.json signature differs from job.json in {len(stale)} run(s), "
                      f"e.g. {stale[0].dir} (was the config edited after the run?)")


def build_table(defn: TableDef, collection: Collection, *, where: dict[str, Any] | None = None,
                paper: bool = False, sweep: str | None = None) -> TableResult:
    """The table for ``defn`` over ``collection`` (see the module and matching docstrings)."""
    t0 = time.perf_counter()
    where = dict(where or {})
    base = {**defn.match, **where}
    runnable = [r for r in defn.rows if not r.paper_only]
    # Only runs that can land in the table are opened beyond their job.json.
    candidates = [run for run in collection.runs if matches(run.config, base)]
    row_of: dict[int, list[str]] = {}
    for run in candidates:
        ids = [r.id for r in runnable if matches(run.config, r.match)]
        if ids:
            row_of[id(run)] = ids
            load_outcome(run, defn.metric)
    keys, prefixes = row_exclusions(r.match for r in runnable)
    sel = select((run for run in candidates if id(run) in row_of), lambda run: row_of.get(id(run), []),
                 exclude_keys=keys, exclude_prefixes=prefixes)

    table_notes: list[str] = []
    paper_tab = None
    paper_caption = None
    if paper:
        from bbrctl.report.paper import paper_tables

        paper_tab = paper_tables().get(defn.paper) if defn.paper else None
        if paper_tab is None:
            table_notes.append(f"--paper: the paper publishes no numbers for {defn.title!r}")
        else:
            paper_caption = paper_tab.caption

    rows: list[RowResult] = []
    for row in defn.rows:
        if row.paper_only and paper_tab is None:
            continue
        label = " / ".join(row.labels)
        res = RowResult(id=row.id, labels=row.labels, source="ours", state="missing", baseline=row.baseline)
        if row.paper_only:
            res.state = "not run"
            res.note("n", f"not run: {row.paper_only}; only the published numbers are shown")
        else:
            group = sel.chosen.get(row.id)
            if group is None and collection.denied:
                # Runs may be there, in directories this user cannot read: not "missing".
                res.state = "unreadable"
                res.note("n", f"{label}: no readable run matches; {_denied_text(collection)}")
            elif group is None:
                hint = f"; run `{defn.hint}`" if defn.hint else ""
                res.note("n", f"{label}: no run under {collection.root} matches {_fmt_match({**base, **row.match})}"
                              f"{_near_miss(candidates if candidates else collection.runs, {**base, **row.match})}{hint}")
            else:
                _fill_from_group(res, group, defn)
                res.labels = ran_labels(row, group.flat, defn)
                for g, diff in sel.alternatives.get(row.id, []):
                    res.note("n", f"{label}: {len(g.runs)} other run(s) also match with {diff}, not shown "
                                  f"(the shown configuration has more finished seeds or is newer)")
        rows.append(res)
        if paper_tab is not None and row.paper is not None:
            prow = paper_tab.rows.get(row.paper)
            pres = RowResult(id=row.id, labels=row.labels, source="paper", state="missing",
                             baseline=row.baseline)
            if prow is None:
                pres.note("n", f"{label}: not in the paper's {defn.paper}")
            else:
                pres.state = "done"
                pres.n_done = pres.n_runs = 1
                pres.stats = {c: Stat.of([prow.values[c]]) if c in prow.values else Stat.of([]) for c in defn.columns}
                for cell, text in prow.notes.items():
                    pres.note(cell, text)
            rows.append(pres)

    noise = None
    if defn.delta:
        from bbrctl.report.seed_noise import study_for

        configs = [run.config for rid, g in sel.chosen.items() for run in g.runs]
        study = study_for(defn.name, defn.metric, configs)
        sigma = study.sigma(defn.delta) if study else None
        if sigma is not None:
            noise = {"study": study.id, "sigma": sigma[0], "df": sigma[1], "metric": defn.delta,
                     "description": study.describe(), "meta": dict(study.meta), "match": dict(study.match)}
    _deltas(rows, defn, noise)
    from bbrctl.report.decision import apply_decisions

    apply_decisions(rows, defn.delta, collection.root, {run.sweep for g in sel.chosen.values() for run in g.runs},
                    table_notes)
    if not paper and any(r.paper_only for r in defn.rows):
        dropped = [" ".join(r.labels) for r in defn.rows if r.paper_only]
        reasons = sorted({r.paper_only for r in defn.rows if r.paper_only})
        table_notes.append(f"Rows of the paper not run here ({'; '.join(reasons)}): {', '.join(dropped)}; "
                           f"--paper shows their published numbers.")
    if sel.other_contexts:
        shown = "; ".join(f"[{diff}] ({n} row{'s' if n != 1 else ''})" for n, diff in sel.other_contexts[:3])
        more = f" and {len(sel.other_contexts) - 3} more" if len(sel.other_contexts) > 3 else ""
        table_notes.append(f"Other settings also match this table and are not shown: {shown}{more}; "
                           f"choose with --where KEY=VALUE or --sweep NAME.")
    if collection.unreadable:
        table_notes.append(f"{len(collection.unreadable)} run director{'ies' if len(collection.unreadable) != 1 else 'y'} "
                           f"skipped: unreadable job.json (e.g. {collection.unreadable[0]})")
    if collection.denied:
        table_notes.append(_denied_text(collection))

    setting = _setting([sel.chosen[r.id] for r in runnable if r.id in sel.chosen])
    return TableResult(definition=defn, rows=rows, notes=table_notes, setting=setting, root=str(collection.root),
                       sweep=sweep, where=where, paper=paper, paper_caption=paper_caption, noise=noise,
                       build_seconds=time.perf_counter() - t0)


def _denied_text(collection: Collection) -> str:
    n = len(collection.denied)
    return (f"{n} director{'ies' if n != 1 else 'y'} under {collection.root} cannot be read (Permission denied), "
            f"e.g. {collection.denied[0]}: their owner's umask keeps them private (a group-shared runs root "
            "needs umask 002 or 022)")


def ran_labels(row, flat: dict[str, Any], defn: TableDef) -> tuple[str, ...]:
    """The row's labels, with each ``ran_labels`` cell showing the value its runs ran
    where that is not the first value the row's match names (the paper's)."""
    labels = list(row.labels)
    for col, key in defn.ran_labels.items():
        want = row.match.get(key)
        paper_value = want[0] if isinstance(want, list) and want else want
        ran = flat.get(key)
        if ran is not None and paper_value is not None and ran != paper_value:
            labels[defn.label_columns.index(col)] = str(ran)
    return tuple(labels)


def _setting(groups: list[Group]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in SETTING_KEYS:
        vals = {str(g.flat[key]) for g in groups if key in g.flat}
        if len(vals) == 1:
            out[key] = vals.pop()
        elif vals:
            out[key] = "per row"
    return out


def _deltas(rows: list[RowResult], defn: TableDef, noise: dict | None = None) -> None:
    col = defn.delta
    if not col:
        return
    by_key = {(r.source, r.id): r for r in rows}
    for r in rows:
        if r.baseline is not None and (r.source, r.baseline) in by_key:
            got = _difference(r, by_key[(r.source, r.baseline)], col, noise)
            if got is not None:
                r.delta, r.interval = (got[0], got[1]), got[2]
        for other in defn.compare:
            base = by_key.get((r.source, other))
            if base is None or other == r.id:
                continue
            got = _difference(r, base, col, noise)
            if got is not None:
                r.compared[other] = got


def _difference(r: RowResult, base: RowResult, col: str, noise: dict | None):
    """(Δ = r's mean minus base's, its standard error or None, its Interval or None), or None."""
    from bbrctl.report import stats

    a, b = r.stats.get(col), base.stats.get(col)
    if not a or not b or a.mean is None or b.mean is None:
        return None
    diff = a.mean - b.mean
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n) if a.n > 1 and b.n > 1 else None
    if r.source != "ours":
        return diff, se, None  # the paper's rows are single published runs
    interval = None
    if a.n > 1 and b.n > 1:
        pa, pb = r.seed_values, base.seed_values
        if pa is not None and pb is not None and set(pa) == set(pb):
            interval = stats.paired(pa, pb)
        else:
            interval = stats.welch(a.values, b.values)
    elif noise is not None:
        interval = stats.noise(diff, noise["sigma"], noise["df"], a.n, b.n)
    return diff, se, interval
