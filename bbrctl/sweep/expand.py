"""Expand `bbrctl sweep` overrides into jobs: one resolved, validated config, signature and run dir each.

The grammar is Hydra's: overrides are parsed by Hydra's ``OverridesParser`` and crossed the
way Hydra's ``BasicSweeper`` crosses them (its own ``split_arguments``), so comma lists,
``range()``, ``choice()`` and ``glob()`` mean here what they mean in ``python app.py -m``.
An experiment preset (``+experiment=table1``) contributes ``sweep.params``: Hydra sweep
strings that come first, exactly like ``hydra.sweeper.params``, so a key typed on the
command line replaces the preset's sweep of that key. Jobs are composed by
bbrctl.sweep.fast and every one is checked by the schema before this returns.

Layout: ``<runs_root>/<sweep>/<readable>-<signature>/`` per job, and
``<runs_root>/<sweep>/sweep.json`` (the manifest) for the sweep. A job whose directory was
made under a previous signature (bbrctl.config.signature.legacy_signature) is found through
it and adopted at launch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

from bbrctl import config as C
from bbrctl.errors import UserError
from bbrctl.store import discovery, manifest as store_manifest, names
from bbrctl.store.root import runs_root as resolve_runs_root
from bbrctl.sweep.fast import Composer, GroupOptions
from bbrctl.sweep.plan import Job, SweepPlan, readable_name


def parse_overrides(overrides: Sequence[str], config_dirs: Sequence[str | os.PathLike] = ()) -> list:
    """Parse with Hydra's own override parser; one-line UserError on bad syntax."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create(config_loader=GroupOptions(config_dirs))  # type: ignore[arg-type]
    try:
        parsed = parser.parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise UserError(C.one_line(f"invalid override: {e}")) from None
    for o in parsed:
        if o.is_hydra_override() or o.key_or_group == "hydra":
            raise C.hydra_override_error(o.input_line)
    return parsed



def expand(overrides: Sequence[str] = (), config_dirs: Sequence[str | os.PathLike] = (),
           name: str | None = None, runs_root: str | os.PathLike | None = None) -> SweepPlan:
    """Every job of the sweep, composed, validated and signed; nothing is written.

    Raises UserError (one line) for bad syntax, unknown keys or options, a value the
    schema refuses (in any job), an empty sweep, or an unsafe sweep name, before anything
    is created. ``runs_root`` (``--runs-root``) wins over the config's ``runs_root``.
    No message quotes a launcher.setup override (bbrctl.config.compose.hiding_setup).
    """
    from bbrctl.config.compose import hiding_setup

    return hiding_setup(lambda ovs: _expand(ovs, config_dirs, name, runs_root), overrides)


def _expand(overrides: Sequence[str], config_dirs: Sequence[str | os.PathLike], name: str | None,
            runs_root: str | os.PathLike | None) -> SweepPlan:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.errors import HydraException

    t0 = time.perf_counter()
    overrides = [str(o) for o in overrides]
    config_dirs = list(config_dirs)
    C.user_config_dirs(config_dirs)  # fails early on a missing --config-dir
    parsed = parse_overrides(overrides, config_dirs)

    # `experiment=x` means `+experiment=x` (the group has no default to override).
    experiment: str | None = None
    cli: list[str] = []
    for o in parsed:
        if o.key_or_group == "experiment" and o.package is None:
            if o.is_sweep_override():
                raise UserError("`experiment` cannot be swept: run one preset per sweep "
                                f"(got {o.input_line!r})")
            if o.is_delete():
                raise UserError("`~experiment` makes no sense here; leave the preset out instead")
            experiment = str(o.value())
            cli.append(f"+experiment={o.get_value_element_as_str()}")
        else:
            cli.append(o.input_line)

    # The preset's own sweep (and a sweep.name given on the command line) come from one
    # compose of the preset alone: its sweep.params may name options of swept groups.
    base_ovs = [c for c in cli if c.startswith("+experiment=")]
    base_ovs += [o.input_line for o in parsed if not o.is_sweep_override()
                 and o.key_or_group.split(".")[0] == "sweep"]
    base = C.to_plain(C.compose(base_ovs, config_dirs, resolve=False, validate=False)) if base_ovs else None
    preset_params: list[str] = []
    preset_name = None
    if base is not None:
        sweep_node = base.get("sweep") or {}
        preset_name = sweep_node.get("name")
        for key, val in (sweep_node.get("params") or {}).items():
            preset_params.append(f"{key}={_param_string(key, val)}")
    all_strings = preset_params + cli
    all_parsed = parse_overrides(all_strings, config_dirs)

    swept_keys: list[str] = []
    n_preset = len(preset_params)
    for i, o in enumerate(all_parsed):
        if o.is_sweep_override() or i < n_preset:
            k = o.get_key_element()
            if k not in swept_keys:
                swept_keys.append(k)
        if o.is_sweep_override() and o.key_or_group in ("launcher", "runs_root"):
            raise UserError(f"`{o.key_or_group}` cannot be swept: a sweep has one launcher and one runs directory")
    # A key typed on the command line replaces the preset's sweep of it (BasicSweeper keeps
    # the last override of a key); it stays "swept" for naming only if it still varies.
    cli_keys = {o.get_key_element(): o for o in all_parsed[n_preset:]}
    swept_keys = [k for k in swept_keys if k not in cli_keys or cli_keys[k].is_sweep_override()]

    try:
        (combos,) = BasicSweeper.split_arguments(all_parsed, None)
    except HydraException as e:
        raise UserError(C.one_line(f"{e}; use comma lists, range(), choice() or glob()")) from None
    for o in all_parsed:
        if o.is_sweep_override() and not list(o.sweep_string_iterator()):
            what = "glob() selects options of a config group" if o.value_type is not None and \
                o.value_type.name == "GLOB_CHOICE_SWEEP" else "the sweep is empty"
            raise UserError(f"override {o.input_line!r} gives no values ({what})")
    if not combos:
        raise UserError("the sweep has no jobs")

    composer = Composer(config_dirs, known=_concrete_overrides(all_parsed))
    jobs: list[Job] = []
    by_sig: dict[str, Job] = {}
    duplicates = 0
    for combo in combos:
        cfg = composer.compose(list(combo))
        sig = C.signature(cfg)
        if sig in by_sig:
            duplicates += 1
            continue
        swept = []
        for s in combo:
            k, _, v = s.partition("=")
            if k in swept_keys:
                swept.append((k, v))
        job = Job(index=len(jobs), overrides=list(combo), swept=swept, config=cfg, signature=sig,
                  name=readable_name(swept, cfg))
        job.dir_name = names.job_dir_name(job.name, sig)
        by_sig[sig] = job
        jobs.append(job)

    first = jobs[0].config
    for j in jobs[1:]:
        if j.config.get("launcher") != first.get("launcher") or j.config.get("runs_root") != first.get("runs_root"):
            raise UserError("every job of a sweep needs the same launcher settings and runs_root")

    if name is not None:
        sweep_name = names.check_sweep_name(name)
    elif preset_name:
        sweep_name = names.check_sweep_name(str(preset_name))
    else:
        sweep_name = names.sanitize("-".join(k.lstrip("+~") for k in swept_keys) or "single", 100)
    root = resolve_runs_root(runs_root, first.get("runs_root"))
    sweep_dir = names.ensure_inside(root / sweep_name, root)
    if sweep_dir == root:
        raise UserError(f"invalid sweep name {sweep_name!r}")
    locate_run_dirs(jobs, sweep_dir, root)

    stats = {"expand_s": time.perf_counter() - t0, "composed": composer.hydra_composes,
             "fast": composer.fast, "slow": composer.slow, "combinations": len(combos)}
    return SweepPlan(name=sweep_name, runs_root=root, sweep_dir=sweep_dir, jobs=jobs,
                     overrides=overrides, swept_keys=[k.lstrip("+~") for k in swept_keys],
                     launcher=dict(first.get("launcher") or {}), experiment=experiment,
                     duplicates=duplicates, stats=stats)


