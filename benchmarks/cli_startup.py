"""Start-up cost of the light commands, as a ratio against a bare interpreter.

Prints the median wall time of `bbrctl --help` (and `bbrctl config`, `status`, `report`
where built) next to `python -c pass`, measured in the same run, and checks that none of
them imports torch, torchvision, wandb or matplotlib. Target: `bbrctl --help` within 0.5 s
of a bare interpreter start.

    python benchmarks/cli_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "torchvision", "wandb", "matplotlib")


def wall(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def heavy_imports(args: list[str]) -> list[str]:
    code = ("import sys\nfrom bbrctl.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('HEAVY:' + ','.join(m for m in %r if m in sys.modules) + '\\n')" % (args, HEAVY))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("HEAVY:")]
    if not line:
        return ["<probe failed>"]
    return [m for m in line[-1][len("HEAVY:"):].split(",") if m]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    py = sys.executable
    base = wall([py, "-c", "pass"], args.repeat)
    rows = [("python -c pass", base, [])]
    for argv in (["--help"], ["config"], ["status"], ["report", "--help"]):
        t = wall([py, "-m", "bbrctl", *argv], args.repeat)
        rows.append(("bbrctl " + " ".join(argv), t, heavy_imports(argv)))
    print(f"{'command':<24} {'median s':>9} {'- bare s':>9}  heavy imports")
    for name, t, heavy in rows:
        print(f"{name:<24} {t:9.3f} {t - base:9.3f}  {','.join(heavy) or '-'}")
    help_over = rows[1][1] - base
    ok = help_over <= 0.5 and not any(h for _, _, h in rows)
    print(f"\n`bbrctl --help` costs {help_over:.3f} s over a bare interpreter (target <= 0.5 s): "
          f"{'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
