"""The main job's per-run seconds (issue 15's README command 1) against a reference measured in the same run.

A run is one ``python -m bbrctl train LOSS`` process with the shipped defaults, timed from
start to exit as a sweep job is (imports, dataset, model, 600 iterations, evaluation).
The reference is the same command in another checkout of bbrctl, by default commit
a7a0e65 (before issue 15), unpacked with ``git archive`` into a temporary directory and
imported through PYTHONPATH by this interpreter, so both sides use the same torch and the
same cached dataset.

Two comparisons, each as units in ABBA order (reference, current, current, reference,
...) so that load on a shared machine hits both sides alike; a unit's per-run seconds
are its wall time over its runs, and the speed-up is the median over pairs of units:

* ``main`` (default): the main job as README command 1 runs it. Reference: its runs
  one after another with torch's default threads (README command 1 of a7a0e65: the
  local launcher ran one CPU job at a time). Current: ``--parallel`` runs at once
  (README command 1 passes launcher.max_parallel=2), one thread each
  (schedule.cpu_threads=1).
* ``threads1``: one run at a time on both sides, one thread each (OMP_NUM_THREADS=1):
  what the model, precision, memory-format and data changes buy without parallelism.

The load average is printed with every unit: on a busy machine every figure is slower,
and multi-threaded runs much slower than single-threaded ones (their threads wait for
each other's cores); the ratio is what the script claims. Target (main): >= 2x.

    python benchmarks/main_job_speedup.py                              # main, 1 pair: ~5 min on an idle 2-core CPU
    python benchmarks/main_job_speedup.py --mode threads1 --pairs 2
    python benchmarks/main_job_speedup.py --ref-threads 1                # main, the reference at 1 thread (busy machine)
    python benchmarks/main_job_speedup.py --mode both --pairs 2 --json out.json
    python benchmarks/main_job_speedup.py --set schedule.cpu_amp=off   # an override for the current side only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("main", "threads1", "both"), default="main")
    p.add_argument("--ref", default="a7a0e65", help="git commit of the reference (default: a7a0e65)")
    p.add_argument("--ref-dir", default=None, help="a checkout to use as the reference instead of --ref")
    p.add_argument("--pairs", type=int, default=1, help="reference/current unit pairs per mode (default 1)")
    p.add_argument("--parallel", type=int, default=2,
                   help="runs per unit; the current side of 'main' runs them at once (default 2)")
    p.add_argument("--losses", nargs="+", default=["focal_eiou", "baseline"],
                   help="losses of a unit's runs, cycled (default focal_eiou baseline)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="an extra override for the current side (repeatable)")
    p.add_argument("--ref-set", dest="ref_overrides", action="append", default=[],
                   help="an extra override for the reference side (repeatable)")
    p.add_argument("--ref-threads", type=int, default=None,
                   help="main: OMP_NUM_THREADS for the reference only (default: torch's, as a7a0e65's README ran it; "
                        "1 is kinder to it on a busy machine, where its 2-thread runs wait for each other's cores)")
    p.add_argument("--data-dir", default=None, help="dataset cache (default: $BBRCTL_DATA_DIR or a temporary one)")
    p.add_argument("--json", default=None, help="also write the measurements here")
    return p.parse_args()


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def extract(commit: str, into: Path) -> Path:
    """``git archive`` of ``commit`` unpacked into ``into`` (nothing registered in the repo)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=False)
    if archive.returncode != 0:
        sys.exit(f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def unit(side: str, src: Path, losses: list[str], overrides: list[str], work: Path, env: dict,
         concurrent: bool) -> dict:
    """Run ``losses`` (one process each), at once or one after another; time the whole."""
    env = dict(env, PYTHONPATH=str(src))
    roots, procs, outs = [], [], []
    before = load()
    t0 = time.perf_counter()

    def start(loss):
        root = work / f"runs-{side}-{time.monotonic_ns()}"
        roots.append(root)
        cmd = [sys.executable, "-m", "bbrctl", "train", f"loss={loss}", f"runs_root={root}", *overrides]
        return subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    if concurrent:
        procs = [start(loss) for loss in losses]
        outs = [p.communicate() for p in procs]
    else:
        for loss in losses:
            procs.append(start(loss))
            outs.append(procs[-1].communicate())
    seconds = time.perf_counter() - t0
    after = load()
    runs = []
    for loss, proc, (_, err), root in zip(losses, procs, outs, roots):
        if proc.returncode != 0:
            sys.exit(f"{side} run of {loss} failed (exit {proc.returncode}):\n{err[-2000:]}")
        res = json.loads(next(root.glob("train/*/results.json")).read_text())
        t = res.get("timing") or {}
        runs.append({"loss": loss, "AP": res["metrics"]["bbox"]["AP"], "AP50": res["metrics"]["bbox"]["AP50"],
                     "wall_time_s": res.get("wall_time_s"), "train_s": t.get("train_s"), "eval_s": t.get("eval_s"),
                     "threads": t.get("threads"), "cpu_amp": t.get("cpu_amp")})
    return {"side": side, "seconds": seconds, "per_run_s": seconds / len(losses), "concurrent": concurrent,
            "runs": runs, "load_before": before, "load_after": after}


def compare(mode: str, a: argparse.Namespace, sides: dict, work: Path, env: dict) -> dict:
    losses = [a.losses[i % len(a.losses)] for i in range(a.parallel)]
    env = dict(env)
    if mode == "threads1":
        env["OMP_NUM_THREADS"] = "1"
    units = []
    for p in range(a.pairs):
        for side in (("reference", "current") if p % 2 == 0 else ("current", "reference")):
            src, ov = sides[side]
            concurrent = mode == "main" and side == "current"
            if mode == "threads1" and side == "current":
                ov = [*ov, "schedule.cpu_threads=1"]
            side_env = dict(env)
            if mode == "main" and side == "reference" and a.ref_threads:
                side_env["OMP_NUM_THREADS"] = str(a.ref_threads)
            u = unit(side, src, losses, ov, work, side_env, concurrent)
            u["pair"] = p
            units.append(u)
            detail = ", ".join(f"{r['loss']} AP {r['AP']:.1f} AP50 {r['AP50']:.1f} ({r['threads']} thr, "
                               f"{r['cpu_amp']})" for r in u["runs"])
            print(f"[{mode}] pair {p} {side:9s} {len(u['runs'])} runs {'at once' if concurrent else 'in turn'}: "
                  f"{u['seconds']:6.1f} s = {u['per_run_s']:5.1f} s/run  [{detail}]  load {u['load_before']} -> "
                  f"{u['load_after']}", flush=True)
    ratios = []
    for p in range(a.pairs):
        per = {u["side"]: u["per_run_s"] for u in units if u["pair"] == p}
        ratios.append(per["reference"] / per["current"])
    ref_s = statistics.median(u["per_run_s"] for u in units if u["side"] == "reference")
    cur_s = statistics.median(u["per_run_s"] for u in units if u["side"] == "current")
    ratio = statistics.median(ratios)
    target = " target >= 2x " + ("met" if ratio >= 2 else "NOT met") if mode == "main" else ""
    print(f"[{mode}] per-run seconds: reference {ref_s:.1f}, current {cur_s:.1f}; speed-up {ratio:.2f}x "
          f"(median of {len(ratios)} pair(s): {', '.join(f'{r:.2f}' for r in ratios)});{target}", flush=True)
    return {"mode": mode, "units": units, "ratios": ratios, "speedup": ratio, "reference_s": ref_s, "current_s": cur_s}


def main() -> None:
    a = parse()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bbrctl-main-job-") as tmp:
        work = Path(tmp)
        env["BBRCTL_DATA_DIR"] = a.data_dir or env.get("BBRCTL_DATA_DIR") or str(work / "data")
        ref = Path(a.ref_dir).resolve() if a.ref_dir else extract(a.ref, work / "ref")
        sides = {"reference": (ref, list(a.ref_overrides)), "current": (REPO, list(a.overrides))}
        # The dataset once, outside the timings (both sides read the same files).
        subprocess.run([sys.executable, "-m", "bbrctl", "data", "synth"], cwd=work,
                       env=dict(env, PYTHONPATH=str(REPO)), capture_output=True, check=True)
        print(f"main job per run: `bbrctl train` with the shipped defaults; reference {a.ref_dir or a.ref}, "
              f"current {REPO}; {os.cpu_count()} CPUs, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', '(unset)')}; "
              f"load average {load()}", flush=True)
        modes = ["main", "threads1"] if a.mode == "both" else [a.mode]
        results = [compare(m, a, sides, work, env) for m in modes]
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "reference": a.ref_dir or a.ref,
                                            "cpus": os.cpu_count(), "parallel": a.parallel}, indent=2) + "\n")


if __name__ == "__main__":
    main()
