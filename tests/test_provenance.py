"""Provenance: every run records the software and machine behind it (job.json at creation,
results.json at the end) and `bbrctl report --format json` carries it per row."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import bbrctl
from bbrctl import provenance, store
from tests.test_train import ONE_STAGE, TINY, cli, only_run_dir

REPO = Path(bbrctl.__file__).resolve().parents[1]


def test_software_names_version_commit_and_libraries():
    sw = provenance.software()
    assert sw["bbrctl"] == bbrctl.__version__ and sw["host"] == socket.gethostname()
    assert sw["python"] == ".".join(map(str, sys.version_info[:3]))
    assert sw["packages"]["torch"] == metadata.version("torch")
    assert sw["packages"]["torchvision"] == metadata.version("torchvision")
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        assert sw["git_commit"] == head and isinstance(sw["git_dirty"], bool)
    else:
        assert sw["git_commit"] is None


def test_software_reads_no_torch():
    code = ("import sys; from bbrctl import provenance; provenance.software(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prepared_run_dir_records_the_software(tmp_path):
    from bbrctl.config import compose, signature, to_container

    cfg = to_container(compose(["data=shapes_tiny"]))
    store.prepare_run_dir(tmp_path / "run", cfg, signature=signature(cfg), name="t", overrides=[])
    job = store.read_job(tmp_path / "run")
    assert job["env"] == json.loads(json.dumps(provenance.software()))


@pytest.mark.slow
def test_a_trained_run_records_its_runtime_and_the_report_carries_it(tmp_path, capsys):
    import torch

    code, out, err = cli(capsys, "train", "model=retinanet", "loss=focal_eiou", *ONE_STAGE, *TINY,
                         f"runs_root={tmp_path}", "--no-progress")
    assert code == 0, err
    run_dir = only_run_dir(tmp_path)
    env = store.read_results(run_dir)["env"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["threads"] >= 1
    assert env["bbrctl"] == bbrctl.__version__ and env["packages"]["torch"] == metadata.version("torch")
    code, out, err = cli(capsys, "report", "--table", "1", "--runs-root", str(tmp_path), "--format", "json",
                         "--out", "-")
    assert code == 0, err
    row = next(r for r in json.loads(out)["rows"] if r["source"] == "ours" and r["n"] == 1)
    assert row["environments"] == [env]
