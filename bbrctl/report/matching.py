"""Which runs make which row: matching, grouping of seeds, and one common setting per table.

Matching. A row's ``match`` maps dotted config keys to values; a run matches when every key
exists in its resolved config with an equal value (numbers compare numerically, so ``2.5``
matches ``2.5`` and ``1`` matches ``1.0``; a list value in ``match`` means "any of these").

Grouping. Runs of one configuration that differ only in ``seed`` form a *group*; a group's
cells are the mean ± std over its finished seeds. Two run directories with the same
signature (the same job reached from two sweeps) count once.

One setting per table. A table compares rows under one setting, so rows must not mix, say,
a 300-iteration run with a 90k one. Every run gets a *context*: its result-relevant config
(``bbrctl.config.NON_RESULT_KEYS`` dropped) minus what rows are allowed to differ in — the
seed, the loss and its hyper-parameters (``loss.*``, ``weight``, ``gamma``, ``beta``), every
key the rows or series select on, and the whole node of a selected ``<node>.name`` (a row that
selects ``model.name`` lets all of ``model.*`` differ). The report shows the context that
gives the most rows a finished run (ties: more rows with any run, more finished runs, then
the newest) and footnotes every other context and every other matching configuration inside
a row, with the config keys that differ, so nothing is silently dropped. ``--where`` and
``--sweep`` pick another. Inside a row, the configuration with the most finished seeds
(then the newest) is shown.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable

from bbrctl.config.signature import NON_RESULT_KEYS, portable_value
from bbrctl.report.collect import Run

MISSING = object()
# Loss hyper-parameters: rows differ in these by design (top-level shorthands included).
LOSS_KEYS = ("seed", "weight", "gamma", "beta")
LOSS_PREFIXES = ("loss.",)


def lookup(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return MISSING
    return node


def equal(want: Any, have: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have if isinstance(want, bool) and isinstance(have, bool) else False
    if isinstance(want, (int, float)) and isinstance(have, (int, float)):
        return math.isclose(float(want), float(have), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(want, (list, tuple)) and isinstance(have, (list, tuple)):
        return len(want) == len(have) and all(equal(a, b) for a, b in zip(want, have))
    return want == have


def matches(cfg: dict, match: dict[str, Any]) -> bool:
    for key, want in match.items():
        have = lookup(cfg, key)
        if want is None:
            if have is not MISSING and have is not None:
                return False
            continue
        if have is MISSING:
            return False
        if isinstance(want, list) and not isinstance(have, list):
            if not any(equal(w, have) for w in want):
                return False
        elif not equal(want, have):
            return False
    return True


def parse_where(items: Iterable[str]) -> dict[str, Any]:
    """``--where KEY=VALUE`` filters; VALUE is read as YAML (2.5 → float, true → bool)."""
    import yaml

    from bbrctl.errors import UserError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise UserError(f"--where {item!r} must be KEY=VALUE with a dotted config key, e.g. --where schedule.name=cpu_small")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key] = value
    return out


def _freeze(v: Any) -> Any:
    """A hashable, order-independent stand-in for a config value (lists → tuples)."""
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    return v


def flatten(cfg: dict) -> dict[str, Any]:
    """Dotted key → hashable leaf over the result-relevant part of ``cfg``."""
    skip = set(NON_RESULT_KEYS)
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            key = prefix + k if prefix else k
            if key in skip:
                continue
            if type(v) is dict and v:
                walk(v, key + ".")
            else:
                out[key] = _freeze(portable_value(key, v))
    walk(cfg, "")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def describe_diff(a: dict[str, Any], b: dict[str, Any], limit: int = 3) -> str:
    """``key=value_b`` for keys where flattened config ``b`` differs from ``a`` (for footnotes)."""
    keys = sorted(k for k in set(a) | set(b) if not equal(a.get(k, MISSING), b.get(k, MISSING)))
    parts = [f"{k}={_fmt(b[k]) if k in b else '(unset)'}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"+{len(keys) - limit} more")
    return ", ".join(parts) or "no config difference"


def _strip(cfg: dict, paths: Iterable[tuple[str, ...]]) -> dict:
    """``cfg`` without the given key paths; copies only the nodes on those paths."""
    out = dict(cfg)
    for parts in paths:
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if type(child) is not dict:
                break
            child = dict(child)
            node[p] = child
            node = child
        else:
            node.pop(parts[-1], None)
    return out


def _missing_str(v: Any) -> str:
    return "<missing>" if v is MISSING else str(v)


def _key_of(cfg: dict, paths: list[tuple[str, ...]]) -> str:
    # One C-level json.dumps per run: flattening every config in Python costs ~10x more.
    return json.dumps(_strip(cfg, paths), sort_keys=True, separators=(",", ":"), default=str)


@dataclass
class Group:
    """Runs of one configuration that differ only in the seed (one per signature)."""
    key: str
    runs: list[Run] = field(default_factory=list)
    _flat: dict[str, Any] | None = None

    @property
    def flat(self) -> dict[str, Any]:
        """The group's result-relevant config, flattened (computed on demand, for notes)."""
        if self._flat is None:
            self._flat = flatten(self.runs[0].config)
            self._flat.pop("seed", None)
        return self._flat

    @property
    def created(self) -> float:
        return max((r.created for r in self.runs), default=0.0)

    @property
    def n_done(self) -> int:
        return sum(r.state == "done" for r in self.runs)

    def add(self, run: Run) -> None:
        for i, other in enumerate(self.runs):
            if other.signature == run.signature:
                # The same job in two places: keep the finished (then newer) one.
                if (run.state == "done", run.created) > (other.state == "done", other.created):
                    self.runs[i] = run
                return
        self.runs.append(run)


