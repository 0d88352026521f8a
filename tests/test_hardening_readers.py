"""Hardening, one schema-checked reader per file: report, status, sweep, train, eval and the
figures read results/status/job/sweep.json, checkpoints and simulation outputs through the same
checks, so a damaged or hand-made file is one line (or a row marked damaged), never a number,
a traceback or a run that stays "done" forever.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli

from bbrctl import config as C
from bbrctl.errors import UserError
from bbrctl.report.collect import collect, load_outcome
from bbrctl.report.fake_runs import make_config, make_run
from bbrctl.store import RunDir, atomic_write_json, prepare_run_dir, read_results, write_results
from bbrctl.store.rundir import DamagedFile

TINY = ["data=shapes_tiny", "schedule=smoke", "model.min_size=64", "model.max_size=64"]


def one_line(out, code=2, needle=""):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert lines and lines[-1].startswith("bbrctl: error: ") and needle in lines[-1], out.stderr
    return lines[-1]


# --------------------------------------------------------------------------- results / status


@pytest.mark.parametrize("metrics", [{"bbox": {"AP": 1e9}}, {"bbox": {"AP": -5}}, {"bbox": {"AP": "31"}},
                                     {"bbox": {"AP": True}}, {}, {"bbox": {}}, {"bbox": {"AP50": 3.0}}])
def test_issue_probe_report_never_prints_a_number_status_calls_damaged(metrics, tmp_path):
    runs = tmp_path / "runs"
    good = make_run(runs, make_config("baseline"), ap=20.0)
    bad = make_run(runs, make_config("eiou"), ap=21.5)
    RunDir(bad).results.write_text(json.dumps({"status": "done", "metrics": metrics}))
    with pytest.raises(DamagedFile):
        read_results(bad)
    col = collect(runs)
    states = {r.dir: load_outcome(r).state for r in col.runs}
    assert states[good] == "done" and states[bad] == "incomplete"
    out = run_cli(["report", "--table", "1", "--runs-root", str(runs), "--out", "-", "--format", "json"], tmp_path)
    assert out.returncode in (0, 2) and "Traceback" not in out.stderr, out.stderr
    assert "1000000000" not in out.stdout and "1e+09" not in out.stdout


def test_empty_metrics_are_not_done_forever(tmp_path):
    run = make_run(tmp_path / "runs", make_config("eiou"), ap=21.5)
    RunDir(run).results.write_text(json.dumps({"status": "done", "metrics": {}}))
    from bbrctl import status as S

    (job,) = S.sweep_jobs(run.parent)
    assert job.state == "failed" and "no AP value" in job.note and "re-run" in job.note
    with pytest.raises(ValueError):
        write_results(run, "done", signature="x", metrics={})          # no writer can make one either


@pytest.mark.parametrize("name", ["status.json", "results.json", "job.json"])
def test_a_directory_where_a_json_file_belongs_is_damaged_not_a_traceback(name, tmp_path):
    run = make_run(tmp_path / "runs", make_config("eiou"), state="running")
    p = run / name
    p.unlink(missing_ok=True)
    p.mkdir()
    for argv in (["status"], ["status", "table1"], ["report", "--table", "1", "--out", "-"]):
        out = run_cli([*argv, "--runs-root", str(tmp_path / "runs")], tmp_path)
        assert out.returncode in (0, 2) and "Traceback" not in out.stderr, out.stderr


# --------------------------------------------------------------------------- sweep.json

MANIFESTS = [
    {"jobs": {"SIG": {"dir": "D", "index": None}, "0ther": {"dir": "D", "index": 0}}},   # the issue's probe
    {"jobs": {"SIG": []}},
    {"jobs": {"SIG": {"dir": "D", "index": 0}}, "launches": [{"id": "one", "jobs": ["SIG"]}]},
    {"jobs": {"SIG": {"dir": "D", "index": 0}}, "launches": [{"id": 1, "time": "noon", "jobs": ["SIG"]}]},
    {"jobs": {"SIG": {"dir": "D", "index": 0}}, "launches": [{"id": 1, "jobs": [["SIG"]]}]},
    {"jobs": {"SIG": {"dir": "D", "index": 0}}, "launches": [{"id": 1, "jobs": ["SIG"], "tasks": {"SIG": "x"}}]},
    {"jobs": {"SIG": {"dir": "D", "index": 0}}, "launches": [{"id": 1, "jobs": ["SIG"], "pid": 5, "pid_start": "t"}]},
    {"jobs": {"SIG": {"dir": "..", "index": 0}}},
    {"jobs": {"SIG": {"dir": "D", "index": 0}}, "created": "yesterday"},
    {"jobs": {"SIG": {"dir": "D", "index": 0}}, "launches": [1]},
]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[json.dumps(m)[:60] for m in MANIFESTS])
def test_a_bad_sweep_json_is_one_line_and_other_sweeps_still_show(manifest, tmp_path):
    root = tmp_path / "runs"
    good = make_run(root, {**make_config("baseline")}, ap=20.0)
    plan_dir = root / "s"
    cfg = C.to_container(C.compose(["seed=0"]))
    sig = C.signature(cfg)
    run = plan_dir / f"seed=0-{sig}"
    prepare_run_dir(run, cfg, signature=sig, name="seed=0", sweep="s")
    text = json.dumps(manifest).replace("SIG", sig).replace('"D"', json.dumps(run.name))
    (plan_dir / "sweep.json").write_text(text)
    out = run_cli(["status", "--runs-root", str(root), "--json"], tmp_path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert good.parent.name in out.stdout
    for argv in (["status", "s"], ["sweep", "seed=0", "--name", "s", "--dry-run"], ["sweep", "--cancel", "s"]):
        out = run_cli([*argv, "--runs-root", str(root)], tmp_path)
        assert "Traceback" not in out.stderr, out.stderr
        if out.returncode != 0:
            one_line(out, 2, "sweep.json")


# --------------------------------------------------------------------------- checkpoints


def _payload_variants():
    import torch

    return {
        "float payload": lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).float(),
        "2-D payload": lambda b: torch.frombuffer(bytearray(b[: len(b) // 2 * 2]), dtype=torch.uint8).reshape(2, -1),
        "bf16 payload": lambda b: torch.zeros(4, dtype=torch.bfloat16),
        "int64 payload": lambda b: torch.frombuffer(bytearray(b[: len(b) // 8 * 8]), dtype=torch.int64),
    }


@pytest.mark.parametrize("variant", ["float payload", "2-D payload", "bf16 payload", "int64 payload",
                                     "iteration is a string", "model is a list"])
def test_a_valid_outer_format_with_a_bad_payload_falls_back_to_prev(variant, tmp_path):
    torch = pytest.importorskip("torch")
    import hashlib
    import io

    from bbrctl.detection.train import checkpoint as ck

    run = tmp_path / "run"
    good = {"iteration": 3, "model": {"w": torch.ones(2)}, "signature": "s"}
    ck.save_checkpoint(ck.checkpoint_path(run), good)
    ck.save_checkpoint(ck.checkpoint_path(run), {**good, "iteration": 4})
    assert ck.previous_path(run).is_file()
    if variant in ("iteration is a string", "model is a list"):
        bad = {**good, "iteration": "4"} if variant.startswith("iteration") else {**good, "model": [1]}
        inner = io.BytesIO()
        torch.save(bad, inner)
        b = inner.getvalue()
        payload = torch.frombuffer(bytearray(b), dtype=torch.uint8)
    else:
        b = ck.encode({**good, "iteration": 4})
        payload = _payload_variants()[variant](b)
        b = payload.contiguous().view(-1).numpy().tobytes() if payload.dtype != torch.bfloat16 else b"\0" * 8
    outer = {"format": ck.FORMAT, "sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b), "iteration": 4,
             "payload": payload}
    torch.save(outer, ck.checkpoint_path(run))
    notes = []
    state = ck.load_latest(run, note=notes.append)
    assert state["iteration"] == 3 and notes and "prev.pt" in notes[0]


def test_eval_and_detections_refuse_a_checkpoint_of_another_config(tmp_path):
    torch = pytest.importorskip("torch")
    from bbrctl.detection.train import checkpoint as ck

    run = tmp_path / "runs" / "train" / "job-1234567890"
    cfg = C.to_container(C.compose(TINY))
    prepare_run_dir(run, cfg, signature=C.signature(cfg), name="job")
    ck.save_checkpoint(ck.checkpoint_path(run), {"iteration": 1, "model": {"w": torch.ones(1)}, "signature": "0ther0ther"})
    one_line(run_cli(["eval", "--run-dir", str(run), "--device", "cpu"], tmp_path, timeout=300),
             2, "belongs to another config")
    one_line(run_cli(["report", "--figure", "detections", "--run", str(run), "--out", str(tmp_path / "d.png")],
                     tmp_path, timeout=300), 2, "belongs to another config")
    assert not (tmp_path / "d.png").exists() and not RunDir(run).evals.exists()
    with pytest.raises(UserError):
        ck.check_belongs("x", "0ther0ther", run)
    ck.check_belongs("x", None, run)                                   # weights from elsewhere: unsigned
    ck.check_belongs("x", C.signature(cfg), run)


# --------------------------------------------------------------------------- simulation outputs

SIM_DAMAGE = [
    ("summary.json", '{"setup": 2, "losses": ["iou"]}'),
    ("summary.json", '{"setup": 2, "losses": {"iou": {"final_error": "big"}}}'),
    ("summary.json", '{"setup": 2, "losses": {"iou": 5}, "config": []}'),
    ("error_curves.csv", "iteration,iou\n1,2,3,4\nx\n,\n"),
    ("error_curves.csv", "iteration,iou\ninf,1\n"),
    ("iou_quantiles.csv", "loss,iteration,q0\niou\n"),
    ("iou_quantiles.csv", "\x00\xff\xfe garbage"),
    ("error_curves.csv", "iteration,iou\n1,nan\n2,inf\n"),
]


@pytest.mark.parametrize("name, content", SIM_DAMAGE, ids=[f"{n}:{c[:24]}" for n, c in SIM_DAMAGE])
def test_damaged_simulation_outputs_do_not_crash_figures_7_8(name, content, tmp_path):
    from bbrctl.report.main import report_figure
    from bbrctl.store import atomic_write_text

    sim = tmp_path / "runs" / "simulate" / "setup2-abc"
    atomic_write_json(sim / "summary.json", {"setup": 2, "config": {"iterations": 3},
                                             "losses": {"iou": {"final_error": 1.0, "mean_iou": 0.5}}})
    atomic_write_text(sim / "error_curves.csv", "iteration,iou\n0,10\n3,5\n")
    atomic_write_text(sim / "iou_quantiles.csv", "loss,iteration,q0,q50,q100,mean\niou,0,0.1,0.5,1,0.5\n")
    (sim / name).write_bytes(content.encode("utf-8", "surrogateescape") if "\x00" not in content
                             else b"\x00\xff\xfe garbage")
    for fig in ("7", "8"):
        try:
            report_figure(fig, runs=tmp_path / "runs", out_dir=tmp_path / "out")
        except UserError as e:
            assert "\n" not in str(e)
