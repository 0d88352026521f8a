"""`bbrctl status`: what every job of a sweep is doing, and how to show it.

Modules::

    inspect.py      JobState, inspect_job, sweep_jobs: a job's state from its run directory
                    checked against what could still run it (SLURM, a supervisor, a pid)
    slurm_queue.py  squeue / sacct
    render.py       the status table, the runs-root overview, the live progress view
"""

from bbrctl.status.inspect import JobState, Scheduler, counts, inspect_job, summary_line, sweep_jobs
from bbrctl.status.render import ProgressView, render_overview, render_table

__all__ = ["JobState", "Scheduler", "counts", "inspect_job", "summary_line", "sweep_jobs", "ProgressView",
           "render_overview", "render_table"]
