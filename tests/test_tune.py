"""`bbrctl tune`: the search space grammar, refusals before anything exists, storage, resume after
SIGKILL, pruning through the stop request, status/report of a study, and SLURM arrays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli, wait_until

optuna = pytest.importorskip("optuna")

from bbrctl.errors import UserError  # noqa: E402
from bbrctl.tune import storage, summary  # noqa: E402
from bbrctl.tune.driver import TuneOptions, prepare  # noqa: E402
from bbrctl.tune.space import parse_space  # noqa: E402
from bbrctl.tune.trials import intermediate_values, parse_metric  # noqa: E402

# Tiny data on which a few iterations already find some boxes (AP50 > 0 with a low score threshold).
TINY = ["data=shapes_tiny", "schedule=smoke", "backbone=resnet_tiny", "loss=focal_eiou", "schedule.max_iter=16",
        "schedule.steps=[14]",
        "schedule.base_lr=0.02", "schedule.base_batch_size=2", "schedule.checkpoint_period=0",
        "model.score_thresh=0.01"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def load(study_dir: Path):
    return storage.load_study(study_dir)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


# --------------------------------------------------------------------------- space (no training)

def test_the_grammar_is_hydras_optuna_sweepers():
    space = parse_space(["gamma=interval(0.1,2.0)", "weight=tag(log,interval(0.5,5))", "loss=choice(eiou,focal_eiou)",
                         "seed=range(0,4)", "model.min_size=range(64,129,32)", "schedule.max_iter=8"])
    by = {p.name: p for p in space.params}
    d = space.to_optuna()
    assert isinstance(d["gamma"], optuna.distributions.FloatDistribution) and (d["gamma"].low, d["gamma"].high) == (0.1, 2.0)
    assert d["weight"].log and (d["weight"].low, d["weight"].high) == (0.5, 5.0)
    assert d["loss"].choices == ("eiou", "focal_eiou")
    # range() stops before its stop, as in `bbrctl sweep`
    assert isinstance(d["seed"], optuna.distributions.IntDistribution) and (d["seed"].low, d["seed"].high) == (0, 3)
    assert isinstance(d["model.min_size"], optuna.distributions.IntDistribution) and d["model.min_size"].step == 32
    assert space.fixed == ["schedule.max_iter=8"]
    assert space.overrides({"gamma": 0.3, "weight": 1.5, "loss": "eiou", "seed": 2, "model.min_size": 96}) == [
        "schedule.max_iter=8", "gamma=0.3", "weight=1.5", "loss=eiou", "seed=2", "model.min_size=96"]
    assert by["seed"].grid() == [0, 1, 2, 3] and by["loss"].grid() == ["eiou", "focal_eiou"]


@pytest.mark.parametrize("args, words", [
    (["beta=interval(0.3,1.0)"], "beta=0.3 is not valid"),                 # below FocalL1's 1/e
    (["gamma=interval(-1,2.0)"], "gamma=-1"),
    (["weight=tag(log,interval(0,5))"], "log interval needs a start above 0"),
    (["gamma=interval(2.0,0.1)"], "above its end"),
    (["loss=choice(eiou,nosuchloss)"], "nosuchloss"),
    (["schedule.max_iter=8"], "nothing to search"),
    (["gamma=interval(0.1,2.0)", "--sampler", "grid"], "--sampler grid needs a finite space"),
    (["gamma=interval(0.1,2.0)", "--metric", "XP"], "unknown --metric 'XP'"),
    (["gamma=interval(0.1,2.0)", "--storage", "nfs"], "unknown --storage 'nfs'"),
    (["gamma=interval(0.1,2.0)", "--name", "../x"], "invalid sweep name"),
    (["launcher=choice(local,slurm)"], "cannot be searched"),
    (["model.min_size=interval(64,128)"], "model.min_size=64.0"),         # interval() is a float: use range()
])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, args, words):
    out = run_cli(["tune", *TINY, *args], tmp_path, env=ENV)
    assert out.returncode == 2, out.stdout + out.stderr
    assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_missing_optuna_names_the_extra(monkeypatch):
    from bbrctl.tune import optuna_import

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(UserError, match=r"pip install 'bbrctl\[tune\]'"):
        optuna_import.optuna()


def test_storage_defaults_follow_the_launcher_and_one_kind_per_study(tmp_path):
    st = prepare(TuneOptions(overrides=["gamma=interval(0.1,2.0)", *TINY], runs_root=tmp_path, name="s"))
    assert st.storage == "sqlite" and not st.dir.exists()
    st = prepare(TuneOptions(overrides=["gamma=interval(0.1,2.0)", *TINY, "launcher=slurm"], runs_root=tmp_path,
                             name="s"))
    assert st.storage == "journal"
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / storage.FILES["journal"]).write_text("")
    with pytest.raises(UserError, match="stored in study.journal"):
        prepare(TuneOptions(overrides=["gamma=interval(0.1,2.0)", *TINY], runs_root=tmp_path, name="s",
                            storage="sqlite"))


def test_metric_names_and_intermediate_values(tmp_path):
    assert parse_metric("AP") == ("bbox", "AP") and parse_metric("segm.AP50") == ("segm", "AP50")
    (tmp_path / "metrics.jsonl").write_text(
        '{"iteration": 1, "loss": 2.0}\n{"iteration": 4, "eval": {"bbox": {"AP": 1.5, "AP50": 3.0}}}\n'
        '{"iteration": 8, "eval": {"bbox": {"AP": 2.5}}}\n{"iteration": 12, "ev')     # torn last line
    assert intermediate_values(tmp_path, "AP") == {4: 1.5, 8: 2.5}
    assert intermediate_values(tmp_path, "AP50") == {4: 3.0}


# --------------------------------------------------------------------------- local studies (training)

def _tune_argv(root: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bbrctl", "tune", "gamma=choice(0.25,0.5,1.0)", "weight=choice(1.0,2.5)", *TINY,
            "schedule.max_iter=8", "schedule.steps=[6]", "--sampler", "grid", "--seed", "3", "--trials", "6", "--parallel", "2",
            "--metric", "AP50", "--pruner", "none", "--name", name, "--runs-root", str(root), *extra]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_study_killed_mid_way_and_run_again_ends_with_six_trials_and_the_same_best(tmp_path):
    root = tmp_path / "runs"
    study_dir = root / "kill"
    drv = subprocess.Popen(_tune_argv(root, "kill"), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)

    def one_done():
        if not (study_dir / storage.FILES["sqlite"]).is_file():
            return False
        try:
            return "COMPLETE" in states(load(study_dir))
        except Exception:               # the driver is still creating the schema
            return False

    try:
        assert wait_until(one_done, 400, every=0.5), "no trial finished"
        # One driver per study: a second is refused while the first holds the study.
        second = subprocess.run(_tune_argv(root, "kill"), cwd=tmp_path, env=ENV, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2 and "another `bbrctl tune` is driving study kill" in second.stderr, \
            second.stderr
    finally:
        drv.send_signal(signal.SIGKILL)
        drv.wait(30)
    before = {t.number: (t.params, t.value) for t in load(study_dir).get_trials() if t.state.name == "COMPLETE"}
    assert 1 <= len(before) < 6

    again = subprocess.run(_tune_argv(root, "kill"), cwd=tmp_path, env=ENV, capture_output=True, text=True,
                           timeout=700)
    assert again.returncode == 0, again.stdout + again.stderr
    study = load(study_dir)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    # Every point of the 3 x 2 grid exactly once; what finished before the kill is unchanged.
    assert sorted((t.params["gamma"], t.params["weight"]) for t in trials) == \
        sorted((g, w) for g in (0.25, 0.5, 1.0) for w in (1.0, 2.5))
    for n, (params, value) in before.items():
        assert (trials[n].params, trials[n].value) == (params, value)
    # One run directory per trial, each trained once from iteration 0 (none repeated).
    run_dirs = sorted(p for p in study_dir.iterdir() if (p / "job.json").is_file())
    assert sorted(p.name for p in run_dirs) == sorted(t.user_attrs["run_dir"] for t in trials)
    for d in run_dirs:
        assert (d / "train.log").read_text().count("starting iteration 0") == 1, d
    # The best is the best of what the run directories hold.
    truth = {d.name: json.loads((d / "results.json").read_text())["metrics"]["bbox"]["AP50"] for d in run_dirs}
    assert study.best_value == max(truth.values())
    assert truth[study.best_trial.user_attrs["run_dir"]] == study.best_value

    # Once more (--parallel may change): nothing to do, same best; other arguments: refused in one line.
    third = subprocess.run(_tune_argv(root, "kill", "--parallel", "1"), cwd=tmp_path, env=ENV, capture_output=True,
                           text=True, timeout=120)
    assert third.returncode == 0 and f"{study.best_value:.2f}" in third.stdout, third.stdout + third.stderr
    assert len(load(study_dir).get_trials()) == 6
    other = subprocess.run(_tune_argv(root, "kill", "--direction", "minimize"), cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "made with other arguments (direction" in other.stderr, other.stderr


CASES = {
    # finds boxes within a few iterations, and ends after 16
    "good": {"model": {"score_thresh": 0.01}, "schedule": {"max_iter": 16}},
    # keeps no detection (AP50 0 at every evaluation), and would run long enough that the driver
    # always sees it running, however fast the machine: it can only end by being pruned
    "bad": {"model": {"score_thresh": 1.0}, "schedule": {"max_iter": 400}},
}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_median_pruner_stops_a_trial_that_finds_nothing_with_its_checkpoint(tmp_path):
    """Designed case, a config group of the user's own: the grid's seed 1 runs `good` first, so
    `bad` is pruned at the first evaluation where `good` had found something, and stops through
    the stop request with a checkpoint."""
    cases = tmp_path / "conf" / "case"
    cases.mkdir(parents=True)
    for name, body in CASES.items():
        (cases / f"{name}.yaml").write_text("# @package _global_\n" + json.dumps(body) + "\n")
    root = tmp_path / "runs"
    fixed = [a for a in TINY if not a.startswith(("schedule.max_iter=", "model.score_thresh="))]
    args = ["tune", *fixed, "+case=choice(good,bad)", "schedule.eval_period=4", "--sampler", "grid", "--seed", "1",
            "--trials", "2", "--metric", "AP50", "--pruner", "median", "--pruner-startup-trials", "1",
            "--name", "prune", "--runs-root", str(root), "--config-dir", str(tmp_path / "conf")]
    out = run_cli(args, tmp_path, timeout=550, env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    study = load(root / "prune")
    good, bad = study.get_trials()
    assert good.params["case"] == "good" and good.state.name == "COMPLETE" and good.value > 0
    found = sorted(s for s, v in good.intermediate_values.items() if v > 0)
    assert found, f"the designed case needs `good` to find boxes at an evaluation: {good.intermediate_values}"
    assert bad.params["case"] == "bad" and bad.state.name == "PRUNED", out.stdout
    assert bad.intermediate_values and max(bad.intermediate_values.values()) == 0
    assert f"pruning at iteration {found[0]} " in out.stderr, out.stderr
    d = root / "prune" / bad.user_attrs["run_dir"]
    # A stopped run: checkpoint kept, no results, state requeued, stopped before its last iteration.
    assert (d / "stop.request").is_file() and (d / "checkpoints" / "last.pt").is_file()
    assert not (d / "results.json").exists()
    status = json.loads((d / "status.json").read_text())
    assert status["state"] == "requeued" and status["iteration"] < 400
    assert "stopped by stop.request" in (d / "train.log").read_text()

    st = run_cli(["status", "prune", "--runs-root", str(root), "--json"], tmp_path, env=ENV)
    assert st.returncode == 0, st.stderr
    d = json.loads(st.stdout)
    assert d["counts"] == {"complete": 1, "pruned": 1, "failed": 0, "running": 0}
    assert d["best"]["number"] == good.number
    text = run_cli(["status", "prune", "--runs-root", str(root)], tmp_path, env=ENV).stdout
    assert "pruned" in text and "best: trial 0" in text

    rep = run_cli(["report", "--study", "prune", "--runs-root", str(root)], tmp_path, env=ENV, timeout=200)
    assert rep.returncode == 0, rep.stderr
    assert "| 1 | pruned | 0.0 | bad |" in rep.stdout, rep.stdout
    reports = tmp_path / "reports"
    assert {p.name for p in reports.iterdir()} >= {"prune.md", "prune.csv", "prune.json", "prune-history.png",
                                                  "prune-slices.png"}
    assert json.loads((reports / "prune.json").read_text())["best"]["value"] == good.value
    assert (reports / "prune-history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_cmaes_sampler_searches_two_float_keys(tmp_path):
    """`--sampler cmaes` (the `cmaes` package comes with bbrctl[tune]): three trials, each in
    the box, each its own point, all complete."""
    root = tmp_path / "runs"
    args = ["tune", *TINY, "gamma=interval(0.25,2.0)", "weight=interval(1.0,3.0)", "--sampler", "cmaes",
            "--trials", "3", "--pruner", "none", "--metric", "AP50", "--name", "cma", "--runs-root", str(root)]
    out = run_cli(args, tmp_path, timeout=380, env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    study = load(root / "cma")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    points = {(t.params["gamma"], t.params["weight"]) for t in trials}
    assert len(points) == 3 and all(0.25 <= g <= 2.0 and 1.0 <= w <= 3.0 for g, w in points)
    assert study.user_attrs["bbrctl_spec"]["sampler"] == "cmaes"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_trial_stopped_with_its_checkpoint_resumes_when_the_study_runs_again(tmp_path):
    """Driver killed, then the trial preempted (`sweep --cancel`: SIGTERM, checkpoint, exit 75):
    the same command again launches it again, it resumes from its checkpoint and completes."""
    root = tmp_path / "runs"
    # Long enough that the trial is still training when the cancel lands on an idle machine
    # (tiny data trains at ~10 it/s: 60 iterations were over before `sweep --cancel` started).
    argv = [sys.executable, "-m", "bbrctl", "tune", *TINY, "schedule.max_iter=400", "schedule.steps=[350]",
            "schedule.log_period=1", "gamma=choice(0.5)", "--trials", "1", "--sampler", "grid", "--pruner", "none",
            "--name", "pre", "--runs-root", str(root)]
    drv = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def progress():
        for p in (root / "pre").glob("*/status.json"):
            s = json.loads(p.read_text())
            if s.get("state") == "running" and (s.get("iteration") or 0) >= 3:
                return p.parent
        return None

    try:
        run_dir = wait_until(progress, 300, every=0.5)
        assert run_dir, "the trial did not start"
    finally:
        drv.send_signal(signal.SIGKILL)
        drv.wait(30)
    cancel = run_cli(["sweep", "--cancel", "pre", "--runs-root", str(root)], tmp_path, env=ENV)
    assert cancel.returncode == 0, cancel.stderr
    assert wait_until(lambda: json.loads((run_dir / "status.json").read_text())["state"] == "requeued", 150)
    stopped_at = json.loads((run_dir / "status.json").read_text())["iteration"]
    assert 3 <= stopped_at < 400 and not (run_dir / "stop.request").exists()

    again = subprocess.run(argv, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    (t,) = load(root / "pre").get_trials()
    assert t.state.name == "COMPLETE"
    log = (run_dir / "train.log").read_text()
    assert log.count("starting iteration 0") == 1 and f"resuming at iteration {stopped_at}/400" in log


# --------------------------------------------------------------------------- SLURM

@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_four_trials_run_as_slurm_arrays_in_a_journal_storage(slurm_cluster, tmp_path):
    root = tmp_path / "runs"
    args = ["tune", "gamma=interval(0.1,2.0)", *TINY, "schedule.max_iter=4", "schedule.steps=[3]", "launcher=slurm",
            "launcher.cpus_per_task=1", "launcher.time=20", "--trials", "4", "--parallel", "2", "--sampler", "random",
            "--metric", "AP50", "--name", "sl", "--runs-root", str(root)]
    out = run_cli(args, tmp_path, timeout=850, env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    study_dir = root / "sl"
    assert (study_dir / storage.FILES["journal"]).is_file() and not (study_dir / storage.FILES["sqlite"]).exists()
    study = load(study_dir)
    assert states(study) == ["COMPLETE"] * 4
    launches = json.loads((study_dir / "sweep.json").read_text())["launches"]
    assert launches and all(l["launcher"] == "slurm" and l["array_job_id"].isdigit() for l in launches)
    assert sum(len(l["jobs"]) for l in launches) == 4 and max(len(l["jobs"]) for l in launches) == 2
    d = summary.describe(study_dir)
    assert d["counts"]["complete"] == 4 and d["best"]["value"] == study.best_value


def test_the_table3_preset_searches_gamma_and_weight_per_detector():
    st = prepare(TuneOptions(overrides=["+experiment=tune_table3_cpu", "+detector=cpu_atss"]))
    assert st.name == "tune_table3_cpu-detector=cpu_atss" and st.trials == 12 and st.eval_period == 150
    assert [p["text"] for p in st.spec["params"]] == ["gamma=interval(0.1,2.0)", "weight=tag(log,interval(0.5,5))"]
    assert st.spec["metric"] == "AP" and st.spec["sampler"] == "tpe" and st.spec["pruner"] == "median"
    # A typed key replaces the preset's; a flag replaces its budget.
    st = prepare(TuneOptions(overrides=["+experiment=tune_table3_cpu", "+detector=cpu_atss", "gamma=interval(0.2,1.0)"],
                             trials=4))
    assert st.trials == 4 and {p["text"] for p in st.spec["params"]} == {"gamma=interval(0.2,1.0)",
                                                                         "weight=tag(log,interval(0.5,5))"}


def test_a_sweep_preset_is_not_a_study():
    with pytest.raises(UserError, match="preset table1 is a sweep"):
        prepare(TuneOptions(overrides=["+experiment=table1", "gamma=interval(0.1,2.0)"]))


def _fake_study(root: Path) -> Path:
    """A study written straight through Optuna (no training): 3 complete, 1 pruned, 1 failed."""
    study_dir = root / "fake"
    study_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="study", storage=storage.open_storage(study_dir, "sqlite"),
                                direction="maximize")
    study.set_user_attr("bbrctl_spec", {"metric": "AP", "direction": "maximize", "sampler": "tpe", "pruner": "median",
                                        "params": [{"key": "gamma"}, {"key": "weight"}]})
    study.set_user_attr("trials", 5)
    dist = {"gamma": optuna.distributions.FloatDistribution(0.1, 2.0),
            "weight": optuna.distributions.FloatDistribution(0.5, 5.0, log=True)}
    S = optuna.trial.TrialState
    for i, (g, w, value, state) in enumerate([(0.5, 2.5, 30.0, S.COMPLETE), (1.5, 1.0, 28.0, S.COMPLETE),
                                              (0.2, 4.0, None, S.PRUNED), (1.0, 2.0, 31.5, S.COMPLETE),
                                              (1.9, 0.6, None, S.FAIL)]):
        run_dir = study_dir / f"t{i}"
        run_dir.mkdir()
        (run_dir / "wandb_run.json").write_text(json.dumps({"id": f"{i:016x}", "last_step": 0}))
        study.add_trial(optuna.trial.create_trial(
            params={"gamma": g, "weight": w}, distributions=dist, value=value, state=state,
            intermediate_values={150: 10.0 + i, 300: 12.0 + i} if state != S.FAIL else {},
            user_attrs={"run_dir": run_dir.name}))
    return study_dir


def test_status_and_report_of_a_study_read_its_storage(tmp_path):
    study_dir = _fake_study(tmp_path / "runs")
    d = summary.describe(study_dir)
    assert d["counts"] == {"complete": 3, "pruned": 1, "failed": 1, "running": 0}
    assert d["best"] == {"number": 3, "value": 31.5, "params": {"gamma": 1.0, "weight": 2.0}, "run_dir": "t3"}
    md = summary.render(d, "md")
    assert "best: trial 3, AP 31.50 (gamma=1.0000 weight=2.0000)" in md
    assert "| 2 | pruned | 14.00 | 0.2000 | 4.0000 | 300 | t2 |" in md       # a pruned trial: its last evaluation
    rows = summary.render(d, "csv").splitlines()
    assert rows[0] == "trial,state,AP,gamma,weight,last eval at,run directory" and len(rows) == 6
    assert json.loads(summary.render(d, "json"))["trials"][4]["state"] == "failed"

    st = run_cli(["status", "fake", "--runs-root", str(tmp_path / "runs")], tmp_path, env=ENV)
    assert st.returncode == 0 and "3 complete, 1 pruned, 1 failed" in st.stdout, st.stdout + st.stderr


@pytest.mark.slow
def test_report_study_wandb_logs_a_study_run_that_names_the_trials_runs(tmp_path, monkeypatch):
    study_dir = _fake_study(tmp_path / "runs")
    monkeypatch.setenv("WANDB_MODE", "offline")
    text, files, notes, logged = summary.write_report(study_dir, tmp_path / "reports", None, wandb=True)
    assert {f.name for f in files} == {"fake.md", "fake.csv", "fake.json", "fake-history.png",
                                       "fake-importances.png", "fake-slices.png"} and not notes
    # The study's W&B run (offline) is in the study's group and its table names every trial's own W&B run.
    assert logged["mode"] == "offline" and logged["group"] == "fake"
    tables = list(Path(logged["run_dir"]).rglob("*.table.json"))
    assert tables, list(Path(logged["run_dir"]).rglob("*"))
    data = json.loads(tables[0].read_text())
    assert data["columns"][-1] == "wandb_run_id"
    assert [r[-1] for r in data["data"]] == [f"{i:016x}" for i in range(5)]


def test_report_study_refuses_what_it_cannot_do(tmp_path):
    _fake_study(tmp_path / "runs")
    for args, words in ((["--study", "fake", "--table", "1"], "does not go with --table"),
                        (["--study", "fake", "--format", "latex"], "valid: md, csv, json"),
                        (["--study", "nosuch"], "nosuch")):
        out = run_cli(["report", *args, "--runs-root", str(tmp_path / "runs")], tmp_path, env=ENV)
        assert out.returncode == 2 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
