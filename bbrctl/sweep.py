"""Expand `bbrctl sweep` overrides into jobs: one resolved config, signature and run dir each.

The grammar is Hydra's: overrides are parsed by Hydra's ``OverridesParser`` and crossed the
way Hydra's ``BasicSweeper`` crosses them (its own ``split_arguments``), so comma lists,
``range()``, ``choice()`` and ``glob()`` mean here what they mean in ``python app.py -m``.
An experiment preset (``+experiment=table1``) contributes ``sweep.params``: Hydra sweep
strings that come first, exactly like ``hydra.sweeper.params``, so a key typed on the
command line replaces the preset's sweep of that key.

Composing every job through Hydra costs ~0.1 s each (minutes for 1,000 jobs), so configs
are composed once per distinct set of config-group choices and the remaining value
overrides are applied to the plain composed dict with Hydra's rules (``_apply_value``);
interpolations are then resolved by OmegaConf itself on a small config holding only what
they reference (cached). Anything outside that fast path (a dict-valued merge, a deletion,
an interpolation form not recognised, any error at all) is composed with
``bbrctl.config.compose`` instead, so errors and corner cases are Hydra's own. The tests
check that both paths give identical configs.

Layout: ``<runs_root>/<sweep>/<readable>-<signature>/`` per job, and
``<runs_root>/<sweep>/sweep.json`` (the manifest) for the sweep.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bbrctl.errors import UserError

MANIFEST = "sweep.json"
LOCK = ".sweep.lock"

# Characters allowed in names that become directory names; everything else is replaced.
_SAFE = re.compile(r"[^A-Za-z0-9._=-]+")
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,99}$")
_READABLE_MAX = 80


@dataclass
class Job:
    index: int
    overrides: list[str]             # concrete Hydra overrides that compose this job
    swept: list[tuple[str, str]]     # (key, value) of the swept keys, for the readable name
    config: dict                     # resolved config (plain data; read-only: jobs share subtrees)
    signature: str
    name: str                        # readable part of the directory name
    dir_name: str = ""               # <name>-<signature>, or an existing dir with this signature
    run_dir: Path | None = None


@dataclass
class SweepPlan:
    name: str
    runs_root: Path
    sweep_dir: Path
    jobs: list[Job]
    overrides: list[str]             # as typed
    swept_keys: list[str]
    launcher: dict
    experiment: str | None = None
    duplicates: int = 0              # jobs merged because their signature repeated
    stats: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- names

def sanitize(text: str, max_len: int = _READABLE_MAX) -> str:
    """A single safe path component: [A-Za-z0-9._=-] only, no leading dot or dash."""
    out = _SAFE.sub("_", str(text))
    out = re.sub(r"^[.-]+", "_", out)[:max_len]
    return out or "_"


def check_sweep_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_OK.match(name) or name in (".", ".."):
        raise UserError(f"invalid sweep name {name!r}: use 1-100 letters, digits and . _ = - "
                        "(starting with a letter or digit)")
    return name


def job_dir_name(readable: str, signature: str) -> str:
    return f"{sanitize(readable)}-{signature}"


def readable_name(swept: Sequence[tuple[str, str]], cfg: dict) -> str:
    if swept:
        return sanitize("-".join(f"{k.lstrip('+~')}={v}" for k, v in swept))
    loss = cfg.get("loss", {}).get("name") if isinstance(cfg.get("loss"), dict) else None
    return sanitize(f"loss={loss}" if loss else "job")


def ensure_inside(path: Path, root: Path) -> Path:
    """``path`` resolved, or a UserError when it would land outside ``root``."""
    rp, rr = Path(path).resolve(), Path(root).resolve()
    if rp != rr and rr not in rp.parents:
        raise UserError(f"refusing {str(path)!r}: it resolves outside the runs directory {str(rr)!r}")
    return rp


# --------------------------------------------------------------------------- parsing

class _GroupOptions:
    """The slice of Hydra's ConfigLoader that ``glob()`` needs: a config group's options."""

    def __init__(self, config_dirs: Sequence[str | os.PathLike]):
        self.config_dirs = list(config_dirs)

    def get_group_options(self, group_name: str, results_filter: Any = None, **_: Any) -> list[str]:
        from bbrctl.config import group_options

        return group_options(group_name, self.config_dirs)


def parse_overrides(overrides: Sequence[str], config_dirs: Sequence[str | os.PathLike] = ()) -> list:
    """Parse with Hydra's own override parser; one-line UserError on bad syntax."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create(config_loader=_GroupOptions(config_dirs))  # type: ignore[arg-type]
    try:
        parsed = parser.parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise UserError(_one_line(f"invalid override: {e}")) from None
    for o in parsed:
        if o.is_hydra_override() or o.key_or_group == "hydra":
            raise UserError(f"override {o.input_line!r} is not allowed: hydra.* settings are managed by bbrctl")
    return parsed


