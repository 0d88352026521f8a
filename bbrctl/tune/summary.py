"""A study read back from its storage: counts, best trial, the trials table, Optuna's plots.

Used by `bbrctl status <study>` and `bbrctl report --study <study>`. The table has one row
per trial: number, state (complete | pruned | failed | running), the metric (for a pruned
trial, its last intermediate value and the iteration it stopped at), every parameter, and
the run directory. Plots are Optuna's matplotlib ones (optimisation history, parameter
importances, slices), written as PNG through bbrctl.plotting (Agg backend).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from bbrctl.store import atomic_write_bytes, atomic_write_text

STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}
FORMATS = ("md", "csv", "json")


def _state(t) -> str:
    return STATE_NAMES.get(t.state.name, t.state.name.lower())


def counts(frozen) -> dict:
    c = {"complete": 0, "pruned": 0, "failed": 0, "running": 0}
    for t in frozen:
        c[_state(t)] = c.get(_state(t), 0) + 1
    return c


def best_of(study) -> dict | None:
    try:
        b = study.best_trial
    except ValueError:                  # no complete trial yet
        return None
    return {"number": b.number, "value": b.value, "params": dict(b.params), "run_dir": b.user_attrs.get("run_dir")}


def rows(study) -> list[dict]:
    out = []
    for t in study.get_trials(deepcopy=False):
        last = max(t.intermediate_values) if t.intermediate_values else None
        out.append({"trial": t.number, "state": _state(t), "value": t.value,
                    "last_step": last, "last_intermediate": t.intermediate_values.get(last) if last is not None else None,
                    "params": dict(t.params), "run_dir": t.user_attrs.get("run_dir"),
                    "duration_s": t.duration.total_seconds() if t.duration is not None else None})
    return out


def describe(study_dir: Path) -> dict:
    """Everything `status` and `report` print about a study, as plain data."""
    from bbrctl.tune.storage import load_study

    study = load_study(study_dir)
    spec = study.user_attrs.get("bbrctl_spec") or {}
    frozen = study.get_trials(deepcopy=False)
    return {"study": study_dir.name, "dir": str(study_dir), "metric": spec.get("metric"),
            "direction": spec.get("direction"), "sampler": spec.get("sampler"), "pruner": spec.get("pruner"),
            "trials_wanted": study.user_attrs.get("trials"), "counts": counts(frozen), "best": best_of(study),
            "params": [p.get("key") for p in spec.get("params") or []], "trials": rows(study)}


def _cell(v, precision: int) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{precision}f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"
    return str(v)


def _table(d: dict, precision: int) -> tuple[list[str], list[list[str]]]:
    names = sorted({k for r in d["trials"] for k in r["params"]})
    header = ["trial", "state", d.get("metric") or "value", *names, "last eval at", "run directory"]
    body = []
    for r in d["trials"]:
        value = r["value"] if r["state"] != "pruned" else r["last_intermediate"]
        body.append([str(r["trial"]), r["state"], _cell(value, precision),
                     *(_cell(r["params"].get(n), 4 if isinstance(r["params"].get(n), float) else precision)
                       for n in names),
                     _cell(r["last_step"], 0) if r["state"] == "pruned" else "", r["run_dir"] or ""])
    return header, body


def best_line(d: dict, precision: int = 2) -> str:
    c = d["counts"]
    head = (f"study {d['study']}: {sum(c.values())}/{d.get('trials_wanted') or '?'} trial(s) — "
            + ", ".join(f"{v} {k}" for k, v in c.items() if v))
    b = d["best"]
    if not b:
        return head + "; no complete trial yet"
    params = " ".join(f"{k}={_cell(v, 4)}" for k, v in b["params"].items())
    return head + f"; best: trial {b['number']}, {d.get('metric')} {b['value']:.{precision}f} ({params})"


def render(d: dict, fmt: str, precision: int = 2) -> str:
    if fmt == "json":
        return json.dumps(d, indent=2) + "\n"
    header, body = _table(d, precision)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(body)
        return buf.getvalue()
    lines = [f"**{best_line(d, precision)}**", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def write_plots(study_dir: Path, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Optuna's history, importances and slice plots as PNG; (files, notes on those skipped)."""
    import warnings

    from bbrctl.plotting import png_bytes, pyplot
    from bbrctl.tune.optuna_import import optuna
    from bbrctl.tune.storage import load_study

    pyplot()
    op = optuna()
    vis = op.visualization.matplotlib
    study = load_study(study_dir)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == op.trial.TrialState.COMPLETE]
    files, notes = [], []
    plots = (("history", vis.plot_optimization_history), ("importances", vis.plot_param_importances),
             ("slices", vis.plot_slice))
    for name, fn in plots:
        if name == "importances" and len(complete) < 2:
            notes.append("importances: needs 2 complete trials")
            continue
        if not complete:
            notes.append(f"{name}: no complete trial yet")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")     # Optuna marks its matplotlib plots experimental
                ax = fn(study)
        except (ValueError, RuntimeError) as e:
            notes.append(f"{name}: {' '.join(str(e).split())[:160]}")
            continue
        axes = list(ax.flat) if hasattr(ax, "flat") else [ax]
        fig = axes[0].figure
        if name == "slices":
            # One panel per parameter and the trial colour bar at the right: room for each.
            fig.set_size_inches(3.6 * len(axes) + 1.6, 4.8)
        else:
            fig.set_size_inches(max(6.4, fig.get_size_inches()[0]), 4.8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig.tight_layout()
        path = out_dir / f"{study_dir.name}-{name}.png"
        atomic_write_bytes(path, png_bytes(fig, dpi=100))
        files.append(path)
    return files, notes


def log_wandb(study_dir: Path, d: dict, images: list[Path], out_dir: Path) -> dict:
    """One W&B run for the study (bbrctl.report.wandb_table.log_report, group = the study's name):
    the trials table with each trial's own W&B run id (from its run directory), the plots and
    the Markdown. Mode and project come from the trials' ``wandb`` config, offline without an account."""
    from bbrctl.detection.tracking.wandb_run import run_id
    from bbrctl.report.wandb_table import log_report
    from bbrctl.store import read_job

    header, body = _table(d, 2)
    ids, run_wandb = [], {}
    for r in d["trials"]:
        rd = study_dir / r["run_dir"] if r["run_dir"] else None
        ids.append((run_id(rd) if rd is not None else None) or "-")
        if not run_wandb and rd is not None and rd.is_dir():
            job = read_job(rd) or {}
            run_wandb = (job.get("config") or {}).get("wandb") or {}
    rows = [[*row, rid] for row, rid in zip(body, ids)]
    return log_report(f"study-{d['study']}", f"study {d['study']}", [*header, "wandb_run_id"], rows,
                      images=images, markdown=render(d, "md"), group=d["study"], run_wandb=run_wandb,
                      out_dir=out_dir, config={k: d[k] for k in ("study", "metric", "direction", "sampler", "pruner",
                                                                "best", "counts")})


def write_report(study_dir: Path, out_dir: Path, fmt: str | None, precision: int = 2,
                 plots: bool = True, wandb: bool = False) -> tuple[str, list[Path], list[str], dict | None]:
    """The trials table in ``fmt`` (md, csv, json; all three when None), the plots, and with
    ``wandb`` the study's W&B run (its description is the last item returned)."""
    d = describe(study_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    text = ""
    for f in (FORMATS if fmt is None else (fmt,)):
        t = render(d, f, precision)
        path = out_dir / f"{study_dir.name}.{f}"
        atomic_write_text(path, t)
        files.append(path)
        if f == (fmt or "md"):
            text = t
    notes: list[str] = []
    if plots:
        pngs, notes = write_plots(study_dir, out_dir)
        files += pngs
    logged = log_wandb(study_dir, d, [f for f in files if f.suffix == ".png"], out_dir) if wandb else None
    return text, files, notes, logged
