"""The exit status of ``bbrctl train`` under torchrun, from what its run directory says.

torchrun reports any worker's non-zero exit as 1, so the checkpoint-and-stop exit (75,
bbrctl.errors.REQUEUE_EXIT) of its workers does not reach the batch script. The script
calls, after a non-zero exit::

    python -m bbrctl.launch.exit_status RUN_DIR STARTED RC

which exits 75 when rank 0 recorded a stop with a checkpoint (status.json "requeued")
at or after STARTED (the task's start, seconds since the epoch), and RC otherwise. A
"requeued" status from an earlier run of the task does not count. Reads JSON only.
"""

from __future__ import annotations

import sys

from bbrctl.errors import REQUEUE_EXIT


def exit_status(run_dir: str, started: float, rc: int) -> int:
    from bbrctl.store import DamagedFile, read_progress

    if rc == 0:
        return 0
    try:
        st = read_progress(run_dir)
    except DamagedFile:
        return rc
    if st and st.get("state") == "requeued" and float(st.get("updated") or 0) >= started:
        return REQUEUE_EXIT
    return rc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m bbrctl.launch.exit_status RUN_DIR STARTED RC", file=sys.stderr)
        return 2
    try:
        started, rc = float(args[1]), int(args[2])
    except ValueError:
        print(f"bbrctl.launch.exit_status: STARTED and RC must be numbers, got {args[1]!r} {args[2]!r}", file=sys.stderr)
        return 2
    return exit_status(args[0], started, rc)


if __name__ == "__main__":
    sys.exit(main())