def _is_group(key: str, config_dirs: Sequence[str | os.PathLike]) -> bool:
    from bbrctl.config import package_config_dir, user_config_dirs

    if not key or "." in key:
        return False
    return any((d / key).is_dir() for d in [package_config_dir(), *user_config_dirs(config_dirs)])


# --------------------------------------------------------------------------- expansion

def expand(overrides: Sequence[str] = (), config_dirs: Sequence[str | os.PathLike] = (),
           name: str | None = None) -> SweepPlan:
    """Every job of the sweep, composed, validated and signed; nothing is written.

    Raises UserError (one line) for bad syntax, unknown keys or options, out-of-range
    values, an empty sweep, or an unsafe sweep name, before anything is created.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.errors import HydraException

    from bbrctl import config as C

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
    base = _to_plain(C.compose(base_ovs, config_dirs, resolve=False, validate=False)) if base_ovs else None
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
        raise UserError(_one_line(f"{e}; use comma lists, range(), choice() or glob()")) from None
    for o in all_parsed:
        if o.is_sweep_override() and not list(o.sweep_string_iterator()):
            what = "glob() selects options of a config group" if o.value_type is not None and \
                o.value_type.name == "GLOB_CHOICE_SWEEP" else "the sweep is empty"
            raise UserError(f"override {o.input_line!r} gives no values ({what})")
    if not combos:
        raise UserError("the sweep has no jobs")

    composer = _Composer(config_dirs, known=_concrete_overrides(all_parsed))
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
        job.dir_name = job_dir_name(job.name, sig)
        by_sig[sig] = job
        jobs.append(job)

    first = jobs[0].config
    for j in jobs[1:]:
        if j.config.get("launcher") != first.get("launcher") or j.config.get("runs_root") != first.get("runs_root"):
            raise UserError("every job of a sweep needs the same launcher settings and runs_root")

    if name is not None:
        sweep_name = check_sweep_name(name)
    elif preset_name:
        sweep_name = check_sweep_name(str(preset_name))
    else:
        sweep_name = sanitize("-".join(k.lstrip("+~") for k in swept_keys) or "single", 100)
    runs_root_value = first.get("runs_root") or "runs"
    if not isinstance(runs_root_value, str) or "\n" in runs_root_value or "\0" in runs_root_value:
        raise UserError(f"runs_root must be a directory path, got {runs_root_value!r}")
    runs_root = Path(runs_root_value).expanduser().resolve()
    sweep_dir = ensure_inside(runs_root / sweep_name, runs_root)
    if sweep_dir == runs_root:
        raise UserError(f"invalid sweep name {sweep_name!r}")

    existing = _existing_dirs_by_signature(sweep_dir)
    for job in jobs:
        job.dir_name = existing.get(job.signature, job.dir_name)
        # dir_name is one sanitized component (no '/', no leading dot), so only a symlink
        # placed there could lead elsewhere.
        job.run_dir = sweep_dir / job.dir_name
        if job.run_dir.is_symlink():
            ensure_inside(job.run_dir, runs_root)

    stats = {"expand_s": time.perf_counter() - t0, "composed": composer.hydra_composes,
             "fast": composer.fast, "slow": composer.slow, "combinations": len(combos)}
    return SweepPlan(name=sweep_name, runs_root=runs_root, sweep_dir=sweep_dir, jobs=jobs,
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


def _existing_dirs_by_signature(sweep_dir: Path) -> dict[str, str]:
    """Run directories already in the sweep, by signature (the suffix after the last '-')."""
    out: dict[str, str] = {}
    try:
        with os.scandir(sweep_dir) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False) and "-" in e.name:
                    out.setdefault(e.name.rsplit("-", 1)[1], e.name)
    except (FileNotFoundError, NotADirectoryError):
        pass
    return out


# --------------------------------------------------------------------------- composing

class _Slow(Exception):
    """This job needs the full Hydra compose (a case the fast path does not reproduce)."""


class _Composer:
    """compose(overrides) == to_container(bbrctl.config.compose(overrides)), but fast."""

    def __init__(self, config_dirs: Sequence[str | os.PathLike], known: dict | None = None):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.config_dirs = list(config_dirs)
        # Creating a parser inspects every grammar function: do it once.
        self._parser = OverridesParser.create(config_loader=_GroupOptions(config_dirs))  # type: ignore[arg-type]
        self._parsed: dict[str, Any] = dict(known or {})
        self._group_is: dict[str, bool] = {}
        self._bases: dict[tuple[str, ...], dict | Exception] = {}
        self._interp: dict[tuple, Any] = {}
        self._params: dict[str, Any] = {}
        self._clean: dict[tuple[str, ...], set[int]] = {}
        self.hydra_composes = 0
        self.fast = 0
        self.slow = 0

    def _parse(self, s: str):
        o = self._parsed.get(s)
        if o is None:
            from hydra.errors import OverrideParseException

            try:
                (o,) = self._parser.parse_overrides([s])
            except OverrideParseException:
                raise _Slow() from None
            self._parsed[s] = o
        return o

    def _is_group(self, key: str) -> bool:
        v = self._group_is.get(key)
        if v is None:
            v = self._group_is[key] = _is_group(key, self.config_dirs)
        return v

    def compose(self, overrides: list[str]) -> dict:
        try:
            cfg = self._fast(overrides)
            self.fast += 1
            return cfg
        except _Slow:
            pass
        from bbrctl import config as C

        self.slow += 1
        self.hydra_composes += 1
        return C.to_container(C.compose(overrides, self.config_dirs))

    def _base(self, group_ovs: tuple[str, ...]) -> dict:
        base = self._bases.get(group_ovs)
        if base is None:
            from bbrctl import config as C

            self.hydra_composes += 1
            try:
                base = _to_plain(C.compose(list(group_ovs), self.config_dirs, resolve=False, validate=False))
            except UserError as e:
                base = e
            self._bases[group_ovs] = base
            self._clean[group_ovs] = _clean_subtrees(base) if isinstance(base, dict) else set()
        if isinstance(base, Exception):
            raise _Slow()
        return base

    def _fast(self, overrides: list[str]) -> dict:
        group_ovs, value_ovs = [], []
        for s in overrides:
            o = self._parse(s)
            (group_ovs if self._is_group(o.key_or_group) and o.package is None else value_ovs).append(o)
        # Copy-on-write: _apply_value copies the dicts along each path it changes, and the
        # resolver builds a fresh tree, so the cached base is never modified.
        key = tuple(o.input_line for o in group_ovs)
        cfg = dict(self._base(key))
        for o in value_ovs:
            _apply_value(cfg, o)
        resolved = _Resolver(cfg, self._interp, self._clean[key]).resolve()
        self._validate(resolved)
        return resolved

    def _validate(self, resolved: dict) -> None:
        """bbrctl.config.validate_config, without building an OmegaConf object per job.

        It gets an attribute view of the plain config in which only loss.params (what it
        hands to OmegaConf.to_container) is a real DictConfig, cached by value. Whatever
        the view cannot answer goes to the full compose, as does every rejection (the
        compose raises the canonical message).
        """
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        from bbrctl import config as C

        view = _AttrView(resolved)
        loss = resolved.get("loss")
        if isinstance(loss, dict) and isinstance(loss.get("params"), dict):
            key = json.dumps(loss["params"], sort_keys=True, default=repr)
            params = self._params.get(key)
            if params is None:
                params = self._params[key] = OmegaConf.create(loss["params"])
            view = _AttrView({**resolved, "loss": {**loss, "params": params}})
        try:
            C.validate_config(view)
        except UserError:
            raise _Slow() from None
        except (OmegaConfBaseException, AttributeError, KeyError, TypeError, ValueError):
            raise _Slow() from None


class _AttrView(dict):
    """A dict whose keys are also attributes (DictConfig's access style), recursively."""

    def __getattr__(self, name: str) -> Any:
        try:
            v = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return _AttrView(v) if type(v) is dict else v

    def get(self, key: Any, default: Any = None) -> Any:
        v = dict.get(self, key, default)
        return _AttrView(v) if type(v) is dict else v


def _to_plain(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=False)


_MISSING = "???"
_PLAIN = (int, float, bool, type(None))


def _apply_value(cfg: dict, o) -> None:
    """Hydra's ConfigLoaderImpl._apply_overrides_to_config for one override, on plain data.

    Only the cases where OmegaConf's update is a plain assignment are handled here; the
    rest (deletions, dict merges, list paths, errors) go to the full compose. Dicts along
    the path are copied before they change (``cfg`` shares the rest with the cached base).
    """
    t = o.type.name
    if o.package is not None or o.is_sweep_override() or t == "DEL":
        raise _Slow()
    value = o.value()
    if isinstance(value, dict) or _contains_missing(value):
        raise _Slow()
    *parents, leaf = o.key_or_group.split(".")
    node: Any = cfg
    create = t in ("ADD", "FORCE_ADD")
    for p in parents:
        child = node.get(p, _ABSENT)
        if child is _ABSENT:
            if not create:
                raise _Slow()           # Hydra: "Could not override ..."
            child = {}
        elif not isinstance(child, dict):
            raise _Slow()
        node[p] = child = dict(child)
        node = child
    exists = leaf in node
    current = node.get(leaf)
    if isinstance(current, dict):
        raise _Slow()                   # a merge, not an assignment
    if t == "CHANGE" and not exists:
        raise _Slow()
    if t == "ADD" and current is not None and not isinstance(value, list):
        raise _Slow()                   # Hydra: "Could not append to config ..."
    node[leaf] = copy.deepcopy(value) if isinstance(value, list) else value


_ABSENT = object()


def _contains_missing(v: Any) -> bool:
    if isinstance(v, str):
        return v == _MISSING
    if isinstance(v, list):
        return any(_contains_missing(x) for x in v)
    return False


# Interpolations the fast resolver understands well enough to list what they read:
# absolute keys, oc.env and oc.select, nested in each other's defaults. Their *values* are
# still computed by OmegaConf (see _Resolver._eval); anything else goes to the full compose.
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_SCANNED: dict[str, Any] = {}


def _scan_interpolations(s: str, keys: set, envs: set) -> bool:
    """Collect the config keys and environment variables ``s`` reads; True if it has any."""
    i, n, found = 0, len(s), False
    while i < n:
        c = s[i]
        if c in "\\'\"":
            raise _Slow()
        if c == "{" or c == "}":
            raise _Slow()
        if not s.startswith("${", i):
            i += 1
            continue
        depth, j = 1, i + 2
        while j < n and depth:
            if s.startswith("${", j):
                depth, j = depth + 1, j + 2
                continue
            if s[j] == "}":
                depth -= 1
            elif s[j] in "{\\'\"":
                raise _Slow()
            j += 1
        if depth:
            raise _Slow()
        inner = s[i + 2:j - 1]
        found = True
        if _KEY.fullmatch(inner):
            keys.add(inner)
        elif inner.startswith(("oc.env:", "oc.select:")):
            kind, _, rest = inner.partition(":")
            first, sep, default = rest.partition(",")
            if kind == "oc.env":
                if not _ENV.fullmatch(first):
                    raise _Slow()
                envs.add(first)
            else:
                if not _KEY.fullmatch(first):
                    raise _Slow()
                keys.add(first)
            if sep:
                _scan_interpolations(default, keys, envs)
        else:
            raise _Slow()
        i = j
    return found


def _clean_subtrees(base: dict) -> set[int]:
    """ids of the base's dicts and lists that hold no interpolation: they resolve to themselves."""
    clean: set[int] = set()

    def walk(node: Any) -> bool:
        if type(node) is dict:
            ok = all([walk(v) for v in node.values()])
        elif type(node) is list:
            ok = all([walk(v) for v in node])
        else:
            return not (isinstance(node, str) and "$" in node) and isinstance(node, (str, int, float, bool, type(None)))
        if ok:
            clean.add(id(node))
        return ok

    walk(base)
    return clean


class _Resolver:
    """Resolve a plain config the way OmegaConf.resolve + to_container would.

    Subtrees a job shares unchanged with its cached base and that hold no interpolation
    are returned as they are, not copied: job configs share them and are read-only.
    """

    def __init__(self, cfg: dict, cache: dict, clean: set[int] = frozenset()):  # type: ignore[assignment]
        self.cfg = cfg
        self.cache = cache
        self.clean = clean
        self.stack: set[tuple[str, ...]] = set()
        self.memo: dict[str, tuple[bool, Any]] = {}

    def resolve(self) -> dict:
        return self._node(self.cfg, ())

    def _node(self, node: Any, path: tuple[str, ...]) -> Any:
        if id(node) in self.clean:
            return node
        if type(node) is dict:
            # Plain numbers and strings without '$' are most leaves: skip the call for them.
            return {k: v if (type(v) in _PLAIN or (type(v) is str and "$" not in v)) else self._node(v, path + (str(k),))
                    for k, v in node.items()}
        if type(node) is list:
            return [self._node(v, path + (str(i),)) for i, v in enumerate(node)]
        if type(node) is str and "$" in node:
            if "${" in node:
                return self._interp_value(node, path)
            if "\\" in node:
                raise _Slow()
        elif not isinstance(node, (str, int, float, bool, type(None))):
            raise _Slow()
        return node

    def _lookup(self, dotted: str) -> tuple[bool, Any]:
        hit = self.memo.get(dotted)
        if hit is not None:
            return hit
        node: Any = self.cfg
        parts = dotted.split(".")
        for p in parts:
            if isinstance(node, list):
                raise _Slow()           # list indexing: OmegaConf's business
            if not isinstance(node, dict) or p not in node:
                self.memo[dotted] = (False, None)
                return False, None
            node = node[p]
        if node == _MISSING:
            raise _Slow()
        path = tuple(parts)
        if path in self.stack:
            raise _Slow()               # a cycle: let OmegaConf report it
        self.stack.add(path)
        try:
            out = (True, self._node(node, path))
        finally:
            self.stack.discard(path)
        self.memo[dotted] = out
        return out

    def _interp_value(self, s: str, path: tuple[str, ...]) -> Any:
        scanned = _SCANNED.get(s)
        if scanned is None:
            keys: set = set()
            envs: set = set()
            try:
                ok = _scan_interpolations(s, keys, envs)
            except _Slow:
                ok = False
            scanned = _SCANNED[s] = (sorted(keys), sorted(envs)) if ok else False
        if not scanned:
            raise _Slow()
        keys, envs = scanned
        deps = [(key, *self._lookup(key)) for key in keys]
        deps += [("$env:" + env, True, os.environ.get(env)) for env in envs]
        cache_key = (s, repr(deps))
        if cache_key not in self.cache:
            self.cache[cache_key] = self._eval(s, deps)
        value = self.cache[cache_key]
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value

    @staticmethod
    def _eval(s: str, deps: list) -> Any:
        """OmegaConf's own value for ``s`` in a config holding only its dependencies."""
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        tiny: dict = {}
        for key, found, val in deps:
            if key.startswith("$env:") or not found:
                continue
            node = tiny
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise _Slow()
            node[leaf] = val
        if "__bbrctl_value__" in tiny:
            raise _Slow()
        tiny["__bbrctl_value__"] = s
        try:
            return OmegaConf.to_container(OmegaConf.create(tiny), resolve=True)["__bbrctl_value__"]
        except (OmegaConfBaseException, KeyError, ValueError, TypeError):
            raise _Slow() from None


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


# --------------------------------------------------------------------------- manifest

def load_manifest(sweep_dir: str | os.PathLike) -> dict:
    from bbrctl.runs import read_json

    m = read_json(Path(sweep_dir) / MANIFEST)
    return m if isinstance(m, dict) else {}


def save_manifest(sweep_dir: str | os.PathLike, manifest: dict) -> None:
    from bbrctl.redact import redact
    from bbrctl.runs import atomic_write_json

    manifest["updated"] = time.time()
    # Overrides and launch records as typed may hold a token (launcher.setup); the file does not.
    atomic_write_json(Path(sweep_dir) / MANIFEST, redact(manifest))


def merge_jobs_into_manifest(manifest: dict, plan: SweepPlan) -> dict:
    """Add the plan's jobs to the manifest (which keeps every job the sweep ever had)."""
    manifest.setdefault("name", plan.name)
    manifest.setdefault("created", time.time())
    manifest["runs_root"] = str(plan.runs_root)
    manifest["swept_keys"] = plan.swept_keys
    manifest["experiment"] = plan.experiment
    manifest["overrides"] = plan.overrides
    jobs = manifest.setdefault("jobs", {})
    nxt = 1 + max((int(v.get("index", -1)) for v in jobs.values()), default=-1)
    for j in plan.jobs:
        old = jobs.get(j.signature) or {}
        index = old.get("index")
        if index is None:
            index, nxt = nxt, nxt + 1
        # "index" keeps the order jobs were first planned in (the file's keys are sorted).
        jobs[j.signature] = {"dir": j.dir_name, "name": j.name, "overrides": j.overrides, "index": index}
    manifest.setdefault("launches", [])
    return manifest


def last_launch_of(manifest: dict, signature: str) -> dict | None:
    for launch in reversed(manifest.get("launches") or []):
        if signature in (launch.get("jobs") or []):
            return launch
    return None


def plan_summary(plan: SweepPlan) -> dict:
    return {
        "sweep": plan.name, "sweep_dir": str(plan.sweep_dir), "runs_root": str(plan.runs_root),
        "launcher": plan.launcher.get("name"), "experiment": plan.experiment, "swept_keys": plan.swept_keys,
        "n_jobs": len(plan.jobs), "duplicates_merged": plan.duplicates,
    }
