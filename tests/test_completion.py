"""Shell completion (bbrctl.cli.complete): overrides, presets, schema keys and sweep names,
as the functions give them and through Typer's real completion protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bbrctl.cli.complete import override_candidates, sweep_candidates


def test_a_group_completes_to_its_options():
    got = override_candidates("loss=focal")
    assert got == sorted(got) and "loss=focal_eiou" in got and "loss=focal_l1" in got
    assert all(g.startswith("loss=focal") for g in got)
    assert override_candidates("model=re") == ["model=retinanet"]


def test_presets_complete_after_plus_experiment():
    got = override_candidates("+experiment=table1")
    assert {"+experiment=table1", "+experiment=table1_decide", "+experiment=table1_seeds"} <= set(got)
    assert override_candidates("experiment=table1") == []      # a preset is added with +


def test_keys_complete_from_the_schema():
    assert "schedule.max_iter=" in override_candidates("schedule.max")
    assert override_candidates("gam") == ["gamma="]
    assert {"loss=", "+experiment=", "seed="} <= set(override_candidates(""))
    assert "+backbone.dcn_stages=" in override_candidates("+backbone.dcn")


def test_a_user_config_dir_adds_its_options(tmp_path):
    (tmp_path / "loss").mkdir()
    (tmp_path / "loss" / "my_iou.yaml").write_text("name: my_iou\n")
    assert override_candidates("loss=my", [str(tmp_path)]) == ["loss=my_iou"]


def test_sweeps_complete_from_the_runs_root(tmp_path):
    for name, is_sweep in (("gamma", True), ("gamma_old", True), ("graphs", False)):
        (tmp_path / name).mkdir()
        if is_sweep:
            (tmp_path / name / "sweep.json").write_text("{}")
    assert sweep_candidates("g", tmp_path) == ["gamma", "gamma_old"]
    assert sweep_candidates("x", tmp_path / "missing") == []


def _complete(words: str, cwd, extra_env=None) -> list[str]:
    env = {**os.environ, "_BBRCTL_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - 1), **(extra_env or {})}
    out = subprocess.run([sys.executable, "-m", "bbrctl"], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=60)
    return out.stdout.split()


def test_the_shell_gets_them_through_typers_completion_protocol(tmp_path):
    assert "loss=focal_eiou" in _complete("bbrctl sweep loss=focal_e", tmp_path)
    assert "+experiment=zoo" in _complete("bbrctl train +experiment=z", tmp_path)
    (tmp_path / "runs" / "gamma").mkdir(parents=True)
    (tmp_path / "runs" / "gamma" / "sweep.json").write_text(json.dumps({}))
    assert _complete("bbrctl status ga", tmp_path) == ["gamma"]
