"""Where a run came from: the software and machine that made it, recorded in every run.

``software()`` is what an orchestration command knows without importing torch (bbrctl's
version, the git commit when bbrctl runs from a checkout, Python, the host and the
installed versions of the libraries a result depends on, read from package metadata); it
goes into ``job.json`` when a run directory is made. ``runtime(device)`` adds what only the
trainer knows (torch's CUDA and cuDNN builds, the devices it ran on, the thread count) and
goes into ``results.json`` with ``software()``. ``bbrctl report --format json`` carries both
per row, so a table can be traced to the code and machines behind each number.

Nothing here may fail a run: a value that cannot be read is recorded as null. No
environment variable, path or command line is recorded (they can hold secrets).
"""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

# The libraries whose versions change a result or its evaluation.
PACKAGES = ("torch", "torchvision", "numpy", "hydra-core", "omegaconf", "faster-coco-eval", "pycocotools", "scipy",
            "wandb", "optuna")


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """The commit of the checkout bbrctl is imported from, and whether it has local changes.

    Both null when bbrctl is installed from a wheel (no checkout around the package)."""
    pkg = Path(__file__).resolve().parent
    if not (pkg.parent / ".git").exists():
        return {"git_commit": None, "git_dirty": None}
    commit = _git(["rev-parse", "HEAD"], pkg.parent)
    status = _git(["status", "--porcelain", "--untracked-files=no"], pkg.parent) if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


@functools.lru_cache(maxsize=1)
def software() -> dict[str, Any]:
    """bbrctl's version and commit, Python, platform, host and library versions (no torch import)."""
    from bbrctl import __version__

    return {"bbrctl": __version__, **git_state(), "python": platform.python_version(),
            "platform": platform.platform(terse=True), "host": socket.gethostname(),
            "packages": {name: v for name in PACKAGES if (v := _version(name)) is not None}}


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def runtime(device: Any = None) -> dict[str, Any]:
    """What the trainer ran on: torch's builds, the devices and the CPU (imports torch)."""
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": None,
                            "device": None if device is None else str(device), "gpus": [],
                            "cpu": cpu_model(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        try:
            info["cudnn"] = torch.backends.cudnn.version()
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001 - a driver hiccup must not fail the run's record
            pass
    return info


def record(device: Any = None) -> dict[str, Any]:
    """The ``env`` block of results.json: software() and runtime() together."""
    try:
        run = runtime(device)
    except Exception:  # noqa: BLE001
        run = {}
    return {**software(), **run}
