"""Hardening, the bad-input tail: broken YAML in --config-dir (and in a run's config.yaml),
anchor bombs, OS errors on paths, unbounded values, rich markup in report titles, simulate's
numbers and runs root, `report --wandb` with W&B off. Each ends in one line and exit 2 (or a
plain success), with nothing written.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from helpers import run_cli

from bbrctl import config as C
from bbrctl.report.fake_runs import make_config, make_run
from bbrctl.store import prepare_run_dir

BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
                 + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 12)]) + "\n"
YAMLS = {
    "unclosed bracket": "loss: {name: [eiou\n",
    "tab indentation": "loss:\n\tname: eiou\n",
    "duplicate keys": "loss:\n  name: eiou\n  name: giou\n",
    "random bytes": bytes(range(128, 256)) * 3,
    "deep nesting": "a: " + "[" * 3000 + "]" * 3000 + "\n",
    "python object": "x: !!python/object/apply:os.system ['touch {canary}']\n",
    "anchor bomb": BOMB,
    "recursive alias": "a: &a [*a]\n",
}


def one_line(out, needle=""):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    assert lines[-1].startswith("bbrctl: error: ") and needle in lines[-1], out.stderr
    return lines[-1]


@pytest.mark.parametrize("kind", list(YAMLS))
@pytest.mark.parametrize("cmd", ["config", "sweep"])
def test_broken_yaml_in_a_config_dir_is_one_line(kind, cmd, tmp_path):
    canary = tmp_path / "ran"
    cdir = tmp_path / "conf"
    (cdir / "loss").mkdir(parents=True)
    body = YAMLS[kind]
    data = body if isinstance(body, bytes) else body.replace("{canary}", str(canary)).encode()
    (cdir / "loss" / "bad.yaml").write_bytes(data)
    argv = [cmd, "--config-dir", str(cdir), "loss=bad"]
    if cmd == "sweep":
        argv += ["seed=0,1", "--dry-run", "--runs-root", str(tmp_path / "runs")]
    t0 = time.monotonic()
    out = run_cli(argv, tmp_path, timeout=120)
    one_line(out, "bad.yaml")
    assert time.monotonic() - t0 < 60 and not canary.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["anchor bomb", "duplicate keys", "python object", "random bytes"])
def test_a_crafted_config_yaml_in_a_run_dir_is_one_line(kind, tmp_path):
    run = tmp_path / "job"
    cfg = C.to_container(C.compose(["data=shapes_tiny", "schedule=smoke"]))
    prepare_run_dir(run, cfg, signature=C.signature(cfg), name="job")
    body = YAMLS[kind]
    (run / "config.yaml").write_bytes(body if isinstance(body, bytes) else body.replace("{canary}", str(tmp_path / "x")).encode())
    one_line(run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path), "config.yaml")


def test_yaml_bounds_are_generous_for_real_configs():
    from bbrctl.store.yamlcheck import load_text

    shipped = Path(C.package_config_dir())
    for p in shipped.rglob("*.yaml"):
        load_text(p.read_text(encoding="utf-8"), str(p))
    assert load_text("a: &x {b: 1}\nc: *x\nd: {<<: *x, e: 2}\n", "t") == {"a": {"b": 1}, "c": {"b": 1},
                                                                          "d": {"b": 1, "e": 2}}


NAME_MAX_PLUS = "x" * 300


@pytest.mark.parametrize("argv", [
    ["report", "--table", "1", "--out", "/proc/x.md"],
    ["report", "--table", "1", "--out", f"{{tmp}}/{NAME_MAX_PLUS}.md"],
    ["sweep", "seed=0,1", "--runs-root", "/dev/null"],
    ["sweep", "seed=0,1", "--runs-root", f"{{tmp}}/{NAME_MAX_PLUS}"],
    ["simulate", "--setup", "2", "--points", "2", "--iterations", "2", "--no-plots", "-q", "--out",
     f"{{tmp}}/{NAME_MAX_PLUS}"],
    ["status", "--runs-root", "/dev/null/x"],
])
def test_os_errors_on_paths_are_one_line(argv, tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, make_config("baseline"), ap=20.0)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--runs-root" not in argv:
        argv += ["--runs-root", str(runs)]
    out = run_cli(argv, tmp_path)
    assert "Traceback" not in out.stderr, out.stderr
    if out.returncode != 0:
        one_line(out)
    assert not any(p.name.startswith("xxxx") for p in tmp_path.iterdir())


@pytest.mark.parametrize("override, needle", [
    ("schedule.max_iter=100000000000000000000000", "2147483647"),
    ("schedule.max_iter=1e23", "schedule.max_iter"),
    ("schedule.steps=[1,100000000000000000000]", "schedule.steps"),
    ("sweep.params=5", "sweep.params"),
])
def test_unbounded_values_are_bounded_in_the_schema(override, needle, tmp_path):
    one_line(run_cli(["config", "data=shapes_tiny", override], tmp_path), needle)


def test_rich_markup_in_a_report_title_is_printed_as_text():
    from rich.console import Console

    from bbrctl.report.main import _rich_simple

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    _rich_simple("boom [/bold] [red]x", ["[/i]col", "b"], [["[/x]", "1"]], ["[/f]"], ["[bold"], console=console)
    text = buf.getvalue()
    assert "boom [/bold]" in text and "[red]x" in text and "[/i]col" in text


@pytest.mark.parametrize("args, needle", [
    (["--beta", "nan"], "--beta"), (["--beta", "inf"], "--beta"), (["--beta", "-1"], "--beta"),
    (["--gamma", "nan"], "--gamma"), (["--points", "100000000000"], "box pairs"),
    (["--points", "100000"], "box pairs"),
])
def test_simulate_refuses_nan_and_allocation_sized_inputs(args, needle, tmp_path):
    out = run_cli(["simulate", "--setup", "1", "--iterations", "2", "--no-plots", "-q", *args,
                   "--out", str(tmp_path / "sim")], tmp_path)
    one_line(out, needle)
    assert not (tmp_path / "sim").exists()


def test_simulate_honours_the_runs_root(tmp_path):
    for argv, env_root in ((["--runs-root", str(tmp_path / "a")], None), ([], tmp_path / "b")):
        env = None
        if env_root is not None:
            import os

            env = {**os.environ, "BBRCTL_RUNS_ROOT": str(env_root)}
        out = run_cli(["simulate", "--setup", "2", "--points", "2", "--iterations", "2", "--no-plots", "-q", *argv],
                      tmp_path, env=env)
        assert out.returncode == 0, out.stderr
    assert list((tmp_path / "a" / "simulate").iterdir()) and list((tmp_path / "b" / "simulate").iterdir())
    assert not (tmp_path / "runs").exists()
    out = run_cli(["report", "--figure", "8", "--runs-root", str(tmp_path / "a"), "--out", str(tmp_path / "f8.png")],
                  tmp_path)
    assert out.returncode == 0, out.stderr


def test_report_wandb_with_wandb_off_does_not_claim_it_logged(tmp_path):
    import os

    runs = tmp_path / "runs"
    make_run(runs, make_config("baseline"), ap=20.0)
    out = run_cli(["report", "--table", "1", "--runs-root", str(runs), "--out", "-", "--wandb"], tmp_path,
                  env={**os.environ, "WANDB_MODE": "disabled"})
    assert out.returncode == 0, out.stderr
    assert "logged to W&B" not in out.stderr and "nothing was logged" in out.stderr
