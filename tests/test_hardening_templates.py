"""Hardening, launcher templates: rendered in Jinja2's sandbox, also under --dry-run and
--show-script, so a template cannot run Python (it stays trusted input: it writes the shell
script SLURM runs; docs/security.md says so).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bbrctl.errors import UserError
from bbrctl.launch import slurm

ESCAPES = [
    "{{{{ cycler.__init__.__globals__.os.system('touch {canary}') }}}}",
    "{{{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch {canary}') }}}}",
    "{{{{ ''.__class__.__mro__[1].__subclasses__() }}}}{{{{ joiner.__init__.__globals__.os.popen('touch {canary}') }}}}",
    "{{{{ lipsum.__globals__['os'].system('touch {canary}') }}}}",
    "{{% set x = namespace.__init__.__globals__ %}}{{{{ x.os.system('touch {canary}') }}}}",
]


def _settings(template: Path) -> dict:
    return slurm.check_settings({"name": "slurm", "template": str(template), "partition": None, "account": None,
                                 "qos": None, "time": "10", "gpus_per_job": 0, "nodes": 1, "max_requeues": 1,
                                 "cpus_per_task": 1, "mem": None, "max_parallel": 1, "signal_seconds": 60,
                                 "extra_sbatch": [], "setup": [], "python": None})


@pytest.mark.parametrize("body", ESCAPES)
def test_a_template_cannot_run_python(body, tmp_path):
    canary = tmp_path / "ran"
    tpl = tmp_path / "evil.sbatch.j2"
    tpl.write_text("#!/bin/bash\n" + body.format(canary=canary) + "\n")
    with pytest.raises(UserError, match="does not render") as e:
        slurm.render(_settings(tpl), sweep_name="s", tasks_file=tmp_path / "t", n_tasks=1)
    assert "\n" not in str(e.value)
    assert not canary.exists()


@pytest.mark.parametrize("flag", ["--dry-run", "--show-script"])
def test_issue_probe_dry_run_and_show_script_render_in_the_sandbox(flag, tmp_path):
    canary = tmp_path / "ran"
    tpl = tmp_path / "evil.sbatch.j2"
    tpl.write_text("#!/bin/bash\n" + ESCAPES[0].format(canary=canary) + "\n")
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    for name in ("sbatch", "squeue", "scontrol", "sacct"):
        (fakebin / name).write_text("#!/bin/sh\ncat > /dev/null; exit 0\n")
        (fakebin / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{fakebin}:{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "bbrctl", "sweep", "seed=0,1", "launcher=slurm",
                          f"launcher.template={tpl}", flag, "--runs-root", str(tmp_path / "runs")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and "does not render" in out.stderr
    assert not canary.exists() and not (tmp_path / "runs").exists()


def test_control_the_shipped_template_and_a_plain_custom_one_render(tmp_path):
    text = slurm.render(_settings(slurm.template_dir() / "array.sbatch.j2"), sweep_name="s",
                        tasks_file=tmp_path / "t", n_tasks=2)
    assert text.startswith("#!") and "bbrctl" in text and "train" in text
    tpl = tmp_path / "mine.sbatch.j2"
    tpl.write_text(textwrap.dedent("""\
        #!/bin/bash
        #SBATCH --job-name={{ job_name }}
        {% for line in setup %}{{ line }}
        {% endfor %}{{ python | q }} -m bbrctl train --run-dir "$(sed -n "$((SLURM_ARRAY_TASK_ID+1))p" {{ tasks_file | q }})"
    """))
    out = slurm.render(_settings(tpl), sweep_name="s", tasks_file=tmp_path / "t", n_tasks=1)
    assert "#SBATCH --job-name=bbrctl-s" in out and "-m bbrctl train" in out