def _concrete_overrides(parsed: list) -> dict:
    """The Override each job string would parse to, taken from the parsed sweeps.

    BasicSweeper.split_arguments hands back strings (``key=value``); parsing 1,000 of them
    again costs about a second, and the values are already here.
    """
    import dataclasses

    from hydra.core.override_parser.types import ValueType

    known: dict[str, Any] = {}
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            s = f"{key}={o.get_value_element_as_str()}"
            known[s] = dataclasses.replace(o, input_line=s)
        elif not getattr(o._value, "shuffle", False):
            for vs, v in zip(o.sweep_string_iterator(), o.sweep_iterator()):
                s = f"{key}={vs}"
                known[s] = dataclasses.replace(o, value_type=ValueType.ELEMENT, _value=v, input_line=s)
    return known


def _param_string(key: str, val: Any) -> str:
    """A preset's sweep.params value as a Hydra sweep string ("a,b", or a YAML list)."""
    if isinstance(val, bool):
        return "true" if val else "false"
    if isinstance(val, (str, int, float)):
        return str(val)
    if isinstance(val, list) and val and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in val):
        return ",".join(str(v) for v in val)
    raise UserError(f"sweep.params.{key} must be a Hydra sweep string like \"a,b,c\" or a list of values, got {val!r}")


def locate_run_dirs(jobs: list[Job], sweep_dir: Path, root: Path) -> None:
    """Set each job's run directory: the one the manifest or a directory name gives its
    signature, else one made under its legacy signature, else a new ``<name>-<signature>``."""
    manifest = store_manifest.load_manifest(sweep_dir) if sweep_dir.is_dir() else {}
    listed = {sig: j.get("dir") for sig, j in (manifest.get("jobs") or {}).items() if j.get("dir")}
    by_suffix = discovery.dirs_by_suffix(sweep_dir)
    present = set(by_suffix.values())

    def found(sig: str) -> str | None:
        d = listed.get(sig)
        if d and d in present:
            return d
        return by_suffix.get(sig)

    unmatched = []
    for job in jobs:
        d = found(job.signature)
        if d:
            job.dir_name = d
        else:
            unmatched.append(job)
    # Only a sweep directory left from an older bbrctl has directories the new signatures
    # do not name: pay for the legacy hashes only then.
    if unmatched and len(present) > len(jobs) - len(unmatched):
        for job in unmatched:
            old = C.legacy_signature(job.config)
            d = found(old) if old != job.signature else None
            if d:
                job.dir_name, job.previous_signatures = d, [old]
    for job in jobs:
        # dir_name is one sanitized component (no '/', no leading dot), so only a symlink
        # placed there could lead elsewhere.
        job.run_dir = sweep_dir / job.dir_name
        if job.run_dir.is_symlink():
            names.ensure_inside(job.run_dir, root)
