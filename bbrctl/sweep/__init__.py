"""Sweeps: Hydra overrides expanded into validated, signed jobs; nothing is written here.

Modules::

    expand.py   expand(overrides) -> SweepPlan: parse, cross, compose, validate, name, locate
    fast.py     the fast composition path (equal to Hydra's compose, tested)
    plan.py     Job, SweepPlan (and its manifest entry)
"""

from bbrctl.sweep.expand import expand, parse_overrides
from bbrctl.sweep.plan import Job, SweepPlan

__all__ = ["expand", "parse_overrides", "Job", "SweepPlan"]
