"""The ask-and-tell loop of `bbrctl tune`: Optuna proposes, bbrctl's launchers run, the run dirs tell.

One driver per study (a lock in the study directory). Each round it

1. reads the study's RUNNING trials and their run directories (bbrctl.status.sweep_jobs,
   which also asks SLURM and the local supervisors what is alive);
2. reports each trial's new periodic evaluations to Optuna and, when the pruner says so,
   writes the run's stop request (bbrctl.tune.trials): the run checkpoints and stops;
3. tells Optuna what ended: done -> the metric; stopped after a stop request -> PRUNED;
   failed after this trial launched it -> FAIL;
4. asks for new trials while fewer than ``parallel`` run and the study has fewer than
   ``trials``, and launches every trial that has nothing running it through
   bbrctl.launch.launch (local: one background supervisor per launch; SLURM: one job array
   of the trials asked in that round).

A trial is a run directory named by its configuration's signature, so a configuration
that already ran (in this study, or in a sweep of the same name) is read, not run again.

Resume: the state lives in the storage and the run directories only. A driver killed at
any point leaves trials RUNNING in the storage with their run directory named in the
trial's user attributes (written before the launch); its runs go on (local supervisors
and SLURM jobs do not depend on the driver). The same command again adopts them: a
trial whose run is alive is waited for, one that stopped with a checkpoint and no stop
request is launched again (it resumes), one whose run never started is launched.
Trials asked, told or pruned are never asked again, so the study ends with exactly
``trials`` trials. A seeded sampler is seeded with ``seed + (trials already in the
study)`` on each start, so a resumed study does not re-propose its first points (the grid
sampler keeps its seed: it shuffles the grid, and skips the points already stored).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from bbrctl.errors import UserError
from bbrctl.launch import check_launcher, launch
from bbrctl.status import sweep_jobs
from bbrctl.status.inspect import Scheduler
from bbrctl.store import RunDir, locks, names
from bbrctl.store.manifest import last_launch_of, load_manifest
from bbrctl.sweep import SweepPlan, expand
from bbrctl.sweep.expand import locate_run_dirs
from bbrctl.sweep.plan import readable_name
from bbrctl.tune import defaults, storage, trials as T
from bbrctl.tune.optuna_import import optuna
from bbrctl.tune.space import SearchSpace, parse_space, validate_space

SPEC_ATTR = "bbrctl_spec"


@dataclass
class TuneOptions:
    """What `bbrctl tune` was given; None means the preset's value, else bbrctl.tune.defaults."""

    overrides: list[str]
    config_dirs: list[str] = field(default_factory=list)
    name: str | None = None
    runs_root: str | os.PathLike | None = None
    trials: int | None = None
    metric: str | None = None
    direction: str | None = None
    sampler: str | None = None
    seed: int | None = None
    parallel: int | None = None
    pruner: str | None = None
    pruner_startup_trials: int | None = None
    storage: str | None = None
    poll_s: float = defaults.POLL_S


@dataclass
class Study:
    """A study resolved and validated: nothing exists on disk yet."""

    name: str
    dir: Path
    runs_root: Path
    space: SearchSpace
    launcher: str
    trials: int
    parallel: int
    storage: str
    spec: dict                       # what identifies the study (stored in it, compared on resume)
    eval_period: int
    config_dirs: list[str]


def _setting(opts: TuneOptions, preset: dict, key: str, default):
    v = getattr(opts, key)
    return v if v is not None else preset.get(key, default)


