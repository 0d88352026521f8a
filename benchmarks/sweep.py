"""Orchestration speed: `bbrctl sweep --dry-run` of a 1,000-job sweep and `bbrctl status`
over 1,000 run directories, each as a whole command (interpreter start included).

Targets: expansion <= 3 s, status <= 1 s, neither importing torch. Printed next to a
reference measured in the same run (`python -c pass` and `bbrctl --help`), so a figure
taken on a loaded or slow machine can be read as a ratio.

    python benchmarks/sweep.py [--jobs 1000] [--repeat 3]
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

HEAVY = ("torch", "torchvision", "wandb", "matplotlib")

# Runs a bbrctl command in-process and reports, on stderr's last line, the heavy modules it
# imported; stdout is the command's own.
_PROBE = ("import sys\nfrom bbrctl.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
          "    code = e.code\nelse:\n    code = 0\n"
          "print('HEAVY=' + ','.join(m for m in %r if m in sys.modules), file=sys.stderr)\nsys.exit(code or 0)" % (HEAVY,))


def timed(argv: list[str], cwd: Path, env: dict, repeat: int) -> tuple[float, list[str], str]:
    times, heavy, out = [], [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:6])} ... failed ({r.returncode}): {r.stderr[-2000:]}")
        out = r.stdout
        last = r.stderr.strip().splitlines()[-1:] or [""]
        if last[0].startswith("HEAVY="):
            heavy = [m for m in last[0][6:].split(",") if m]
    return statistics.median(times), heavy, out


def make_runs(sweep_dir: Path, n: int) -> None:
    """n run directories as `bbrctl sweep` + train leave them: job.json with the resolved
    config, status.json, and results.json for the finished half."""
    from bbrctl import config as C
    from bbrctl.store import atomic_write_json, prepare_run_dir

    cfg = C.to_container(C.compose(["loss=focal_eiou"]))
    jobs = {}
    for i in range(n):
        sig = f"{i:010x}"
        d = sweep_dir / f"seed={i}-{sig}"
        prepare_run_dir(d, {**cfg, "seed": i}, signature=sig, name=f"seed={i}", sweep=sweep_dir.name,
                        overrides=[f"seed={i}"])
        atomic_write_json(d / "status.json", {"state": "running", "iteration": 50, "max_iter": 300,
                                              "host": "elsewhere", "pid": 1, "updated": time.time()})
        if i % 2:
            atomic_write_json(d / "results.json", {"status": "done", "iteration": 300, "max_iter": 300,
                                                   "metrics": {"bbox": {"AP": 30.0 + i % 7}}})
        jobs[sig] = {"dir": d.name, "name": f"seed={i}", "overrides": [f"seed={i}"]}
    atomic_write_json(sweep_dir / "sweep.json", {"name": sweep_dir.name, "jobs": jobs, "launches": []})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000, help="jobs in the swept grid and run dirs for status")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    n = args.jobs
    a, b = 10, max(1, n // 100)
    c = n // (a * b)
    sweep = [f"gamma=range(0,{a})", f"weight=range(0,{b})", f"seed=range(0,{c})", "loss=focal_eiou"]

    with tempfile.TemporaryDirectory(prefix="bbrctl-bench-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "BBRCTL_RUNS_ROOT": str(tmp / "runs"), "WANDB_MODE": "disabled"}
        base, _, _ = timed([py, "-c", "pass"], tmp, env, args.repeat)
        helpt, _, _ = timed([py, "-m", "bbrctl", "--help"], tmp, env, args.repeat)
        exp_t, exp_heavy, out = timed([py, "-c", _PROBE, "sweep", *sweep, "--dry-run", "--json"], tmp, env, args.repeat)
        plan = json.loads(out)
        assert plan["n_jobs"] == a * b * c, plan["n_jobs"]
        assert not (tmp / "runs").exists(), "--dry-run created files"
        make_runs(tmp / "runs" / "big", n)
        st_t, st_heavy, out = timed([py, "-c", _PROBE, "status", "big", "--json"], tmp, env, args.repeat)
        assert len(json.loads(out)["jobs"]) == n

    rows = [("python -c pass", base, None, []), ("bbrctl --help", helpt, None, []),
            (f"bbrctl sweep --dry-run ({a * b * c} jobs)", exp_t, 3.0, exp_heavy),
            (f"bbrctl status ({n} run dirs)", st_t, 1.0, st_heavy)]
    print(f"machine: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}; median of {args.repeat}")
    print(f"{'command':<36} {'median s':>9} {'x bare':>8} {'x --help':>9} {'target':>7}  heavy imports")
    ok = True
    for name, t, target, heavy in rows:
        met = target is None or (t <= target and not heavy)
        ok &= met
        tgt = "-" if target is None else f"{target:.1f}s"
        print(f"{name:<36} {t:9.3f} {t / base:8.1f} {t / helpt:9.2f} {tgt:>7}  {','.join(heavy) or '-'}"
              + ("" if met else "  MISSED"))
    print("OK" if ok else "MISSED a target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
