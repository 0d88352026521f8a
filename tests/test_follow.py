"""Waiting on a sweep: the poll interval backs off while nothing changes and snaps back on a
change; without a terminal, a periodic summary line shows a long run is alive."""

from __future__ import annotations

import io

import pytest

import importlib

F = importlib.import_module("bbrctl.launch.follow")
from bbrctl.status import render as R
from bbrctl.status.inspect import JobState


def job(state="running", it=5, active=True):
    return JobState(name="a", signature="s1", dir=None, state=state, active=active, iteration=it, max_iter=10)


def fake_jobs(seq):
    it = iter(seq)
    return lambda *a, **k: next(it)


def test_poll_backs_off_while_quiet_and_resets_on_change(monkeypatch, tmp_path):
    seq = [[job(it=1)]] * 5 + [[job(it=2)]] * 3 + [[job("done", 10, active=False)]]
    monkeypatch.setattr(F, "sweep_jobs", fake_jobs(seq))
    sleeps = []
    monkeypatch.setattr(F.time, "sleep", sleeps.append)
    out = F.follow("x", tmp_path, sigs=["s1"], progress=False, poll_s=2.0, max_poll_s=5.0)
    assert out.get("done") == 1
    assert sleeps == pytest.approx([2.0, 3.0, 4.5, 5.0, 5.0, 2.0, 3.0, 4.5])


def test_a_log_gets_a_heartbeat_line_with_running_progress(monkeypatch, tmp_path):
    monkeypatch.setattr(R, "sweep_jobs", lambda *a, **k: [job(it=7), JobState(name="b", signature="s2", dir=None,
                                                                                state="pending", active=True)])
    monkeypatch.setattr(R.ProgressView, "HEARTBEAT_S", 0.0)
    stream = io.StringIO()
    view = R.ProgressView("table1", tmp_path, ["s1", "s2"], stream=stream)
    view.refresh(force=True)
    view.refresh(force=True)
    lines = stream.getvalue().splitlines()
    beats = [ln for ln in lines if "sweep table1:" in ln]
    assert len(beats) == 2 and beats[0].endswith("running: a 7/10")
    # State changes are printed once, heartbeats every time they are due.
    assert sum("a-s1: running" in ln for ln in lines) == 1
