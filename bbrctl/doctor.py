"""`bbrctl doctor`: what this machine has for bbrctl, and what is missing, in one screen.

For a user asking "why does it not run here": bbrctl's version and commit, Python and the
libraries (provenance.software), torch's build and the devices it sees, whether the CPU has
bf16 matrix hardware (AMX: ``schedule.cpu_amp=auto`` turns bf16 on only there), the optional
extras, W&B's mode and whether an API key is available (never the key itself), the SLURM
client tools and whether a controller answers, and whether the runs root and the synthetic
data cache can be written. Each check is a :class:`Check`; nothing is changed or created.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bbrctl import extras, provenance
from bbrctl.store.root import runs_root

OK, MISSING, PROBLEM, INFO = "ok", "missing", "problem", "info"


@dataclass
class Check:
    area: str
    name: str
    state: str          # ok | missing (optional, not installed) | problem (needed, broken) | info
    detail: str
    fix: str = ""


def _writable(path: Path) -> tuple[bool, str]:
    """Whether a file could be created under ``path`` (the nearest existing parent is tried)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        return False, f"{probe}: {e.strerror or e}"
    return True, str(path)


def _software() -> list[Check]:
    sw = provenance.software()
    commit = sw["git_commit"]
    where = (f"checkout at {commit[:12]}" + (" with local changes" if sw["git_dirty"] else "")) if commit \
        else "installed package"
    out = [Check("bbrctl", "version", INFO, f"bbrctl {sw['bbrctl']} ({where}); Python {sw['python']}; "
                 f"{sw['platform']}; host {sw['host']}")]
    pk = sw["packages"]
    out.append(Check("bbrctl", "libraries", INFO, ", ".join(f"{k} {v}" for k, v in sorted(pk.items()))))
    return out


def _torch() -> list[Check]:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - the point is to report it
        return [Check("torch", "import", PROBLEM, f"torch does not import: {type(e).__name__}: {e}",
                      "pip install torch torchvision (see the install section of the docs)")]
    out = [Check("torch", "build", INFO, f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU)'}; "
                 f"{torch.get_num_threads()} CPU threads")]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out.append(Check("torch", "gpus", OK, f"{len(names)} CUDA device(s): {', '.join(names)}"))
    else:
        why = "this torch is a CPU build" if not torch.version.cuda else "no CUDA device is visible"
        out.append(Check("torch", "gpus", INFO, f"no GPU ({why}); training runs on the CPU"))
    from bbrctl.detection.train.speed import has_bf16_matmul_hardware

    amx = has_bf16_matmul_hardware()
    out.append(Check("torch", "cpu bf16", INFO, f"{provenance.cpu_model() or 'unknown CPU'}: "
                     + ("AMX present, schedule.cpu_amp=auto trains in bf16" if amx else
                        "no AMX, schedule.cpu_amp=auto stays fp32")))
    return out


def _extras() -> list[Check]:
    out = []
    for module, (extra, what) in extras.EXTRAS.items():
        if extras.available(module):
            out.append(Check("extras", module, OK, f"{what}: {module} installed"))
        else:
            out.append(Check("extras", module, MISSING, f"{what}: {module} not installed",
                             f"pip install 'bbrctl[{extra}]'"))
    return out


def _wandb() -> list[Check]:
    if not extras.available("wandb"):
        return []
    from bbrctl.config.wandb_settings import has_api_key

    env_mode = os.environ.get("WANDB_MODE")
    key = has_api_key()
    detail = (f"WANDB_MODE={env_mode}" if env_mode else "WANDB_MODE unset (the config's wandb.mode decides; "
              "default disabled)") + ("; an API key is available" if key else "; no API key (online falls back "
                                                                               "to offline)")
    base = os.environ.get("WANDB_BASE_URL")
    if base:
        detail += f"; server {base}"
    return [Check("wandb", "login", OK if key else INFO, detail, "" if key else "wandb login (for online runs)")]


def _slurm() -> list[Check]:
    tools = {t: shutil.which(t) for t in ("sbatch", "squeue", "scontrol", "scancel", "sinfo")}
    missing = [t for t, p in tools.items() if p is None]
    if len(missing) == len(tools):
        return [Check("slurm", "tools", INFO, "no SLURM client tools on PATH (launcher=slurm unavailable here)")]
    out = [Check("slurm", "tools", PROBLEM if missing else OK,
                 f"missing: {', '.join(missing)}" if missing else "sbatch, squeue, scontrol, scancel, sinfo on PATH")]
    if tools["sinfo"]:
        try:
            r = subprocess.run(["sinfo", "-h", "-o", "%P %a %D %T"], capture_output=True, text=True, timeout=10,
                               stdin=subprocess.DEVNULL)
            ok = r.returncode == 0
            text = " ".join(r.stdout.split())[:200] if ok else " ".join(r.stderr.split())[:200]
        except (OSError, subprocess.SubprocessError) as e:
            ok, text = False, str(e)
        out.append(Check("slurm", "controller", OK if ok else PROBLEM,
                         f"partitions: {text}" if ok else f"sinfo failed: {text}",
                         "" if ok else "check slurmctld and your cluster's configuration"))
    return out


def _paths(root_option: str | os.PathLike | None) -> list[Check]:
    out = []
    root = runs_root(root_option)
    ok, detail = _writable(root)
    out.append(Check("paths", "runs root", OK if ok else PROBLEM, detail,
                     "" if ok else "pass --runs-root DIR or set BBRCTL_RUNS_ROOT to a writable directory"))
    data = Path(os.environ.get("BBRCTL_DATA_DIR") or Path.home() / ".cache" / "bbrctl" / "data")
    ok, detail = _writable(data)
    out.append(Check("paths", "data cache", OK if ok else PROBLEM, detail,
                     "" if ok else "set BBRCTL_DATA_DIR to a writable directory"))
    return out


def run_checks(root_option: str | os.PathLike | None = None) -> list[Check]:
    return [*_software(), *_torch(), *_extras(), *_wandb(), *_slurm(), *_paths(root_option)]


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
