"""docs/own-loss.md, step by step: its files written as the guide shows them, its commands run.

The package is really installed (pip, offline: ``--no-deps --no-build-isolation --no-index``)
into a folder put on PYTHONPATH, so bbrctl finds the loss through its entry point exactly
as in a virtualenv. The local part runs everywhere; the SLURM sweep needs the cluster
(skipped with a reason where none is reachable, required where BBRCTL_REQUIRE_SLURM is set).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "own-loss.md"


def guide_files() -> dict[str, str]:
    text = GUIDE.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", text, re.S)}


def guide_commands() -> list[list[str]]:
    text = GUIDE.read_text()
    (block,) = re.findall(r"<!-- commands -->\n```console\n(.*?)```", text, re.S)
    return [shlex.split(line[2:]) for line in block.splitlines() if line.startswith("$ ")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("guide")
    for rel, body in guide_files().items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(body)
    pip, *rest = guide_commands()
    assert pip[:2] == ["pip", "install"], pip
    site = work / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), *pip[2:]], cwd=work, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (next(site.glob("my_bbr_loss-*.dist-info")) / "entry_points.txt").read_text().startswith("[bbrctl.losses]")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1"}
    return work, env, rest


def bbrctl(cmd: list[str], work: Path, env: dict, timeout: int = 600):
    assert cmd[0] == "bbrctl", cmd
    return run_cli(cmd[1:], work, env=env, timeout=timeout)


def test_the_guide_has_a_ten_line_loss_a_package_and_the_five_commands():
    files = guide_files()
    assert set(files) == {"my-bbr-loss/my_bbr_loss/__init__.py", "my-bbr-loss/pyproject.toml", "my-conf/report/mine.yaml"}
    src = files["my-bbr-loss/my_bbr_loss/__init__.py"]
    body = src[src.index("def my_iou"):src.index("my_iou.bbrctl_loss")].strip().splitlines()
    assert len(body) == 10, body
    assert [c[:2] for c in guide_commands()] == [["pip", "install"], ["bbrctl", "config"], ["bbrctl", "sweep"],
                                                 ["bbrctl", "sweep"], ["bbrctl", "report"]]


def _report_row(text: str, label: str) -> list[str]:
    row = next((ln for ln in text.splitlines() if ln.startswith(f"| {label} ")), None)
    assert row is not None, text
    return [c.strip() for c in row.strip("|").split("|")]


def check_row(cells: list[str]) -> None:
    """label | n | AP | AP50 | AP75 | Δ AP [95% interval] vs the baseline row, over the 2 seeds."""
    assert cells[1] == "2" and all(re.fullmatch(r"\d+\.\d ± \d+\.\d", c) for c in cells[2:5]), cells
    assert re.fullmatch(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]", cells[5]), cells


@pytest.mark.slow
def test_guide_local_part(installed):
    work, env, (config, local, slurm, report) = installed
    out = bbrctl(config, work, env)
    assert out.returncode == 0 and re.fullmatch(r"[0-9a-f]{10}\n", out.stdout), out.stdout + out.stderr
    out = bbrctl(local, work, env, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    dirs = sorted(p for p in (work / "runs" / "mine").iterdir() if (p / "job.json").is_file())
    assert len(dirs) == 4
    mine = [d for d in dirs if json.loads((d / "job.json").read_text())["config"]["loss"]["name"] == "my_iou"]
    assert len(mine) == 2
    for d in mine:
        cfg = json.loads((d / "job.json").read_text())["config"]
        assert cfg["loss"]["target"] == "my_bbr_loss:my_iou" and cfg["loss"]["param_ranges"] == {"lam": [0.0, 10.0]}
        assert json.loads((d / "results.json").read_text())["status"] == "done"
    # Run again: the finished jobs are found through their signatures.
    again = bbrctl(local, work, env)
    assert again.returncode == 0 and "nothing to launch (4 done)" in again.stdout + again.stderr, again.stderr
    # The guide's report command, on the local sweep (its --sweep is the SLURM one).
    out = bbrctl([*report[:report.index("--sweep") + 1], "mine", *report[report.index("--sweep") + 2:]], work, env)
    assert out.returncode == 0, out.stdout + out.stderr
    check_row(_report_row(out.stdout, "RetinaNet + my_iou"))


def test_guide_prose_claims_param_sweep_and_simulation(installed):
    """The guide's prose: `sweep loss=my_iou loss.params.lam=0,0.5,1` and `simulate --losses eiou,my_iou`."""
    work, env, _ = installed
    out = run_cli(["sweep", "loss=my_iou", "loss.params.lam=0,0.5,1", "--name", "lam", "--dry-run"], work, env=env)
    assert out.returncode == 0 and "3 job" in out.stdout + out.stderr, out.stdout + out.stderr
    assert not (work / "runs" / "lam").exists()
    out = run_cli(["sweep", "loss=my_iou", "loss.params.lam=0,20", "--name", "lam"], work, env=env)
    assert out.returncode == 2 and "my_iou.lam=20 is out of range; valid: [0, 10]" in out.stderr, out.stderr
    assert not (work / "runs" / "lam").exists()
    sim = work / "sim"
    out = run_cli(["simulate", "--setup", "2", "--losses", "eiou,my_iou", "--iterations", "4", "--points", "2",
                   "--no-plots", "-q", "--device", "cpu", "--out", str(sim)], work, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((sim / "summary.json").read_text())
    assert set(summary["losses"]) == {"eiou", "my_iou"}
    assert summary["config"]["loss_code"]["my_iou"]["target"] == "my_bbr_loss:my_iou"


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_guide_slurm_part(installed, slurm_cluster):
    work, env, (_config, _local, slurm, report) = installed
    out = bbrctl(slurm, work, env, timeout=850)
    assert out.returncode == 0, out.stdout + out.stderr
    sweep = work / "runs" / "mine_slurm"
    launches = json.loads((sweep / "sweep.json").read_text())["launches"]
    assert launches and launches[0]["launcher"] == "slurm"
    dirs = [p for p in sweep.iterdir() if (p / "results.json").is_file()]
    assert len(dirs) == 4 and all(json.loads((d / "results.json").read_text())["status"] == "done" for d in dirs)
    out = bbrctl(report, work, env)
    assert out.returncode == 0, out.stdout + out.stderr
    check_row(_report_row(out.stdout, "RetinaNet + my_iou"))
