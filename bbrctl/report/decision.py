"""The sequential rule's verdict on a table's rows, for sweeps run with ``sweep.seeds=auto``.

For each sweep a table's runs come from that holds a decision record
(bbrctl.store.decision), the rows holding its A and B runs get the rule re-applied to
their own finished results (bbrctl.report.sequential.evaluate): the pairs are the seeds
both rows finished among those the sweep started, less the seeds it counted missing, and
the looks are the seed counts the sweep looked at. The record says what the runs cannot:
the design (fixed before the first look), the seeds started and the looks; the numbers
come from results.json. ``RowResult.decision`` of row A then holds the outcome, and the
Δ cell of that row shows the rule's interval (render.py).
"""

from __future__ import annotations

from pathlib import Path

from bbrctl.report import sequential
from bbrctl.store import DamagedFile
from bbrctl.store.decision import read_decision


def _key(p: str) -> str:
    return str(Path(p).resolve())


def apply_decisions(rows: list, delta: str | None, root: Path, sweeps: set[str], notes: list[str]) -> None:
    if not delta:
        return
    ours = [r for r in rows if r.source == "ours" and r.runs]
    by_run = {_key(d): r for r in ours for d in r.runs}
    for name in sorted(s for s in sweeps if s):
        try:
            rec = read_decision(Path(root) / name)
        except DamagedFile as e:
            notes.append(f"seeds until decided: {e}; the rule's verdict is not shown")
            continue
        if rec is None:
            continue
        st = rec["settings"]
        pairs = {int(s): p for s, p in rec.get("pairs", {}).items() if "a" in p and "b" in p}
        row_a = {id(r): r for r in (by_run.get(_key(p["a"])) for p in pairs.values()) if r is not None}
        row_b = {id(r): r for r in (by_run.get(_key(p["b"])) for p in pairs.values()) if r is not None}
        if len(row_a) != 1 or len(row_b) != 1:
            continue                    # this table does not show the compared rows
        (a,), (b,) = row_a.values(), row_b.values()
        if st["metric"] != delta:
            notes.append(f"sweep {name} decided {st['a']}:{st['b']} on {st['metric']}, not on this table's "
                         f"Δ {delta}; its verdict is not shown")
            continue
        va, vb = a.seed_values or {}, b.seed_values or {}
        missing = set(rec.get("missing", []))
        diffs = {s: va[s] - vb[s] for s in sorted(pairs) if s not in missing and s in va and s in vb
                 and s < rec["seeds"]}
        dsg = sequential.design(st["alpha"], st["min_seeds"], st["max_seeds"], st["boundary"])
        out = sequential.evaluate(diffs, dsg, attempted=rec["seeds"], look_at=rec["looks"])
        a.decision = {"outcome": out, "record": rec, "sweep": name, "base_labels": b.labels}
