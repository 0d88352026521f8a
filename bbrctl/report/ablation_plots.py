"""Figure 9: one metric against a swept hyper-parameter, one line per series.

Each (series, x value) point is a group of seeds chosen as table rows are (see
``bbrctl.report.matching``): mean ± sample std over finished seeds. Points without a
finished run are not drawn and are listed in footnotes instead. The optional reference
(the detector's own loss) is drawn as a horizontal line with its ± band.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from typing import Any

from bbrctl.report.collect import Collection, Run, load_outcome, metric_value
from bbrctl.report.definitions import FigureDef
from bbrctl.report.matching import MISSING, lookup, matches, row_exclusions, select
from bbrctl.report.table import STATE_ORDER, Stat, _seed, _seed_order, _setting
from bbrctl.store import AP_KEYS

REF = "__reference__"


@dataclass
class Point:
    series: str
    label: str
    x: float | None
    state: str
    n_done: int = 0
    n_runs: int = 0
    stats: dict[str, Stat] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


@dataclass
class FigureResult:
    definition: FigureDef
    points: list[Point]
    reference: Point | None
    notes: list[str]
    setting: dict[str, str]
    root: str
    sweep: str | None
    where: dict[str, Any]
    columns: tuple[str, ...]
    build_seconds: float = 0.0
    generated: float = field(default_factory=time.time)


def _x_of(run: Run, key: str) -> float | None | object:
    v = lookup(run.config, key)
    if v is MISSING or isinstance(v, bool) or not isinstance(v, (int, float)):
        return MISSING
    return round(float(v), 10)


def build_figure(defn: FigureDef, collection: Collection, *, where: dict[str, Any] | None = None,
                 sweep: str | None = None) -> FigureResult:
    t0 = time.perf_counter()
    where = dict(where or {})
    base = {**defn.match, **where}
    columns = (defn.y,) + tuple(k for k in AP_KEYS if k != defn.y)
    slots: dict[int, list[tuple]] = {}
    no_x = 0
    for run in collection.runs:
        if not matches(run.config, base):
            continue
        found = []
        for s in defn.series:
            if matches(run.config, s.match):
                x = _x_of(run, defn.x)
                if x is MISSING:
                    no_x += 1
                else:
                    found.append((s.id, x))
        if defn.reference and matches(run.config, defn.reference.match):
            found.append((REF, None))
        if found:
            slots[id(run)] = found
            load_outcome(run, defn.metric)
    all_matches = [s.match for s in defn.series] + ([defn.reference.match] if defn.reference else [])
    keys, prefixes = row_exclusions(all_matches)
    keys.add(defn.x)
    sel = select((r for r in collection.runs if id(r) in slots), lambda r: slots.get(id(r), []),
                 exclude_keys=keys, exclude_prefixes=prefixes)

    labels = {s.id: s.label for s in defn.series}
    order = {s.id: i for i, s in enumerate(defn.series)}
    points: list[Point] = []
    reference = None
    for slot, group in sel.chosen.items():
        sid, x = slot
        label = defn.reference.label if sid == REF else labels[sid]
        p = Point(series=sid, label=label, x=x, state="pending")
        runs = sorted(group.runs, key=_seed_order)
        p.runs = [str(r.dir) for r in runs]
        p.n_runs = len(runs)
        done = [r for r in runs if r.state == "done"]
        p.n_done = len(done)
        for c in columns:
            p.stats[c] = Stat.of([v for v in (metric_value(r, defn.metric, c) for r in done) if v is not None])
        states = {r.state for r in runs}
        p.state = ("done" if p.n_done == p.n_runs else "partial") if p.n_done else next(
            (s for s in STATE_ORDER if s in states), "pending")
        where_txt = f"{defn.x}={x:g}" if x is not None else "reference"
        for r in [r for r in runs if r.state != "done"][:3]:
            p.notes.append(f"{label} at {where_txt}: seed {_seed(r)} {r.state}"
                           f"{' (' + r.detail + ')' if r.detail else ''}: {r.dir}")
        for g, diff in sel.alternatives.get(slot, []):
            p.notes.append(f"{label} at {where_txt}: {len(g.runs)} other run(s) also match with {diff}, not shown")
        if sid == REF:
            reference = p
        else:
            points.append(p)
    points.sort(key=lambda p: (order[p.series], p.x))

    notes: list[str] = []
    missing = [s.label for s in defn.series if not any(p.series == s.id for p in points)]
    if missing:
        hint = f"; run `{defn.hint}`" if defn.hint else ""
        notes.append(f"no runs under {collection.root} for: {', '.join(missing)}{hint}")
    if no_x:
        notes.append(f"{no_x} matching run(s) have no numeric {defn.x} in their config and are left out")
    if sel.other_contexts:
        shown = "; ".join(f"[{diff}] ({n} point{'s' if n != 1 else ''})" for n, diff in sel.other_contexts[:3])
        notes.append(f"Other settings also match this figure and are not shown: {shown}; "
                     f"choose with --where KEY=VALUE or --sweep NAME.")
    setting = _setting(list(sel.chosen.values()))
    return FigureResult(defn, points, reference, notes, setting, str(collection.root), sweep, where, columns,
                        build_seconds=time.perf_counter() - t0)


def _raw(x: float | None) -> str:
    return "" if x is None else repr(round(x, 10))


def figure_csv(fr: FigureResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["series", "label", fr.definition.x, "state", "n", "n_runs"]
    for c in fr.columns:
        header += [c, f"{c}_std"]
    w.writerow(header)
    pts = fr.points + ([fr.reference] if fr.reference else [])
    for p in pts:
        line: list[Any] = [p.series if p.series != REF else "reference", p.label, _raw(p.x), p.state, p.n_done, p.n_runs]
        for c in fr.columns:
            st = p.stats.get(c)
            line += [_raw(st.mean if st else None), _raw(st.std if st else None)]
        w.writerow(line)
    return buf.getvalue()


def figure_dict(fr: FigureResult) -> dict:
    def pt(p: Point) -> dict:
        return {"series": p.series if p.series != REF else "reference", "label": p.label, "x": p.x,
                "state": p.state, "n": p.n_done, "n_runs": p.n_runs, "runs": p.runs, "notes": p.notes,
                "metrics": {c: {"mean": s.mean, "std": s.std, "n": s.n, "values": s.values} for c, s in p.stats.items()}}
    d = fr.definition
    return {"kind": "figure", "name": d.name, "title": d.title, "definition": d.source, "x": d.x, "y": d.y,
            "metric": d.metric, "runs_root": fr.root, "sweep": fr.sweep, "where": fr.where, "setting": fr.setting,
            "points": [pt(p) for p in fr.points], "reference": pt(fr.reference) if fr.reference else None,
            "notes": fr.notes + [n for p in fr.points for n in p.notes], "generated": fr.generated}


def figure_rows(fr: FigureResult, precision: int = 1) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, footnotes) of the plotted points, for the terminal and Markdown."""
    from bbrctl.report.render import _stat_text

    d = fr.definition
    header = ["Series", d.x_label or d.x, "n", d.y]
    rows = []
    notes: list[str] = []
    for p in fr.points + ([fr.reference] if fr.reference else []):
        marks = ""
        for n in p.notes:
            notes.append(n)
            marks += f"[{len(notes)}]"
        n_text = str(p.n_done) if p.n_done == p.n_runs else f"{p.n_done}/{p.n_runs}"
        value = _stat_text(p.stats.get(d.y), precision) if p.n_done else p.state
        rows.append([p.label, "—" if p.x is None else f"{p.x:g}", n_text + marks, value or "n/a"])
    return header, rows, notes


