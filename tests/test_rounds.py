"""Seeds until decided (bbrctl.launch.rounds) end to end through `bbrctl report`, with the
training replaced by a stand-in that writes results.json the way a trainer does, so the
rounds, retries, resume and report can be checked in a second; one test trains for real."""

from __future__ import annotations

import csv
import io
import json

import pytest

from helpers import run_cli

from bbrctl.errors import UserError
from bbrctl.launch import rounds
from bbrctl.report.fake_runs import metrics_for
from bbrctl.report.main import report_table
from bbrctl.report.render import to_markdown
from bbrctl.store import RunDir, prepare_run_dir, read_results, write_results
from bbrctl.store.decision import read_decision

BASE = ["loss=baseline,focal_eiou", "data=shapes_tiny", "schedule=smoke", "sweep.seeds=auto",
        "sweep.compare=focal_eiou:baseline", "sweep.max_seeds=6"]


class FakeTrainer:
    """Stands in for launch(): every job not done gets a results.json; counts trainings."""

    def __init__(self, ap, fail=()):
        self.ap, self.fail, self.trained, self.rounds = ap, dict.fromkeys(fail, 0), [], 0

    def __call__(self, plan, wait, echo, progress):
        self.rounds += 1
        for j in plan.jobs:
            res = read_results(j.run_dir) if RunDir(j.run_dir).job.exists() else None
            if res is not None and res["status"] == "done":
                continue
            prepare_run_dir(j.run_dir, j.config, signature=j.signature, name=j.name, sweep=plan.name,
                            overrides=j.overrides)
            key = (j.config["loss"]["name"], j.config["seed"])
            self.trained.append(key)
            if key in self.fail and self.fail[key] < self.fail_times(key):
                self.fail[key] += 1
                write_results(j.run_dir, "failed", iteration=1, max_iter=4, signature=j.signature, error="boom")
            else:
                write_results(j.run_dir, "done", metrics=metrics_for(self.ap(*key)), iteration=4, max_iter=4,
                              signature=j.signature)

    def fail_times(self, key):
        return self.fail_n.get(key, 1) if hasattr(self, "fail_n") else 1


def _ap_effect(loss, seed):
    # Focal-EIoU 2.5 AP above the baseline with a little seed noise: decided early.
    noise = [0.3, -0.4, 0.2, 0.5, -0.1, 0.0, 0.4, -0.3][seed]
    return 28.0 + (2.5 + noise if loss == "focal_eiou" else 0.0)


def _ap_none(loss, seed):
    return 28.0 + [0.9, -1.1, 0.4, -0.2, 1.3, -0.8, 0.1, 0.6][seed] * (1 if loss == "focal_eiou" else -0.5)


def test_decides_stops_and_report_says_how(tmp_path, monkeypatch):
    fake = FakeTrainer(_ap_effect)
    monkeypatch.setattr(rounds, "launch", fake)
    res = rounds.run_until_decided(BASE, runs_root=tmp_path, echo=lambda m: None)
    assert res.outcome.state == "decided" and res.outcome.winner == "a"
    n = res.outcome.last.n
    assert n < 6 and res.record["looks"] == list(range(3, n + 1))
    assert sorted(fake.trained) == sorted((loss, s) for loss in ("baseline", "focal_eiou") for s in range(n))
    assert "decided at" in rounds.summary(res)

    out = report_table("1", runs=tmp_path, out="-")
    md = to_markdown(out.result)
    line = next(x for x in md.splitlines() if x.startswith("Seeds until decided"))
    assert f"decided at {n} seeds: Focal-EIOU is better" in line and "Pocock" in line
    lk = res.outcome.last
    assert f"[{lk.low:+.1f}, {lk.high:+.1f}]*" in md            # the Δ cell holds the rule's interval
    row = next(r for r in json.loads(report_table("1", runs=tmp_path, out="-", fmt="json").text)["rows"]
               if r["id"] == "focal_eiou" and r["source"] == "ours")
    assert row["delta"]["sequential"]["state"] == "decided"
    # CSV carries the rule's reading beside the plain paired interval
    lines = list(csv.DictReader(io.StringIO(report_table("1", runs=tmp_path, out="-", fmt="csv").text)))
    fe = next(r for r in lines if r["Method"] == "Focal-EIOU" and r["source"] == "ours")
    assert fe["delta_AP_sequential_state"] == "decided" and int(fe["delta_AP_sequential_seeds"]) == n
    assert float(fe["delta_AP_rci_low"]) == pytest.approx(lk.low) and float(fe["delta_AP_rci_high"]) == pytest.approx(lk.high)
    base = next(r for r in lines if r["Method"] == "Baseline" and r["source"] == "ours")
    assert base["delta_AP_sequential_state"] == "" and base["delta_AP_rci_low"] == ""

    # Run again: nothing is trained, the verdict stands.
    again = rounds.run_until_decided(BASE, runs_root=tmp_path, echo=lambda m: None)
    assert len(fake.trained) == 2 * n and again.outcome.last == res.outcome.last


