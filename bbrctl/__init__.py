"""bbrctl: experiment orchestrator and reference loss library for Focal-EIoU research.

Importing the package is cheap on purpose: torch and friends load only in the modules
that need them, so the orchestration commands start fast.
"""

__version__ = "0.2.0"
