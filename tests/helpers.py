"""Helpers shared by the end-to-end tests (imported as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import subprocess
import sys
import time


def run_cli(args, cwd, timeout=120, **kw):
    """`python -m bbrctl ARGS` in ``cwd``, output captured as text."""
    return subprocess.run([sys.executable, "-m", "bbrctl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


def wait_until(pred, timeout, every=1.0):
    """Poll ``pred`` until it returns something truthy (returned) or ``timeout`` s pass (None)."""
    t = time.time()
    while time.time() - t < timeout:
        v = pred()
        if v:
            return v
        time.sleep(every)
    return None