def test_undecided_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(rounds, "launch", FakeTrainer(_ap_none))
    res = rounds.run_until_decided(BASE, runs_root=tmp_path, echo=lambda m: None)
    assert res.outcome.state == "undecided" and res.record["seeds"] == 6
    md = to_markdown(report_table("1", runs=tmp_path, out="-").result)
    assert "undecided after 6 seeds (the cap" in md


def test_interrupted_sweep_resumes_without_rerunning_a_finished_seed(tmp_path, monkeypatch):
    fake = FakeTrainer(_ap_none)
    calls = {"n": 0}

    def interrupted(plan, **kw):
        calls["n"] += 1
        if calls["n"] == 3:                     # Ctrl-C during the third round
            raise KeyboardInterrupt
        fake(plan, **kw)

    monkeypatch.setattr(rounds, "launch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rounds.run_until_decided(BASE, runs_root=tmp_path, echo=lambda m: None)
    assert read_decision(tmp_path / "loss-seed")["seeds"] == 5
    monkeypatch.setattr(rounds, "launch", fake)
    res = rounds.run_until_decided(BASE, runs_root=tmp_path, echo=lambda m: None)
    assert res.record["seeds"] == 6 and res.record["looks"] == [3, 4, 5, 6]
    assert len(fake.trained) == len(set(fake.trained)) == 12     # every (row, seed) trained once


def test_failed_seed_is_rerun_then_counted_missing_in_both_rows(tmp_path, monkeypatch):
    fake = FakeTrainer(_ap_none, fail=[("focal_eiou", 1), ("baseline", 4)])
    fake.fail_n = {("focal_eiou", 1): 1, ("baseline", 4): 2}    # seed 1 recovers, seed 4 fails twice
    monkeypatch.setattr(rounds, "launch", fake)
    res = rounds.run_until_decided(BASE, runs_root=tmp_path, echo=lambda m: None)
    assert res.record["retried"] == [1, 4] and res.record["missing"] == [4]
    assert 4 not in res.diffs and 1 in res.diffs and len(res.diffs) == 5
    assert res.outcome.state == "undecided"
    assert res.record["looks"] == [3, 4, 5]                       # 4 pairs after 5 seeds: no new look
    md = to_markdown(report_table("1", runs=tmp_path, out="-").result)
    assert "Seeds 4 failed twice and count as missing in both rows" in md


def test_changed_settings_are_refused_after_the_first_look(tmp_path, monkeypatch):
    monkeypatch.setattr(rounds, "launch", FakeTrainer(_ap_none))
    rounds.run_until_decided(BASE, runs_root=tmp_path, echo=lambda m: None)
    with pytest.raises(UserError, match="boundaries are fixed before the first look"):
        rounds.run_until_decided([*BASE[:-1], "sweep.max_seeds=8"], runs_root=tmp_path, echo=lambda m: None)


@pytest.mark.parametrize("extra, msg", [
    (["seed=0,1"], "chooses the seeds"),
    (["sweep.compare=giou:baseline"], "must both be values of one swept key"),
])
def test_bad_input_is_refused_before_anything_runs(tmp_path, monkeypatch, extra, msg):
    monkeypatch.setattr(rounds, "launch", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(UserError, match=msg):
        rounds.run_until_decided([*BASE, *extra], runs_root=tmp_path, echo=lambda m: None)
    assert not (tmp_path / "loss").exists()


def test_cli_needs_wait_and_compare(tmp_path):
    r = run_cli(["sweep", *BASE, "--runs-root", str(tmp_path)], cwd=tmp_path)
    assert r.returncode == 2 and "add --wait" in r.stderr
    r = run_cli(["sweep", "loss=baseline,focal_eiou", "sweep.seeds=auto", "--runs-root", str(tmp_path), "--wait"],
                cwd=tmp_path)
    assert r.returncode == 2 and "needs sweep.compare=A:B" in r.stderr
    assert not any(tmp_path.iterdir())


def test_real_local_sweep_until_decided(tmp_path):
    """Four real smoke trainings (two seeds, one look): the CLI path, the record and the report."""
    args = ["sweep", "loss=baseline,focal_eiou", "data=shapes_tiny", "schedule=smoke", "sweep.seeds=auto",
            "sweep.compare=focal_eiou:baseline", "sweep.min_seeds=2", "sweep.max_seeds=2",
            "launcher.max_parallel=2", "--runs-root", str(tmp_path), "--wait"]
    r = run_cli(args, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "focal_eiou - baseline (AP)" in r.stdout
    rec = read_decision(tmp_path / "loss-seed")
    assert rec["seeds"] == 2 and rec["looks"] == [2] and rec["state"] in ("decided", "undecided")
    rep = run_cli(["report", "--table", "1", "--runs-root", str(tmp_path), "--out", "-"], cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "Seeds until decided (Focal-EIOU vs Baseline, sweep loss-seed)" in rep.stdout


def test_dry_run_shows_the_first_round(tmp_path):
    r = run_cli(["sweep", *BASE, "--runs-root", str(tmp_path), "--dry-run"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "6 job(s)" in r.stdout and "seed=2" in r.stdout and "seed=3" not in r.stdout
    assert not any(tmp_path.iterdir())