def prepare(opts: TuneOptions) -> Study:
    """Parse, resolve and check everything; create nothing (every refusal is one line)."""
    space = parse_space(opts.overrides, opts.config_dirs)
    pre = space.preset
    unknown = set(pre) - {"params", "name", "trials", "metric", "direction", "sampler", "seed", "pruner",
                          "pruner_startup_trials"}
    if unknown:
        raise UserError(f"preset {space.experiment}: unknown sweep.tune key(s) {', '.join(sorted(unknown))}; valid: "
                        "params, name, trials, metric, direction, sampler, seed, pruner, pruner_startup_trials")
    trials = _setting(opts, pre, "trials", defaults.TRIALS)
    metric = str(_setting(opts, pre, "metric", defaults.METRIC))
    direction = _setting(opts, pre, "direction", defaults.DIRECTION)
    sampler = _setting(opts, pre, "sampler", defaults.SAMPLER)
    seed = _setting(opts, pre, "seed", defaults.SEED)
    parallel = opts.parallel if opts.parallel is not None else defaults.PARALLEL
    pruner = _setting(opts, pre, "pruner", defaults.PRUNER)
    startup = _setting(opts, pre, "pruner_startup_trials", defaults.PRUNER_STARTUP_TRIALS)
    for what, v, lo in (("--trials", trials, 1), ("--parallel", parallel, 1), ("--seed", seed, 0),
                        ("--pruner-startup-trials", startup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise UserError(f"{what} must be an integer >= {lo}, got {v!r}")
    T.parse_metric(metric)
    for what, v, valid in (("--direction", direction, defaults.DIRECTIONS), ("--sampler", sampler, defaults.SAMPLERS),
                           ("--pruner", pruner, defaults.PRUNERS)):
        if v not in valid:
            raise UserError(f"unknown {what} {v!r}; valid: {', '.join(valid)}")
    if sampler == "grid":
        trials = min(trials, space.grid_size())     # as Hydra's Optuna sweeper does
    if sampler == "cmaes":
        import importlib.util

        if importlib.util.find_spec("cmaes") is None:
            raise UserError("--sampler cmaes needs the `cmaes` package (pip install cmaes); or use tpe, random, grid")
    name = opts.name if opts.name is not None else _default_name(space)
    names.check_sweep_name(name)
    optuna()                                        # installed? (before anything is made)

    plan = validate_space(space, opts.config_dirs, study=name, runs_root=opts.runs_root)
    check_launcher(plan)
    launcher = plan.launcher.get("name")
    kind = storage.choose_kind(plan.sweep_dir, opts.storage, launcher)
    eval_period = int(plan.jobs[0].config["schedule"].get("eval_period") or 0)
    spec = {"params": [p.describe() for p in space.params], "fixed": list(space.fixed), "metric": metric,
            "direction": direction, "sampler": sampler, "seed": seed, "pruner": pruner,
            "pruner_startup_trials": startup}
    return Study(name=name, dir=plan.sweep_dir, runs_root=plan.runs_root, space=space, launcher=launcher,
                 trials=trials, parallel=parallel, storage=kind, spec=spec, eval_period=eval_period,
                 config_dirs=list(opts.config_dirs))


def _default_name(space: SearchSpace) -> str:
    base = space.preset.get("name") or ("tune-" + "-".join(p.name for p in space.params))
    extra = [o.lstrip("+~") for o in space.fixed if not o.startswith("+experiment=")]
    return names.sanitize("-".join([str(base), *extra]), 100)


def _sampler(spec: dict, space: SearchSpace, seed: int):
    S = optuna().samplers
    kind = spec["sampler"]
    if kind == "tpe":
        return S.TPESampler(seed=seed)
    if kind == "random":
        return S.RandomSampler(seed=seed)
    if kind == "cmaes":
        return S.CmaEsSampler(seed=seed)
    return S.GridSampler(space.grid(), seed=seed)


def _pruner(spec: dict):
    P = optuna().pruners
    if spec["pruner"] == "median":
        return P.MedianPruner(n_startup_trials=spec["pruner_startup_trials"])
    if spec["pruner"] == "halving":
        return P.SuccessiveHalvingPruner()
    return P.NopPruner()


def _spec_difference(stored: dict, spec: dict) -> str | None:
    for k in sorted(set(stored) | set(spec)):
        if stored.get(k) != spec.get(k):
            return f"{k}: stored {stored.get(k)!r}, now {spec.get(k)!r}"
    return None


@dataclass
class TuneResult:
    name: str
    dir: Path
    counts: dict
    best: dict | None


def tune(opts: TuneOptions, echo: Callable[[str], None] | None = None) -> TuneResult:
    """Run (or continue) the study until it has ``trials`` finished trials."""
    echo = echo or (lambda m: print(m, file=sys.stderr, flush=True))
    st = prepare(opts)
    new = not st.dir.exists()
    st.dir.mkdir(parents=True, exist_ok=True)
    try:
        with locks.locked(st.dir / storage.LOCK, f"bbrctl tune {st.name}",
                          f"another `bbrctl tune` is driving study {st.name} right now"):
            return _drive(st, opts, echo)
    except KeyboardInterrupt:
        # The trials' runs do not depend on the driver: they go on, and the same command adopts them.
        echo(f"tune {st.name}: the driver stops here; trials already launched run on, and the same command "
             "continues the study")
        raise
    except UserError:
        if new and not storage.is_study_dir(st.dir):
            _remove_empty(st.dir)
        raise


def _remove_empty(d: Path) -> None:
    for p in d.iterdir():
        if p.name != storage.LOCK:
            return
    (d / storage.LOCK).unlink(missing_ok=True)
    d.rmdir()


def _drive(st: Study, opts: TuneOptions, echo) -> TuneResult:
    op = optuna()
    TS = op.trial.TrialState
    study = op.create_study(study_name=defaults.STUDY_NAME, storage=storage.open_storage(st.dir, st.storage),
                            direction=st.spec["direction"], pruner=_pruner(st.spec), load_if_exists=True)
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        study.set_user_attr(SPEC_ATTR, st.spec)
        study.set_user_attr("created", time.time())
    else:
        diff = _spec_difference(stored, st.spec)
        if diff:
            raise UserError(f"study {st.name} was made with other arguments ({diff}); run it with the same ones, "
                            "or start another study with --name")
    study.set_user_attr("trials", st.trials)
    if st.spec["pruner"] != "none" and st.eval_period == 0:
        echo(f"tune {st.name}: note: schedule.eval_period is 0, so trials report no intermediate values and the "
             f"{st.spec['pruner']} pruner cannot stop any; set schedule.eval_period to prune")
    # A seeded sampler started again would propose its first points again: each start is
    # seeded past the trials already stored. Not the grid sampler: its seed shuffles the grid
    # itself (grid ids index the shuffled list), and it skips the ids already in the storage.
    offset = 0 if st.spec["sampler"] == "grid" else len(study.trials)
    study.sampler = _sampler(st.spec, st.space, st.spec["seed"] + offset)
    dists = st.space.to_optuna()
    relaunched: dict[int, int] = {}
    echo(f"tune {st.name}: {len(study.trials)} trial(s) in {storage.FILES[st.storage]}, {st.trials} wanted, "
         f"{st.parallel} at a time ({st.launcher}); runs in {st.dir}")

    while True:
        all_trials = study.get_trials(deepcopy=False)
        running = [t for t in all_trials if t.state == TS.RUNNING]
        for t in running:
            if "run_dir" not in t.user_attrs:       # asked by a driver killed before it named the run
                _name_run(st, study, t)
        running = [t for t in study.get_trials(deepcopy=False) if t.state == TS.RUNNING]
        manifest = load_manifest(st.dir)
        sched = Scheduler(manifest, query=False)
        states = {j.signature: j for j in sweep_jobs(st.dir, only=[t.user_attrs["signature"] for t in running],
                                                     manifest=manifest)} if running else {}
        to_launch: list = []
        still = 0
        for t in running:
            run_dir = st.dir / t.user_attrs["run_dir"]
            js = states.get(t.user_attrs["signature"])
            state = js.state if js is not None else "pending"
            _report(study, t, run_dir, st, echo, may_prune=state != "done")
            if state == "done":
                value = T.final_value(run_dir, st.spec["metric"])
                if value is None:
                    _tell(study, t.number, state=TS.FAIL)
                    echo(f"trial {t.number} failed: {run_dir.name} has no {st.spec['metric']} in results.json")
                else:
                    _tell(study, t.number, value)
                    echo(f"trial {t.number} done: {st.spec['metric']} {value:.2f}{_best_text(study)}")
                continue
            if js is not None and (js.active or _starting(run_dir, last_launch_of(manifest, js.signature), sched)):
                still += 1
                continue
            if state == "requeued" and T.stop_requested(run_dir):
                _tell(study, t.number, state=TS.PRUNED)
                echo(f"trial {t.number} pruned: stopped with its checkpoint at iteration {js.iteration}")
                continue
            if state == "failed" and t.user_attrs.get("launched"):
                _tell(study, t.number, state=TS.FAIL)
                echo(f"trial {t.number} failed: {js.note or 'see ' + str(run_dir / 'stdout.log')}")
                continue
            relaunched[t.number] = relaunched.get(t.number, 0) + 1
            if relaunched[t.number] > defaults.MAX_RELAUNCHES:
                _tell(study, t.number, state=TS.FAIL)
                echo(f"trial {t.number} failed: its run did not start after {defaults.MAX_RELAUNCHES} launches")
                continue
            to_launch.append(t.number)
            still += 1
        n_total = len(study.get_trials(deepcopy=False))
        n_new = max(0, min(st.parallel - still, st.trials - n_total))
        for _ in range(n_new):
            t = study.ask(dists)
            _name_run(st, study, t)
            to_launch.append(t.number)
            still += 1
        if to_launch:
            _launch(st, study, to_launch, echo)
        if still == 0 and len(study.get_trials(deepcopy=False)) >= st.trials:
            break
        time.sleep(opts.poll_s)
    return summarize(st, study)


def _starting(run_dir: Path, launch: dict | None, sched: Scheduler) -> bool:
    """A local launch whose supervisor lives and whose train has not written anything since.

    A relaunched run still shows its old state (requeued, failed) until its train has
    started, which takes seconds: launching it again meanwhile would only be refused by
    the run's lock, and counted as a launch that did not start.
    """
    if not launch or launch.get("launcher") != "local" or not sched.supervisor_alive(launch):
        return False
    rd = RunDir(run_dir)
    written = max((p.stat().st_mtime for p in (rd.status, rd.results) if p.exists()), default=0.0)
    return written < float(launch.get("time") or 0)


def _tell(study, number: int, *args, **kwargs) -> None:
    """study.tell, tolerating the grid sampler's study.stop() once its grid is used up: Optuna
    raises that outside optimize(), after the trial's state is stored (Hydra's sweeper does the same)."""
    try:
        study.tell(number, *args, **kwargs)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def _live(study, t):
    """A trial of the storage as Optuna's Trial (report, should_prune, set_user_attr)."""
    return optuna().trial.Trial(study, t._trial_id)


def _name_run(st: Study, study, t) -> None:
    """Compose the trial's job, find or name its run directory, record both in the trial."""
    values = t.params
    ovs = st.space.overrides(values)
    if st.launcher == "local":
        # Jobs of a study share the cores: the supervisor splits them by max_parallel (not signed).
        ovs.append(f"launcher.max_parallel={st.parallel}")
    job = _job(st, ovs, values)
    live = _live(study, t)
    for k, v in (("overrides", job.overrides), ("signature", job.signature), ("run_dir", job.dir_name)):
        live.set_user_attr(k, v)


def _job(st: Study, ovs: list[str], values: dict):
    plan = expand(ovs, st.config_dirs, name=st.name, runs_root=st.runs_root)
    (job,) = plan.jobs
    shown = [(p.name, _short(values[p.name])) for p in st.space.params]
    job.name = readable_name(shown, job.config)
    job.dir_name = names.job_dir_name(job.name, job.signature)
    locate_run_dirs([job], plan.sweep_dir, plan.runs_root)
    return job


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _launch(st: Study, study, numbers: Sequence[int], echo) -> None:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    jobs, seen = [], set()
    for n in numbers:
        t = trials[n]
        job = _job(st, list(t.user_attrs["overrides"]), t.params)
        if job.signature not in seen:
            seen.add(job.signature)
            job.index = len(jobs)
            jobs.append(job)
    plan = SweepPlan(name=st.name, runs_root=st.runs_root, sweep_dir=st.dir, jobs=jobs,
                     overrides=list(st.space.fixed), swept_keys=[p.name for p in st.space.params],
                     launcher=dict(jobs[0].config.get("launcher") or {}), experiment=st.space.experiment)
    result = launch(plan, wait=False, progress=False)
    now = time.time()
    for n in numbers:
        _live(study, trials[n]).set_user_attr("launched", now)
        shown = " ".join(f"{p.name}={_short(trials[n].params[p.name])}" for p in st.space.params)
        echo(f"trial {n}: {shown} -> {trials[n].user_attrs['run_dir']}")
    echo(result.message)


def _report(study, t, run_dir: Path, st: Study, echo, may_prune: bool = True) -> None:
    """Tell Optuna the run's new periodic evaluations; write the stop request if it prunes."""
    if st.spec["pruner"] == "none":
        return
    values = T.intermediate_values(run_dir, st.spec["metric"])
    fresh = {s: v for s, v in values.items() if s not in t.intermediate_values}
    if not fresh:
        return
    trial = _live(study, t)
    # The pruner is asked after each evaluation in turn, as if it had watched the run live: a
    # driver that polls late (a fast run, a busy machine) then prunes at the same step as one
    # that polls at once. Asking only at the newest step would compare it with the finished
    # trials at a step they may never have reached, where Optuna never prunes.
    pruned_at = None
    for step in sorted(fresh):
        trial.report(fresh[step], step)
        if pruned_at is None and may_prune and not T.stop_requested(run_dir) and trial.should_prune():
            pruned_at = step
    if pruned_at is not None:
        T.request_stop(run_dir, t.number, pruned_at)
        echo(f"trial {t.number}: pruning at iteration {pruned_at} ({st.spec['metric']} {fresh[pruned_at]:.2f}); "
             "asked the run to checkpoint and stop")


def _best_text(study) -> str:
    try:
        b = study.best_trial
    except ValueError:
        return ""
    return f" (best {b.value:.2f}, trial {b.number})"


def summarize(st: Study, study) -> TuneResult:
    from bbrctl.tune.summary import counts, best_of

    frozen = study.get_trials(deepcopy=False)
    return TuneResult(name=st.name, dir=st.dir, counts=counts(frozen), best=best_of(study))
