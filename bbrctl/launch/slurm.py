"""Submit a sweep as one SLURM job array (asking SLURM about it: bbrctl.status.slurm_queue).

The batch script is rendered from a user-editable Jinja2 template (slurm/array.sbatch.j2).
No override value ever reaches it: each array task reads its run directory from a task
list written beside the script (line ``SLURM_ARRAY_TASK_ID + 1``) and runs
``python -m bbrctl train --run-dir <that dir>`` (under torchrun for several GPUs, and with
``launcher.nodes > 1`` one torchrun agent per node started by srun). Launcher values become #SBATCH directives
only after a strict check (no spaces, quotes or newlines), and everything that lands in
shell code goes through the ``q`` filter (shlex.quote). ``launcher.setup`` lines are the one
exception by design: they are the user's own shell (module loads, environment activation).

All commands are run as argument lists, never through a shell.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from bbrctl.errors import UserError
from bbrctl.store import atomic_write_text


# A task requeues itself after USR1 at most this often unless launcher.max_requeues says.
DEFAULT_MAX_REQUEUES = 20


def template_dir() -> Path:
    """The shipped templates: bbrctl/slurm in a wheel, slurm/ in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "slurm", here.parent / "slurm"):
        if (cand / "array.sbatch.j2").is_file():
            return cand
    raise RuntimeError(f"bbrctl's SLURM templates are missing (looked in {here / 'slurm'} and {here.parent / 'slurm'})")


def check_settings(launcher: dict) -> dict:
    """launcher.* for SLURM, checked by the schema and normalised for the template."""
    from bbrctl.config.schema import LAUNCHER, check_group

    s = dict(launcher)
    s.setdefault("name", "slurm")
    check_group(s, LAUNCHER["slurm"], "launcher", "launcher (slurm)")
    for key in ("partition", "account", "qos", "time", "mem"):
        if s.get(key) is not None:
            s[key] = str(s[key])
    s["extra_sbatch"] = [re.sub(r"^#SBATCH\s+", "", str(x).strip()) for x in s.get("extra_sbatch") or []]
    s["setup"] = list(s.get("setup") or [])
    s["template"] = s.get("template") or "array.sbatch.j2"
    s["nodes"] = int(s.get("nodes") or 1)
    s["max_requeues"] = int(s["max_requeues"]) if s.get("max_requeues") is not None else DEFAULT_MAX_REQUEUES
    return s


def resolve_template(name: str) -> Path:
    p = Path(name).expanduser()
    if p.is_file():
        return p.resolve()
    if "/" not in name:
        cand = template_dir() / name
        if cand.is_file():
            return cand
    shipped = ", ".join(sorted(x.name for x in template_dir().glob("*.j2")))
    raise UserError(f"launcher.template {name!r} not found; give a path to your template or one of: {shipped}")


def render(settings: dict, *, sweep_name: str, tasks_file: Path, n_tasks: int) -> str:
    """The batch script for one array. Only checked values and quoted strings go in."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    path = resolve_template(settings["template"])
    # A template is trusted input (it writes the shell script SLURM runs), but rendering it
    # (also for --dry-run and --show-script) must not run Python: Jinja2's sandbox refuses
    # attribute walks like ``cycler.__init__.__globals__.os`` (SecurityError, one line).
    env = SandboxedEnvironment(loader=jinja2.FileSystemLoader(str(path.parent)), undefined=jinja2.StrictUndefined,
                               autoescape=False, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["q"] = lambda v: shlex.quote(str(v))
    try:
        tmpl = env.get_template(path.name)
        return tmpl.render(
            job_name=f"bbrctl-{sweep_name}", sweep_name=sweep_name, template=str(path),
            partition=settings.get("partition"), account=settings.get("account"), qos=settings.get("qos"),
            time=settings.get("time"), mem=settings.get("mem"), gpus_per_job=settings["gpus_per_job"],
            nodes=settings["nodes"], procs=max(1, int(settings["gpus_per_job"])),
            max_requeues=settings["max_requeues"],
            cpus_per_task=settings["cpus_per_task"], signal_seconds=settings["signal_seconds"],
            extra_sbatch=settings["extra_sbatch"], setup=settings["setup"],
            python=settings.get("python") or sys.executable, tasks_file=str(tasks_file), n_tasks=n_tasks,
        )
    except jinja2.TemplateError as e:
        raise UserError(f"SLURM template {str(path)!r} does not render: {type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}") from None


def sbatch_argv(script: Path, n_tasks: int, max_parallel: int, log_dir: Path, job_name: str) -> list[str]:
    # Paths go on the command line, not in #SBATCH lines, so spaces in them are harmless;
    # a % in them would be read as a filename pattern (%j, %A): it is doubled.
    logs = pattern_literal(str(log_dir))
    return ["sbatch", "--parsable", f"--array=0-{n_tasks - 1}%{max_parallel}", f"--job-name={job_name}",
            f"--output={logs}/%A_%a.out", f"--error={logs}/%A_%a.out", str(script)]


def pattern_literal(path: str) -> str:
    """``path`` as a literal inside a SLURM filename pattern (``%`` is its escape character)."""
    return path.replace("%", "%%")


def test_submit(argv: Sequence[str], script_text: str, cwd: Path | None = None) -> None:
    """``sbatch --test-only`` with the script on stdin: the cluster checks partition, account,
    QoS, time and resources before anything is created. A refusal is the user's to fix."""
    test_argv = [argv[0], "--test-only", *[a for a in argv[1:-1] if a != "--parsable"]]
    try:
        out = subprocess.run(test_argv, input=script_text, capture_output=True, text=True, cwd=cwd, timeout=120)
    except subprocess.TimeoutExpired:
        return                          # a slow controller: let the real submission speak
    if out.returncode != 0:
        msg = " ".join((out.stderr or out.stdout).split())
        raise UserError(f"SLURM would refuse this job array: {msg}")


def require_slurm() -> None:
    missing = [c for c in ("sbatch", "squeue", "scontrol") if not shutil.which(c)]
    if missing:
        raise UserError(f"launcher=slurm needs SLURM's {', '.join(missing)} on PATH; use launcher=local here")


def submit(argv: Sequence[str], cwd: Path | None = None) -> str:
    """Run sbatch; return the array's job id. A refusal is reported with sbatch's own words."""
    out = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, timeout=120)
    if out.returncode != 0:
        msg = " ".join((out.stderr or out.stdout).split())
        raise UserError(f"sbatch refused the job array: {msg}")
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise RuntimeError(f"unexpected sbatch output: {out.stdout!r}")
    return job_id


def cancel(array_ids: Sequence[str]) -> tuple[bool, str]:
    if not array_ids:
        return True, ""
    out = subprocess.run(["scancel", *array_ids], capture_output=True, text=True, timeout=60)
    return out.returncode == 0, " ".join((out.stderr or "").split())


def write_tasks(path: Path, run_dirs: Sequence[Path]) -> None:
    for d in run_dirs:
        if "\n" in str(d) or "\r" in str(d):
            raise UserError(f"run directory {str(d)!r} contains a line break; choose another runs_root")
    atomic_write_text(path, "".join(f"{d}\n" for d in run_dirs))


def describe(settings: dict) -> dict[str, Any]:
    return {k: settings.get(k) for k in ("partition", "account", "qos", "time", "gpus_per_job", "nodes", "cpus_per_task",
                                         "mem", "max_parallel", "signal_seconds", "max_requeues", "template")}

