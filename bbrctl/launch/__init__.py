"""Launching sweeps and stopping them.

Modules::

    submit.py   launch(plan): under the sweep lock, create what is missing and start it
    decide.py   per job: launch or skip (done, queued, running)
    local.py    the local supervisor (subprocesses, GPU slots, CPU thread split)
    slurm.py    one SLURM job array per launch: settings, template, sbatch
    exit_status.py  torchrun's exit status turned back into train's (run by the batch script)
    follow.py   wait for a sweep with a progress view
    cancel.py   `bbrctl sweep --cancel`
"""

from bbrctl.launch.cancel import cancel
from bbrctl.launch.decide import JobDecision, decide
from bbrctl.launch.follow import follow
from bbrctl.launch.submit import LaunchResult, check_launcher, launch, show_script

__all__ = ["cancel", "JobDecision", "decide", "follow", "LaunchResult", "check_launcher", "launch", "show_script"]
