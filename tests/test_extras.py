"""The core install (no wandb, no scipy) trains and reports; a feature that needs an extra is
refused in one line naming it. The packages are hidden by an import hook in a fresh
interpreter, as if they were not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_train import ONE_STAGE, TINY

HIDE = textwrap.dedent("""\
    import sys
    class _Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("wandb", "scipy"):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None
    sys.meta_path.insert(0, _Hide())
""")


@pytest.fixture
def core_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
            "WANDB_MODE": "", "OMP_NUM_THREADS": "1"}


def bbrctl(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "bbrctl", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_hook_really_hides_them(core_env, tmp_path):
    out = subprocess.run([sys.executable, "-c", "import wandb"], env=core_env, capture_output=True, text=True)
    assert out.returncode != 0 and "No module named 'wandb'" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["wandb.mode=offline"], "wandb.mode=offline needs the wandb package, which is not installed; install it with "
                             "pip install 'bbrctl[wandb]'"),
    (["model=detr"], "model=detr needs the scipy package, which is not installed; install it with "
                     "pip install 'bbrctl[detr]'"),
])
@pytest.mark.parametrize("command", [["config"], ["sweep", "seed=0,1"], ["train"]])
def test_a_feature_without_its_extra_is_one_line_and_creates_nothing(core_env, tmp_path, command, args, message):
    out = bbrctl([*command, *args, "data=shapes_tiny", f"runs_root={tmp_path / 'runs'}"], tmp_path, core_env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"bbrctl: error: {message} (or pip install "
                                               f"{'wandb' if 'wandb' in message else 'scipy'})"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_core_install_trains_and_reports(core_env, tmp_path):
    runs = tmp_path / "runs"
    out = bbrctl(["train", "model=retinanet", "loss=focal_eiou", *ONE_STAGE, *TINY, f"runs_root={runs}",
                  "--no-progress"], tmp_path, core_env)
    assert out.returncode == 0, out.stderr
    out = bbrctl(["report", "--table", "1", "--runs-root", str(runs), "--format", "json", "--out", "-"], tmp_path,
                 core_env)
    assert out.returncode == 0, out.stderr
    rows = [r for r in json.loads(out.stdout)["rows"] if r["source"] == "ours" and r["n"] == 1]
    assert len(rows) == 1 and rows[0]["metrics"]["AP"]["mean"] is not None
