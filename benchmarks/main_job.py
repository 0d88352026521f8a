"""The main job's wall time (README command 1), end to end, as a ratio to a reference workload.

The main job is ``bbrctl sweep +experiment=table1_decide launcher.max_parallel=2 --wait``
then ``bbrctl report --table 1 --paper``, run here with ``schedule.cpu_amp=off`` forced so
that the figure says what a CPU without AMX gets (bf16 autocast off), into an empty runs
root and an empty dataset directory (the dataset is generated on first use, as on a fresh
clone). With ``--fresh-clone`` the committed HEAD is cloned into a temporary directory and
installed into a new virtual environment first (``python3 -m venv`` + ``pip install -e .``),
and that install is timed too: the whole README command 1.

The reference is a fixed workload measured in the same run, once before and once after the
main job (the mean is the unit; both are printed): torchvision's ResNet-18 (10 classes),
forward and backward, batch 8 at 160 px, 40 SGD iterations after 5 warm-up, at torch's
default thread count, in its own process. Seconds on a shared machine mean little; the
ratio says how the main job compares with what this CPU does in the same conditions. The
load average (1 min) is sampled every 10 s and printed. Target: <= 40x the reference,
decided (the decision line the report printed is shown).

    python benchmarks/main_job.py                  # ~12-20 min on an idle 2-core CPU
    python benchmarks/main_job.py --fresh-clone    # plus the install
    python benchmarks/main_job.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 40.0
MAIN_JOB = ["sweep", "+experiment=table1_decide", "launcher.max_parallel=2", "schedule.cpu_amp=off", "--wait"]
REPORT = ["report", "--table", "1", "--paper", "--out", "-"]

REFERENCE = r"""
import time, torch, torchvision
torch.manual_seed(0)
m = torchvision.models.resnet18(num_classes=10)
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(8, 3, 160, 160), torch.randint(0, 10, (8,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
for _ in range(5):
    step()
t = time.perf_counter()
for _ in range(40):
    step()
print(time.perf_counter() - t, torch.get_num_threads())
"""


def load1() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return float("nan")


class LoadSampler(threading.Thread):
    def __init__(self, every: float = 10.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(load1())
            self.stop.wait(self.every)

    def summary(self) -> dict:
        s = self.samples or [float("nan")]
        return {"min": min(s), "median": statistics.median(s), "max": max(s), "n": len(s)}


def reference(python: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    before = load1()
    out = subprocess.run([python, "-c", REFERENCE], capture_output=True, text=True, env=env, check=True)
    secs, threads = out.stdout.split()
    return {"seconds": float(secs), "threads": int(threads), "load_before": before}


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fresh-clone", action="store_true", help="clone HEAD and pip install it first (timed)")
    p.add_argument("--json", default=None, help="also write the measurements here")
    p.add_argument("--keep", default=None, help="keep the work directory here instead of a temporary one")
    args = p.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bbrctl-main-job-"))
    work.mkdir(parents=True, exist_ok=True)
    sampler = LoadSampler()
    sampler.start()
    rec: dict = {"machine": os.uname().machine, "cpus": os.cpu_count(), "work": str(work)}
    rec["reference_before"] = reference(sys.executable)
    print(f"reference (before): {rec['reference_before']['seconds']:.1f} s at {rec['reference_before']['threads']} "
          f"threads, load {rec['reference_before']['load_before']:.2f}", flush=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith("BBRCTL_")}
    env.update(BBRCTL_DATA_DIR=str(work / "data"), BBRCTL_RUNS_ROOT=str(work / "runs"))
    install_s = 0.0
    if args.fresh_clone:
        clone = work / "clone"
        t0 = time.perf_counter()
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True)
        subprocess.run([str(clone / ".venv" / "bin" / "pip"), "install", "-q", "-e", str(clone)], check=True)
        install_s = time.perf_counter() - t0
        bbrctl, cwd = [str(clone / ".venv" / "bin" / "bbrctl")], clone
        print(f"install: {install_s:.0f} s", flush=True)
    else:
        bbrctl, cwd = [sys.executable, "-m", "bbrctl"], work
    sweep_s, sweep = timed([*bbrctl, *MAIN_JOB], cwd, env)
    report_s, report = timed([*bbrctl, *REPORT], cwd, env)
    rec["reference_after"] = reference(sys.executable)
    sampler.stop.set()
    ref = statistics.mean([rec["reference_before"]["seconds"], rec["reference_after"]["seconds"]])
    total = install_s + sweep_s + report_s
    decision = next((ln for ln in report.stdout.splitlines() if ln.startswith("Seeds until decided")), None)
    rec.update(install_s=install_s, sweep_s=sweep_s, report_s=report_s, total_s=total, reference_s=ref,
               ratio=total / ref, target=TARGET, load=sampler.summary(), decision=decision,
               sweep_rc=sweep.returncode, sweep_stdout=sweep.stdout[-2000:], sweep_stderr_tail=sweep.stderr[-3000:],
               report=report.stdout)
    print(sweep.stdout.strip())
    print(report.stdout)
    if sweep.returncode != 0:
        print(sweep.stderr[-3000:], file=sys.stderr)
    print(f"reference (after): {rec['reference_after']['seconds']:.1f} s")
    print(f"main job: install {install_s:.0f} s + sweep {sweep_s:.0f} s + report {report_s:.1f} s = {total:.0f} s; "
          f"reference {ref:.1f} s -> {total / ref:.1f}x (target <= {TARGET:g}x); load average (1 min) "
          f"min {rec['load']['min']:.2f} median {rec['load']['median']:.2f} max {rec['load']['max']:.2f}")
    print(f"decision: {decision}")
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=2, default=str) + "\n")
    return 0 if sweep.returncode == 0 and report.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
