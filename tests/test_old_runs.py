"""Run directories made by an older bbrctl are still found, skipped and reported.

``tests/fixtures/runs_0e3f850/`` holds a sweep made by bbrctl at commit 0e3f850 (before the
`detection/` split and the default moves), in a runs root at /tmp/gen/runs: the arguments of
``SWEEP`` below with ``--wait``, its files as that code wrote them (checkpoints and lock files
removed: nothing here resumes). Moving code or filling a default that changes a
run's signature must keep these runs found: the same sweep again launches nothing, status
and report read them, and the AP they report is what the old results hold.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import run_cli

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "runs_0e3f850"
SWEEP = ["sweep", "data=shapes_tiny", "schedule=smoke", "backbone=resnet_tiny", "loss=eiou,focal_eiou",
         "schedule.max_iter=40", "schedule.steps=[30]", "schedule.base_lr=0.02", "schedule.base_batch_size=2",
         "model.score_thresh=0.01", "schedule.eval_period=0", "schedule.checkpoint_period=0", "--name", "old"]


@pytest.fixture
def root(tmp_path) -> Path:
    dst = tmp_path / "runs"
    shutil.copytree(FIXTURE, dst)
    return dst


def old_results(root: Path) -> dict[str, float]:
    return {d.name: json.loads((d / "results.json").read_text())["metrics"]["bbox"]["AP50"]
            for d in sorted((root / "old").iterdir()) if (d / "results.json").is_file()}


def test_the_fixture_is_what_the_old_code_wrote():
    runs = [d for d in (FIXTURE / "old").iterdir() if d.is_dir()]
    assert len(runs) == 2
    for d in runs:
        assert json.loads((d / "results.json").read_text())["status"] == "done"
        assert not (d / "checkpoints").exists()


def test_the_same_sweep_again_finds_every_old_run_and_launches_nothing(root, tmp_path):
    out = run_cli([*SWEEP, "--runs-root", str(root), "--dry-run", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    jobs = plan["jobs"]
    assert len(jobs) == 2 and plan["n_launch"] == 0 and plan["n_skip"] == 2, plan
    assert sorted(Path(j["run_dir"]).name for j in jobs) == sorted(old_results(root))
    assert all(j["state"] == "done" and j["action"] == "skip" for j in jobs), jobs
    # The signature is today's or one the directory was adopted from: the old one is kept either way.
    for j in jobs:
        old = json.loads((FIXTURE / "old" / Path(j["run_dir"]).name / "job.json").read_text())["signature"]
        assert old == j["signature"] or old in j.get("previous_signatures", []), (old, j)


def test_status_and_report_read_the_old_runs(root, tmp_path):
    want = old_results(root)
    st = run_cli(["status", "old", "--runs-root", str(root), "--json"], tmp_path)
    assert st.returncode == 0, st.stderr
    rows = json.loads(st.stdout)["jobs"]
    assert sorted(r["state"] for r in rows) == ["done", "done"]
    rep = run_cli(["report", "--table", "1", "--sweep", "old", "--runs-root", str(root), "--format", "json",
                   "--out", "-"], tmp_path)
    assert rep.returncode == 0, rep.stderr
    table = json.loads(rep.stdout)
    ours = {r["labels"]["Method"]: r for r in table["rows"] if r["source"] == "ours" and r["n"]}
    assert set(ours) == {"EIOU", "Focal-EIOU"}, list(ours)
    assert min(want.values()) > 0
    got = sorted(r["metrics"]["AP50"]["mean"] for r in ours.values())
    assert got == pytest.approx(sorted(want.values()), abs=1e-9)