def figure_markdown(fr: FigureResult, precision: int = 1) -> str:
    header, rows, notes = figure_rows(fr, precision)
    lines = [f"## {fr.definition.title}", "", "| " + " | ".join(header) + " |",
             "|:---|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    setting = ", ".join(f"{k}={v}" for k, v in fr.setting.items()) or "no finished runs yet"
    lines.append(f"Setting: {setting}; runs: {fr.root}{f' (sweep {fr.sweep})' if fr.sweep else ''}.  ")
    lines.append(f"Values: {fr.definition.y} as mean ± sample std over the n finished seeds.  ")
    lines += [f"[{i}] {n}  " for i, n in enumerate(notes, 1)]
    lines += [f"Note: {n}  " for n in fr.notes]
    return "\n".join(lines).rstrip() + "\n"


def plot_figure(fr: FigureResult) -> bytes:
    """The figure as PNG bytes (matplotlib, Agg backend, imported here only)."""
    from bbrctl.plotting import png_bytes, pyplot

    plt = pyplot()

    d = fr.definition
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    try:
        drawn = False
        markers = "osD^v<>"
        for i, s in enumerate(d.series):
            pts = [p for p in fr.points if p.series == s.id and p.stats.get(d.y) and p.stats[d.y].mean is not None]
            if not pts:
                continue
            xs = [p.x for p in pts]
            ys = [p.stats[d.y].mean for p in pts]
            es = [p.stats[d.y].std or 0.0 for p in pts]
            ax.errorbar(xs, ys, yerr=es if any(es) else None, marker=markers[i % len(markers)], capsize=3,
                        label=s.label)
            drawn = True
        ref = fr.reference
        if ref and ref.stats.get(d.y) and ref.stats[d.y].mean is not None:
            st = ref.stats[d.y]
            ax.axhline(st.mean, color="gray", linestyle="--", linewidth=1, label=f"{ref.label}")
            if st.std:
                ax.axhspan(st.mean - st.std, st.mean + st.std, color="gray", alpha=0.15, linewidth=0)
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(d.x_label or d.x)
        ax.set_ylabel(f"{d.y} (%)")
        ax.set_title(d.title, fontsize=9)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        fig.tight_layout()
        return png_bytes(fig)
    finally:
        plt.close(fig)
