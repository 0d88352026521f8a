"""What a run shows and keeps as it trains, on rank 0: the progress bar, train.log, the
per-iteration records of metrics.jsonl, W&B, and the status file (at most every
``STATUS_PERIOD_S`` unless forced). Silent on the other ranks."""

from __future__ import annotations

import time
from pathlib import Path

from bbrctl import store

STATUS_PERIOD_S = 5.0


# Loss-term names as the progress bar shows them (an 80-column terminal fits them all).
_SHORT = {"classification": "cls", "bbox_regression": "reg", "bbox_ctrness": "ctr", "loss_classifier": "cls",
          "loss_box_reg": "reg", "loss_objectness": "obj", "loss_rpn_box_reg": "rpn", "loss_mask": "mask"}


class Reporter:
    """Progress bar, train.log and W&B for rank 0; silent elsewhere."""

    def __init__(self, run_dir: Path, dist, max_iter: int, start: int, progress: bool, wandb=None):
        self.main = dist.main
        self.run_dir = run_dir
        self.wandb = wandb
        self.max_iter = max_iter
        self._progress = None
        self._task = None
        self._last_status = 0.0
        if self.main and progress:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            # stderr: stdout carries the command's result lines.
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(bar_width=16), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("{task.fields[terms]}"), console=Console(stderr=True), transient=False)
            self._task = self._progress.add_task("train", total=max_iter, completed=start, rate="", terms="")
            self._progress.start()

    def log(self, msg: str) -> None:
        if not self.main:
            return
        from bbrctl.redact import redact_text

        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {redact_text(msg)}"
        store.append_lines(self.run_dir / store.LOG, line + "\n")
        if self._progress is not None:
            self._progress.console.print(line, highlight=False, markup=False)
        else:  # batch jobs: the scheduler's log file gets the same lines
            import sys

            print(line, file=sys.stderr, flush=True)

    def advance(self, iteration: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=iteration)

    def records(self, records: list[dict]) -> None:
        """Per-iteration scalars, already on the host."""
        if not self.main or not records:
            return
        import json

        store.append_lines(self.run_dir / store.METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        last = records[-1]
        window = sum(r["time"] for r in records)
        rate = len(records) / window if window > 0 else float("nan")
        terms = " ".join(f"{_SHORT.get(k, k)} {v:.3f}" for k, v in last.items()
                         if k not in ("iteration", "lr", "time", "data_time"))
        if self._progress is not None:
            self._progress.update(self._task, rate=f"{rate:.2f} it/s", terms=terms)
        self.log(f"iter {last['iteration']}/{self.max_iter} lr {last['lr']:.5f} {terms} ({rate:.2f} it/s)")
        if self.wandb is not None:
            self.wandb.log_history([(r["iteration"], {("train/" + k): v for k, v in r.items() if k != "iteration"})
                                    for r in records])

    def status(self, iteration: int, force: bool = False, **fields) -> None:
        if not self.main:
            return
        now = time.monotonic()
        if force or now - self._last_status >= STATUS_PERIOD_S:
            store.write_status(self.run_dir, fields.pop("state", "running"), iteration=iteration,
                              max_iter=self.max_iter, **fields)
            self._last_status = now

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
