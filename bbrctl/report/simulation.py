"""Figures 7 and 8: collect the output of ``bbrctl simulate --setup N`` into one figure.

A simulation run directory holds ``summary.json`` ({"setup", "config", "losses": {name:
{final_error, mean_iou, median_iou, frac_iou_gt_0.5, ...}}}), ``error_curves.csv``
(iteration, one column per loss) and ``iou_quantiles.csv`` (loss, iteration, q0, q05, q25,
q50, q75, q95, q100, mean). The newest directory with the requested setup under the runs
root is used (or the directory given as --runs-root itself); others are named in a note.
The figure has the paper's two panels: (a) the regression error E(t) of every loss, (b) box
plots of the IoU at a few iterations per loss (whiskers at the 5th/95th percentiles).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bbrctl.errors import UserError
from bbrctl.report.definitions import SimulationDef

SUMMARY = "summary.json"
CURVES = "error_curves.csv"
QUANTILES = "iou_quantiles.csv"
SUMMARY_COLUMNS = ("final_error", "mean_iou", "median_iou", "frac_iou_gt_0.5", "frac_iou_gt_0.75", "frac_iou_gt_0.9")


@dataclass
class SimulationResult:
    definition: SimulationDef
    run_dir: Path
    summary: dict
    curves: dict[str, list[tuple[int, float]]]                 # loss → [(iteration, E)]
    quantiles: dict[str, list[tuple[int, dict[str, float]]]]   # loss → [(iteration, {q0..q100, mean})]
    notes: list[str] = field(default_factory=list)

    @property
    def losses(self) -> list[str]:
        # The CSV keeps the order the simulation ran them in; summary.json's keys are sorted.
        names = list((self.summary.get("losses") or {}).keys())
        ordered = [n for n in self.curves if n in names or not names]
        return ordered + [n for n in names if n not in ordered]


def find_simulations(root: Path, setup: int) -> list[tuple[float, Path]]:
    """(mtime, dir) of every readable simulation output of ``setup`` under ``root``, newest first."""
    from bbrctl.store.discovery import find_dirs_holding

    found = []
    for d in find_dirs_holding(root, SUMMARY, max_depth=6):
        p = d / SUMMARY
        summary = read_summary(d)
        if summary is not None and summary.get("setup") == setup:
            try:
                found.append((p.stat().st_mtime, d))
            except OSError:
                pass
    found.sort(key=lambda t: (t[0], str(t[1])), reverse=True)
    return found


def read_summary(run_dir: Path) -> dict | None:
    """summary.json of a simulation output when it is what `bbrctl simulate` writes
    ({"setup": int, "losses": {name: {column: number | null}}}), else None: a damaged or
    hand-made one is skipped, never a traceback in a figure."""
    import math

    from bbrctl.store import safe

    try:
        s = json.loads(safe.read_bytes(run_dir / SUMMARY, limit=16 << 20))
    except (OSError, ValueError, UserError, RecursionError):
        return None
    if not isinstance(s, dict) or not isinstance(s.get("setup"), int) or isinstance(s.get("setup"), bool):
        return None
    losses = s.get("losses", {})
    ok = lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
    if not isinstance(losses, dict) or not all(isinstance(b, dict) and all(ok(v) for v in b.values())
                                               for b in losses.values()):
        return None
    if s.get("config") is not None and not isinstance(s["config"], dict):
        return None
    return s


def _floats(row: dict[str, str], skip: tuple[str, ...]) -> dict[str, float]:
    import math

    out = {}
    for k, v in row.items():
        if k in skip or not isinstance(k, str) or not isinstance(v, str) or v == "":
            continue                # a short or long row (csv gives None keys/values): skipped
        try:
            f = float(v)
        except ValueError:
            continue
        if math.isfinite(f):
            out[k] = f
    return out


def load_simulation(defn: SimulationDef, root: str | os.PathLike) -> SimulationResult:
    root = Path(root)
    found = find_simulations(root, defn.setup)
    if not found:
        hint = f"; run `{defn.hint}` first" if defn.hint else ""
        raise UserError(f"no simulation output for setup {defn.setup} under {root} "
                        f"(looked for {SUMMARY} with \"setup\": {defn.setup}){hint}")
    run_dir = found[0][1]
    notes = []
    if len(found) > 1:
        notes.append(f"{len(found) - 1} older setup-{defn.setup} simulation(s) under {root} not shown "
                     f"(pass --runs-root DIR to pick one), e.g. {found[1][1]}")
    summary = read_summary(run_dir) or {"setup": defn.setup, "losses": {}}
    curves: dict[str, list[tuple[int, float]]] = {}
    try:
        with open(run_dir / CURVES, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                it = int(float(row["iteration"]))
                for loss, v in _floats(row, ("iteration",)).items():
                    curves.setdefault(loss, []).append((it, v))
    except (OSError, KeyError, ValueError, TypeError, OverflowError, csv.Error) as e:
        curves = {}
        notes.append(f"{run_dir / CURVES} unreadable ({type(e).__name__}); panel (a) left empty")
    quantiles: dict[str, list[tuple[int, dict[str, float]]]] = {}
    try:
        with open(run_dir / QUANTILES, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                quantiles.setdefault(row["loss"], []).append(
                    (int(float(row["iteration"])), _floats(row, ("loss", "iteration"))))
    except (OSError, KeyError, ValueError, TypeError, OverflowError, csv.Error) as e:
        quantiles = {}
        notes.append(f"{run_dir / QUANTILES} unreadable ({type(e).__name__}); panel (b) left empty")
    return SimulationResult(defn, run_dir, summary, curves, quantiles, notes)


def summary_rows(sr: SimulationResult) -> tuple[list[str], list[list[Any]]]:
    header = ["loss", *SUMMARY_COLUMNS]
    rows = []
    for loss in sr.losses:
        block = (sr.summary.get("losses") or {}).get(loss) or {}
        rows.append([loss] + [block.get(c) for c in SUMMARY_COLUMNS])
    return header, rows


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def simulation_text(sr: SimulationResult, fmt: str) -> str:
    header, rows = summary_rows(sr)
    if fmt == "json":
        return json.dumps({"kind": "simulation", "name": sr.definition.name, "title": sr.definition.title,
                           "setup": sr.definition.setup, "run_dir": str(sr.run_dir),
                           "config": sr.summary.get("config"), "losses": sr.summary.get("losses"),
                           "notes": sr.notes}, indent=2, default=str) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows([[("" if v is None else v) for v in r] for r in rows])
        return buf.getvalue()
    if fmt == "latex":
        from bbrctl.report.render import _tex

        lines = [r"\begin{tabular}{l" + "r" * len(SUMMARY_COLUMNS) + "}", r"\toprule",
                 " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(_tex(_cell(v)) for v in r) + r" \\" for r in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    lines = [f"## {sr.definition.title}", "", "| " + " | ".join(header) + " |",
             "|:---|" + "---:|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    lines += ["", f"From {sr.run_dir}.  "]
    lines += [f"Note: {n}  " for n in sr.notes]
    return "\n".join(lines).rstrip() + "\n"


def plot_simulation(sr: SimulationResult, max_boxes: int = 5) -> bytes:
    """The figure, drawn by bbrctl.simulate.figures (the same code as the simulation's own)."""
    from bbrctl.simulate.figures import figure_7_8

    curves = {loss: ([p[0] for p in sr.curves.get(loss) or []], [p[1] for p in sr.curves.get(loss) or []])
              for loss in sr.losses}
    quantiles = {loss: dict(sr.quantiles.get(loss, [])) for loss in sr.losses}
    return figure_7_8(curves, quantiles, sr.definition.title, max_boxes=max_boxes)