def _group_rank(g: Group) -> tuple:
    return (g.n_done, len(g.runs), g.created, g.key)


@dataclass
class Selection:
    chosen: dict[Hashable, Group]                          # slot → the group shown
    alternatives: dict[Hashable, list[tuple[Group, str]]]  # slot → other groups (with their diff)
    other_contexts: list[tuple[int, str]]                  # (slots covered, diff) of contexts not shown


def select(runs: Iterable[Run], slots_of: Callable[[Run], list[Hashable]],
           exclude_keys: Iterable[str] = (), exclude_prefixes: Iterable[str] = ()) -> Selection:
    """Assign runs (outcomes loaded) to slots (rows, or (series, x) points) under one context."""
    ex_keys = set(LOSS_KEYS) | set(exclude_keys)
    ex_prefixes = tuple(LOSS_PREFIXES) + tuple(exclude_prefixes)
    base_paths = [tuple(k.split(".")) for k in NON_RESULT_KEYS]
    rest_paths = sorted({tuple(k.split(".")) for k in ex_keys if k != "seed"} |
                        {tuple(p.rstrip(".").split(".")) for p in ex_prefixes})
    # A path inside another excluded path is already part of it.
    rest_paths = [p for p in rest_paths if not any(q != p and p[:len(q)] == q for q in rest_paths)]
    ctx_paths = base_paths + [("seed",)] + rest_paths

    def ctx_view(cfg: dict) -> dict[str, Any]:
        return {k: v for k, v in flatten(cfg).items() if k not in ex_keys and not k.startswith(ex_prefixes)}

    # context key → slot → group key → Group
    contexts: dict[str, dict[Hashable, dict[str, Group]]] = {}
    ctx_config: dict[str, dict] = {}
    for run in runs:
        slots = slots_of(run)
        if not slots:
            continue
        cfg = run.config
        ckey = _key_of(cfg, ctx_paths)
        # The group key is the context plus the (small) parts the context leaves out.
        rest = {".".join(p): lookup(cfg, ".".join(p)) for p in rest_paths}
        gkey = ckey + "|" + json.dumps(rest, sort_keys=True, separators=(",", ":"), default=_missing_str)
        ctx_config.setdefault(ckey, cfg)
        for slot in slots:
            groups = contexts.setdefault(ckey, {}).setdefault(slot, {})
            if gkey not in groups:
                groups[gkey] = Group(key=gkey)
            groups[gkey].add(run)

    def ctx_rank(item):
        ckey, slots = item
        groups = [g for gs in slots.values() for g in gs.values()]
        return (sum(any(g.n_done for g in gs.values()) for gs in slots.values()), len(slots),
                sum(g.n_done for g in groups), max((g.created for g in groups), default=0.0), ckey)

    if not contexts:
        return Selection({}, {}, [])
    ranked = sorted(contexts.items(), key=ctx_rank, reverse=True)
    best_key, best_slots = ranked[0]
    chosen: dict[Hashable, Group] = {}
    alternatives: dict[Hashable, list[tuple[Group, str]]] = {}
    for slot, groups in best_slots.items():
        order = sorted(groups.values(), key=_group_rank, reverse=True)
        chosen[slot] = order[0]
        if len(order) > 1:
            alternatives[slot] = [(g, describe_diff(order[0].flat, g.flat)) for g in order[1:]]
    others = []
    if len(ranked) > 1:
        best_view = ctx_view(ctx_config[best_key])
        others = [(len(slots), describe_diff(best_view, ctx_view(ctx_config[ckey]))) for ckey, slots in ranked[1:]]
    return Selection(chosen, alternatives, others)


def row_exclusions(matches_: Iterable[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """Keys (and ``<node>.`` prefixes for ``<node>.name`` keys) the rows select on."""
    keys: set[str] = set()
    prefixes: set[str] = set()
    for m in matches_:
        for k in m:
            keys.add(k)
            if k.endswith(".name") and k.count(".") >= 1:
                prefixes.add(k[: -len("name")])
    return keys, prefixes
