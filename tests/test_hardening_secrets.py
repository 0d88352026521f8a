"""Hardening, secrets by construction: launcher.setup lines appear in no file but the SLURM
batch script (owner-only), in no W&B config, recorded command line or echo (errors included).

The setup lines below hold secrets in forms bbrctl.redact's patterns miss (a quoted `wandb
login`, names outside its list, a .netrc here-doc, `curl -u`, a header token) and one plain
line: none of them may appear anywhere else, whether or not it looks secret.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bbrctl import config as C
from bbrctl.redact import public, public_overrides, setup_digest, withhold_override, withhold_setup
from bbrctl.store import prepare_run_dir

SECRET_BITS = ["WLOGINq1w2e3r4", "KAGGLEa9s8d7f6", "MYSQLz1x2c3v4", "NETRCp0o9i8u7", "CURLm5n4b3v2",
               "HEADERk8j7h6g5", "PLAINSETUPLINE"]
LINES = [f'wandb login "{SECRET_BITS[0]}"', f"export KAGGLE_KEY={SECRET_BITS[1]}", f"MYSQL_PWD={SECRET_BITS[2]} true",
         "cat > $HOME/.netrc-test <<EOF", f"machine api.example.org login me password {SECRET_BITS[3]}", "EOF",
         f"curl -u me:{SECRET_BITS[4]} -H 'X-Api: {SECRET_BITS[5]}' file:///dev/null || true", f"echo {SECRET_BITS[6]}"]
SETUP = "launcher.setup=[" + ",".join(json.dumps(x) for x in LINES) + "]"
TINY = ["data=shapes_tiny", "schedule=smoke"]


def _leaks(root: Path, allowed: set[Path] = frozenset()) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and p not in allowed:
            data = p.read_bytes()
            found += [f"{p}: {b}" for b in SECRET_BITS if b.encode() in data]
    return found


def _cli(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "bbrctl", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture()
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = --test-only ]; then cat > /dev/null; exit 0; fi
        printf '%s\\n' "$@" > {tmp_path}/submitted.argv
        echo 900
    """))
    for name in ("squeue", "scontrol", "sacct"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_issue_probe_setup_lines_only_in_the_owner_only_batch_script(tmp_path, fake_slurm):
    work = tmp_path / "work"
    work.mkdir()
    out = _cli(["sweep", "loss=giou,eiou", *TINY, "launcher=slurm", SETUP, "--name", "sec"], work, fake_slurm)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not any(b in out.stdout + out.stderr for b in SECRET_BITS)
    script = Path((tmp_path / "submitted.argv").read_text().splitlines()[-1])
    assert all(line in script.read_text() for line in LINES)
    assert stat.S_IMODE(script.stat().st_mode) == 0o600
    assert _leaks(tmp_path, {script}) == []
    # What stands for them: how many lines and a hash, in config.yaml, job.json and sweep.json.
    digest = setup_digest(LINES)
    sweep = work / "runs" / "sec"
    manifest = (sweep / "sweep.json").read_text()
    assert "launcher.setup=<withheld, sha256 " in manifest
    for run in (p for p in sweep.iterdir() if (p / "job.json").is_file()):
        assert digest in (run / "config.yaml").read_text()
        job = json.loads((run / "job.json").read_text())
        assert job["config"]["launcher"]["setup"] == [digest]
        # The config read back still validates: training gets all it needs.
        C.validate(job["config"])


@pytest.mark.parametrize("argv", [
    ["config", "launcher=slurm"],
    ["sweep", "seed=0,1", "launcher=slurm", "--dry-run"],
])
def test_echoes_never_print_setup_lines(argv, tmp_path, fake_slurm):
    out = _cli([*argv, *TINY, SETUP, "--runs-root", str(tmp_path / "runs")] if argv[0] == "sweep"
               else [*argv, *TINY, SETUP], tmp_path, fake_slurm)
    assert out.returncode == 0, out.stderr
    assert not any(b in out.stdout + out.stderr for b in SECRET_BITS), out.stdout
    assert _leaks(tmp_path) == []


@pytest.mark.parametrize("bad", [
    "launcher.setup=5",
    f"launcher.setup=[[export TOKEN={SECRET_BITS[1]}]]",
    f"launcher.setup={{a: {SECRET_BITS[1]}}}",
    f'launcher.setup=[1,"export X={SECRET_BITS[1]}"]',
    f'launcher.setup=["{SECRET_BITS[1]}",',
    f"launcher.setup={SECRET_BITS[1]},b",
    f"++launcher.setup=[[{SECRET_BITS[1]}]]",
])
@pytest.mark.parametrize("cmd", ["config", "sweep", "train"])
def test_an_invalid_setup_is_one_line_without_its_value(bad, cmd, tmp_path, fake_slurm):
    argv = [cmd, *TINY, "launcher=slurm", bad]
    if cmd == "sweep":
        argv += ["seed=0,1", "--dry-run"]
    out = _cli([*argv, "--runs-root", str(tmp_path / "runs")] if cmd != "config" else argv, tmp_path, fake_slurm)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert SECRET_BITS[1] not in out.stderr + out.stdout, out.stderr
    assert not (tmp_path / "runs").exists()


def test_an_invalid_setup_beside_another_error_names_the_other_one(tmp_path):
    out = _cli(["config", "launcher=slurm", f'launcher.setup=["{SECRET_BITS[1]}"]', "loss=nope"], tmp_path)
    assert out.returncode == 2 and "loss" in out.stderr and SECRET_BITS[1] not in out.stderr


def test_recorded_overrides_and_wandb_config_hold_the_digest_only(tmp_path):
    from bbrctl.detection.tracking.wandb_run import run_config

    cfg = C.to_container(C.compose([*TINY, "launcher=slurm", SETUP]))
    run = tmp_path / "runs" / "train" / "x-1234567890"
    prepare_run_dir(run, cfg, signature=C.signature(cfg), name="x", overrides=[*TINY, SETUP, f"+{SETUP}"])
    assert _leaks(tmp_path) == []
    job = json.loads((run / "job.json").read_text())
    assert job["overrides"][-1].startswith("+launcher.setup=<") and "withheld" in job["overrides"][-1]
    wb = run_config(cfg, job, run)
    assert not any(b in json.dumps(wb) for b in SECRET_BITS)
    assert not any(b in " ".join(public_overrides(["train", SETUP, f"~{SETUP}", "launcher.setup.0=x"]))
                   for b in SECRET_BITS)


def test_the_digest_is_idempotent_schema_valid_and_tells_setups_apart():
    cfg = {"launcher": {"name": "slurm", "setup": LINES}, "nested": [{"launcher": {"setup": ["a"]}}]}
    once = withhold_setup(cfg)
    assert withhold_setup(once) == once and public(once) == public(cfg)
    assert once["launcher"]["setup"] == [setup_digest(LINES)] and cfg["launcher"]["setup"] == LINES
    assert setup_digest(LINES) != setup_digest(LINES[:-1])
    assert withhold_setup({"launcher": {"setup": []}}) == {"launcher": {"setup": []}}
    assert withhold_override("launcher.name=slurm") == "launcher.name=slurm"
    assert withhold_override("launcher.setupx=1") == "launcher.setupx=1"
