"""`bbrctl report --table 1` over 1,000 run directories: build time and command wall time.

Creates 1,000 run directories in the real format (prepare_run_dir + results.json) in a
temporary folder: the eight Table 1 methods × 100 seeds, plus 200 runs the table must
look at and set aside (Figure 9a weights, and a second schedule). Then prints

  * the in-process time to collect and build Table 1 (median of --repeat), and to render it;
  * the wall time of the whole command `python -m bbrctl report --table 1 --runs DIR`
    next to a bare `python -c pass`, measured in the same run;
  * whether the command imported torch, torchvision, matplotlib, wandb or scipy (it must not).

Target: building Table 1 over 1,000 runs in <= 1 s (wall time; the CPU time is printed too,
because on a shared machine the wall time also counts other processes' turns).

    python benchmarks/report.py [--repeat 5] [--runs DIR to reuse/keep the run directories]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "torchvision", "matplotlib", "wandb", "scipy")


def make_runs(root: Path) -> int:
    from bbrctl.report.fake_runs import TABLE1, base_config, make_config, make_run

    base = base_config()
    n = 0
    for i, loss in enumerate(TABLE1):
        for seed in range(100):
            make_run(root, make_config(loss, seed=seed, base=base), ap=30 + i * 0.3 + (seed % 7) * 0.1)
            n += 1
    for k in range(100):
        w = (0.5, 1.0, 1.5, 2.0, 3.0)[k % 5]
        make_run(root, make_config("eiou", seed=k // 5, weight=w, sweep="fig9a", base=base), ap=31.0)
        n += 1
    for k in range(100):
        loss = list(TABLE1)[k % 8]
        make_run(root, make_config(loss, seed=k // 8, sweep="long", base=base, schedule__max_iter=900),
                 state="running" if k % 3 else "done", ap=35.0)
        n += 1
    return n


def wall(cmd: list[str], repeat: int, cwd: str) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--runs", help="directory for the run directories (created if empty, reused if filled)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="bbrctl-report-bench-")
    root = Path(args.runs) if args.runs else Path(tmp.name) / "runs"
    root.mkdir(parents=True, exist_ok=True)

    from bbrctl.report import definitions
    from bbrctl.report.collect import collect, find_run_dirs
    from bbrctl.report.render import render
    from bbrctl.report.table import build_table

    existing = len(find_run_dirs(root))
    if existing == 0:
        t0 = time.perf_counter()
        n = make_runs(root)
        print(f"created {n} run directories in {time.perf_counter() - t0:.1f} s under {root}")
    else:
        n = existing
        print(f"reusing {n} run directories under {root}")

    defn = definitions.load("table", "1")
    builds, cpus, renders = [], [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        tr = build_table(defn, collect(root))
        t1, c1 = time.perf_counter(), time.process_time()
        render(tr, "md")
        t2 = time.perf_counter()
        builds.append(t1 - t0)
        cpus.append(c1 - c0)
        renders.append(t2 - t1)
    rows_done = sum(r.n_done for r in tr.rows)
    print(f"Table 1: {len(tr.rows)} rows from {rows_done} finished runs; "
          f"{len(tr.notes)} table note(s)")

    py = sys.executable
    out = Path(tmp.name) / "t1.md"
    cmd = [py, "-m", "bbrctl", "report", "--table", "1", "--runs-root", str(root), "--out", str(out), "-q"]
    bare = wall([py, "-c", "pass"], args.repeat, tmp.name)
    cmd_t = wall(cmd, args.repeat, tmp.name)
    probe = ("import sys\nfrom bbrctl.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
             "print(','.join(m for m in %r if m in sys.modules))" % (cmd[3:], HEAVY))
    heavy = subprocess.run([py, "-c", probe], capture_output=True, text=True, cwd=tmp.name).stdout.strip().splitlines()
    heavy = heavy[-1] if heavy else ""

    build = statistics.median(builds)
    print(f"\n{'measure (median of %d)' % args.repeat:<44} {'seconds':>8}")
    print(f"{'collect + build Table 1 (in-process)':<44} {build:8.3f}")
    print(f"{'  the same, CPU time of this process':<44} {statistics.median(cpus):8.3f}")
    print(f"{'render Markdown (in-process)':<44} {statistics.median(renders):8.3f}")
    print(f"{'python -c pass':<44} {bare:8.3f}")
    print(f"{'bbrctl report --table 1 (whole command)':<44} {cmd_t:8.3f}")
    print(f"{'  of which over a bare interpreter':<44} {cmd_t - bare:8.3f}")
    print(f"heavy modules imported by the command: {heavy or 'none'}")
    ok = build <= 1.0 and not heavy
    print(f"\nbuilding Table 1 over {n} run directories: {build:.3f} s (target <= 1 s): {'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
