"""Write a seed study (bbrctl/data/seed_study.yaml) from the finished runs of a seeded sweep.

Not a speed benchmark: it records measured seed noise for `bbrctl report`, which compares
single-seed differences against it (bbrctl/report/seed_noise.py). It reads every finished
run under RUNS whose row of TABLE it matches, groups them by row, and writes per-seed
metrics next to where and how they were measured: date, machine (from /proc/cpuinfo and
the load average at the end, or --machine), torch threads (from results.json), torch
version, the commit of this checkout, and the command that produced the runs. The
study's `match` is the setting every run shares (the keys of SETTING below); runs of
another setting are an error, not silently mixed. It also prints each row's mean, std
and the pooled σ.

    bbrctl sweep +experiment=table1_seeds seed=0,1,2,3,4 launcher.max_parallel=1 --wait
    python benchmarks/seed_study.py --runs runs --sweep table1 --out bbrctl/data/seed_study.yaml \\
        --command "bbrctl sweep +experiment=table1_seeds seed=0,1,2,3,4 launcher.max_parallel=1 --wait"
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# What "the same setting" means for the report (values from the runs' resolved configs).
SETTING = ("model.name", "backbone.name", "backbone.stem", "backbone.fpn_channels", "model.extra_levels",
           "model.anchor_scales_per_octave", "data.name", "data.image_size", "data.num_train", "schedule.name",
           "schedule.max_iter", "schedule.batch_size", "schedule.cpu_amp", "schedule.channels_last",
           "schedule.cpu_threads")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--sweep", default=None)
    p.add_argument("--table", default="1")
    p.add_argument("--id", default="table1-embedded-default")
    p.add_argument("--machine", default=None, help="describe the machine (default: from /proc/cpuinfo)")
    p.add_argument("--load", default=None, help="the load while the runs ran (recorded as given)")
    p.add_argument("--command", default="", help="the command that made the runs (recorded as given)")
    p.add_argument("--commit", default=None, help="the code the runs ran (default: this checkout's HEAD)")
    p.add_argument("--min-seeds", type=int, default=2, help="keep rows with at least this many seeds (default 2)")
    p.add_argument("--out", default=None, help="write the YAML here (default: print it)")
    p.add_argument("--append", action="store_true", help="add to the studies already in --out")
    return p.parse_args()


def machine() -> str:
    model, cores = "unknown CPU", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("processor"):
                cores += 1
    except OSError:
        pass
    import torch

    amx = "AMX" if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() else "no AMX"
    return f"{cores}-core {model} ({platform.machine()}, {amx})"


def main() -> None:
    a = parse()
    import torch
    import yaml

    from bbrctl.report import definitions
    from bbrctl.report.collect import collect, load_outcome, metric_value
    from bbrctl.report.matching import MISSING, lookup, matches

    defn = definitions.load("table", a.table)
    col = collect(Path(a.runs), a.sweep)
    rows: dict[str, dict] = {}
    setting: dict | None = None
    threads = set()
    for run in col.runs:
        row = next((r for r in defn.rows if not r.paper_only and matches(run.config, {**defn.match, **r.match})), None)
        if row is None:
            continue
        load_outcome(run, defn.metric)
        if run.state != "done":
            continue
        this = {k: lookup(run.config, k) for k in SETTING}
        this = {k: v for k, v in this.items() if v is not MISSING}
        if setting is None:
            setting = this
        elif this != setting:
            diff = {k: (setting.get(k), this.get(k)) for k in set(setting) | set(this) if setting.get(k) != this.get(k)}
            sys.exit(f"{run.dir}: another setting than the first run's: {diff}")
        res = json.loads((run.dir / "results.json").read_text())
        threads.add((res.get("timing") or {}).get("threads"))
        entry = rows.setdefault(row.id, {"seeds": [], **{m: [] for m in METRICS}})
        seed = lookup(run.config, "seed")
        if seed in entry["seeds"]:
            sys.exit(f"{run.dir}: seed {seed} of {row.id} twice")
        entry["seeds"].append(seed)
        for m in METRICS:
            entry[m].append(round(float(metric_value(run, defn.metric, m)), 4))
    rows = {rid: e for rid, e in rows.items() if len(e["seeds"]) >= a.min_seeds}
    if not rows:
        sys.exit(f"no row of table {a.table} under {a.runs} has {a.min_seeds} finished seeds")
    for entry in rows.values():  # by seed
        order = sorted(range(len(entry["seeds"])), key=lambda i: entry["seeds"][i])
        for k in entry:
            entry[k] = [entry[k][i] for i in order]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    study = {
        "id": a.id, "table": defn.name, "metric": defn.metric,
        "date": datetime.date.today().isoformat(),
        "machine": a.machine or machine(),
        "load": a.load or f"load average at the end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
        "threads": sorted(t for t in threads if t is not None)[0] if len(threads) == 1 else sorted(threads, key=str),
        "torch": torch.__version__.split("+")[0],
        "commit": a.commit or (commit + ("+uncommitted changes" if dirty else "")),
        "command": a.command,
        "match": {**defn.match, **(setting or {})},
        "rows": rows,
    }
    from bbrctl.report.stats import pooled_std

    for rid, entry in rows.items():
        vals = entry["AP"]
        mean = sum(vals) / len(vals)
        sd = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else float("nan")
        print(f"{rid:12s} n={len(vals)} AP {mean:.2f} ± {sd:.2f}  seeds {entry['seeds']}", file=sys.stderr)
    groups = [e["AP"] for e in rows.values() if len(e["AP"]) > 1]
    if groups:
        s, df = pooled_std(groups)
        print(f"pooled AP σ = {s:.3f} ({df} degrees of freedom)", file=sys.stderr)
    studies = []
    if a.append and a.out and Path(a.out).is_file():
        studies = [s for s in (yaml.safe_load(Path(a.out).read_text()) or {}).get("studies", []) if s.get("id") != a.id]
    header = ("# Seed studies: per-seed results of one setting, measured, for `bbrctl report` (seed noise of\n"
              "# single-seed rows; bbrctl/report/seed_noise.py). Written by benchmarks/seed_study.py.\n")
    text = header + yaml.safe_dump({"studies": studies + [study]}, sort_keys=False, width=110, default_flow_style=None)
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}", file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
