"""The fast path of sweep expansion: ``Composer.compose(ovs) == to_container(compose(ovs))``.

Composing every job through Hydra costs ~0.1 s each (minutes for 1,000 jobs), so configs
are composed once per distinct set of config-group choices and the remaining value
overrides are applied to the plain composed dict with Hydra's rules (``_apply_value``);
interpolations are then resolved by OmegaConf itself on a small config holding only what
they reference (cached). Anything outside that fast path (a dict-valued merge, a deletion,
an interpolation form not recognised, any composition error at all) is composed with
``bbrctl.config.compose`` instead, so errors and corner cases are Hydra's own. Every job,
on either path, is checked by the schema (bbrctl.config.schema.validate). The tests check
that both paths give identical configs, over generated overrides (hypothesis).
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any, Sequence

from bbrctl import config as C
from bbrctl.errors import UserError


class GroupOptions:
    """The slice of Hydra's ConfigLoader that ``glob()`` needs: a config group's options."""

    def __init__(self, config_dirs: Sequence[str | os.PathLike]):
        self.config_dirs = list(config_dirs)

    def get_group_options(self, group_name: str, results_filter: Any = None, **_: Any) -> list[str]:
        return C.group_options(group_name, self.config_dirs)


class _Slow(Exception):
    """This job needs the full Hydra compose (a case the fast path does not reproduce)."""


class Composer:
    """compose(overrides) == to_container(bbrctl.config.compose(overrides)), but fast."""

    def __init__(self, config_dirs: Sequence[str | os.PathLike], known: dict | None = None):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.config_dirs = list(config_dirs)
        # Creating a parser inspects every grammar function: do it once.
        self._parser = OverridesParser.create(config_loader=GroupOptions(config_dirs))  # type: ignore[arg-type]
        self._parsed: dict[str, Any] = dict(known or {})
        self._group_is: dict[str, bool] = {}
        self._bases: dict[tuple[str, ...], dict | Exception] = {}
        self._interp: dict[tuple, Any] = {}
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
            v = self._group_is[key] = C.is_group(key, self.config_dirs)
        return v

    def compose(self, overrides: list[str]) -> dict:
        try:
            cfg = self._fast(overrides)
            self.fast += 1
            return cfg
        except _Slow:
            pass
        self.slow += 1
        self.hydra_composes += 1
        return C.to_container(C.compose(overrides, self.config_dirs))

    def _base(self, group_ovs: tuple[str, ...]) -> dict:
        base = self._bases.get(group_ovs)
        if base is None:
            self.hydra_composes += 1
            try:
                base = C.to_plain(C.compose(list(group_ovs), self.config_dirs, resolve=False, validate=False))
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
        # Rejections carry the schema's own message: the full compose would say the same.
        C.validate(resolved)
        return resolved


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


