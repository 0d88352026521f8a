"""The search space of a study, in the grammar Hydra's Optuna sweeper reads.

``gamma=interval(0.1,2.0)``   a float in [0.1, 2.0] (Hydra's grammar makes both ends floats, so an
                             integer key is searched with range() instead)
``weight=tag(log,interval(0.5,5))``  the same, sampled on a log scale
``loss=choice(eiou,focal_eiou)`` or ``loss=eiou,focal_eiou``   a categorical parameter
``seed=range(0,4)``          integers 0..3: ``range`` means what it means in `bbrctl sweep`
                             (stop excluded; Hydra's Optuna sweeper hands its stop to Optuna
                             as an included bound, its grid sampler excludes it)
anything else (``schedule.max_iter=40``, ``+experiment=x``)   a fixed override, as `sweep` takes it

Overrides are parsed by Hydra's own parser (bbrctl.sweep.parse_overrides), so a key, a
group option or a quoted value means here exactly what it means in `bbrctl sweep`. Every
point of the space is checked by the schema before anything exists
(:func:`validate_space`): each choice, both ends of every interval, crossed over the
parameters, composed and validated like a sweep's jobs (bbrctl.sweep.expand). A schema
range is an interval, so a box whose corners are valid holds only valid points.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from bbrctl.errors import UserError
from bbrctl.sweep import expand, parse_overrides

# Crossing every corner of the space through the schema stops being cheap somewhere past this.
_MAX_CORNERS = 512


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` float | int (low, high, log, step) or categorical (choices)."""

    key: str                         # the override key as typed (``+detector``, ``gamma``)
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    text: str = ""                   # the override as typed, for messages and the study spec

    @property
    def name(self) -> str:
        """The Optuna parameter name: the key without Hydra's ``+``/``~`` prefix."""
        return self.key.lstrip("+~")

    def points(self) -> list:
        """The values the schema check composes: each choice, or both ends of the range."""
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low] if self.low == self.high else [self.low, self.high]

    def grid(self) -> list:
        """Every value, for the grid sampler (which needs a finite space)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.step is None:
            raise UserError(f"--sampler grid needs a finite space: {self.text!r} is an interval; use "
                            "choice(...) or range(...) for it, or another sampler")
        n = int(round((self.high - self.low) / self.step)) + 1
        return [self.low + i * self.step for i in range(n)]

    def override(self, value: Any) -> str:
        return f"{self.key}={_value_text(value)}"

    def describe(self) -> dict:
        d = {"key": self.key, "kind": self.kind, "text": self.text}
        if self.kind == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, log=self.log, step=self.step)
        return d


@dataclass
class SearchSpace:
    params: list[Param]
    fixed: list[str]                 # overrides every trial gets, as typed
    experiment: str | None = None
    preset: dict = field(default_factory=dict)   # the preset's sweep.tune block, if any

    def overrides(self, values: dict) -> list[str]:
        """The Hydra overrides of the trial whose parameters are ``values`` (by name)."""
        return [*self.fixed, *(p.override(values[p.name]) for p in self.params)]

    def to_optuna(self) -> dict:
        """{name: optuna distribution}."""
        from bbrctl.tune.optuna_import import optuna

        D = optuna().distributions
        out = {}
        for p in self.params:
            if p.kind == "categorical":
                out[p.name] = D.CategoricalDistribution(list(p.choices))
            elif p.kind == "int":
                out[p.name] = D.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
            else:
                out[p.name] = D.FloatDistribution(float(p.low), float(p.high), log=p.log,
                                                  step=None if p.step is None else float(p.step))
        return out

    def grid(self) -> dict:
        return {p.name: p.grid() for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


def parse_space(overrides: Sequence[str], config_dirs: Sequence[str | os.PathLike] = ()) -> SearchSpace:
    """Split ``overrides`` into searched parameters and fixed overrides (nothing composed yet).

    The preset (``+experiment=x``) may hold its own search space as ``sweep.tune.params``
    (Hydra sweep strings by key, like ``sweep.params`` for `bbrctl sweep`); a key typed on
    the command line replaces the preset's.
    """
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer

    typed = [str(o) for o in overrides]
    parsed = parse_overrides(typed, config_dirs)
    experiment, preset = _preset(parsed, config_dirs)
    if preset.get("params") is not None and not isinstance(preset.get("params"), dict):
        raise UserError(f"preset {experiment}: sweep.tune.params must map keys to search strings like "
                        "\"interval(0.1,2.0)\"")
    preset_strings = [f"{k}={v}" for k, v in (preset.get("params") or {}).items()]
    typed_keys = {o.get_key_element() for o in parsed}
    all_parsed = [o for o in parse_overrides(preset_strings, config_dirs) if o.get_key_element() not in typed_keys]
    all_parsed += parsed

    # A key given twice: the last one counts (as in `bbrctl sweep`, whatever the two are).
    last = {o.get_key_element().lstrip("+~"): i for i, o in enumerate(all_parsed)}
    params: list[Param] = []
    fixed: list[str] = []
    for i, o in enumerate(all_parsed):
        key = o.get_key_element()
        if last[key.lstrip("+~")] != i:
            continue
        if key.lstrip("+~") in ("launcher", "runs_root") and o.is_sweep_override():
            raise UserError(f"`{key}` cannot be searched: a study has one launcher and one runs directory")
        if not o.is_sweep_override():
            if o.key_or_group == "experiment" and o.package is None:
                fixed.append(f"+experiment={o.get_value_element_as_str()}")
            else:
                fixed.append(o.input_line)
            continue
        if o.key_or_group.split(".")[0] in ("experiment", "sweep"):
            raise UserError(f"`{key}` cannot be searched (got {o.input_line!r})")
        value = o.value()
        if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
            choices = tuple(o.sweep_iterator(transformer=Transformer.encode))
            for c in choices:
                if not isinstance(c, (str, int, float, bool, type(None))):
                    raise UserError(f"{o.input_line!r}: a choice must be a number, a string, true/false or null, "
                                    f"got {c!r}")
            if not choices:
                raise UserError(f"override {o.input_line!r} gives no values")
            if len(set(map(repr, choices))) != len(choices):
                raise UserError(f"override {o.input_line!r} lists a value twice")
            params.append(Param(key, "categorical", choices=choices, text=o.input_line))
        elif isinstance(value, RangeSweep):
            vals = list(o.sweep_iterator())
            if not vals:
                raise UserError(f"override {o.input_line!r} gives no values (range stops before it starts)")
            kind = "int" if all(isinstance(v, int) for v in vals) else "float"
            step = value.step if len(vals) > 1 else 1
            params.append(Param(key, kind, low=vals[0], high=vals[-1], step=step, text=o.input_line))
        elif isinstance(value, IntervalSweep):
            lo, hi = value.start, value.end
            log = "log" in (value.tags or set())
            unknown = set(value.tags or ()) - {"log"}
            if unknown:
                raise UserError(f"{o.input_line!r}: unknown tag(s) {', '.join(sorted(unknown))}; the only tag "
                                "the search reads is log")
            if lo > hi:
                raise UserError(f"{o.input_line!r}: the interval's start {lo} is above its end {hi}")
            if log and lo <= 0:
                raise UserError(f"{o.input_line!r}: a log interval needs a start above 0, got {lo}")
            kind = "int" if isinstance(lo, int) and isinstance(hi, int) else "float"
            params.append(Param(key, kind, low=lo, high=hi, log=log, text=o.input_line))
        else:
            raise UserError(f"{o.input_line!r}: glob() is not a search space; use choice(...) for the options "
                            "to search")
    if not params:
        raise UserError("nothing to search: give at least one key as interval(a,b), choice(a,b,...) or range(a,b), "
                        "e.g. gamma=interval(0.1,2.0)")
    return SearchSpace(params=params, fixed=fixed, experiment=experiment, preset=preset)


def _preset(parsed: list, config_dirs) -> tuple[str | None, dict]:
    """The preset named by ``+experiment=x`` and its ``sweep.tune`` block (refusing ``sweep.params``)."""
    from bbrctl import config as C

    exp = next((o for o in parsed if o.key_or_group == "experiment" and o.package is None), None)
    if exp is None:
        return None, {}
    if exp.is_sweep_override():
        raise UserError(f"`experiment` cannot be searched: run one preset per study (got {exp.input_line!r})")
    name = str(exp.value())
    base = C.to_plain(C.compose([f"+experiment={exp.get_value_element_as_str()}"], config_dirs, resolve=False,
                                validate=False))
    node = base.get("sweep") or {}
    if node.get("params"):
        raise UserError(f"preset {name} is a sweep (sweep.params); `bbrctl tune` takes a preset with sweep.tune "
                        f"(run `bbrctl sweep +experiment={name}` for this one)")
    tune = node.get("tune") or {}
    if not isinstance(tune, dict):
        raise UserError(f"preset {name}: sweep.tune must be a mapping (params, trials, ...)")
    return name, dict(tune)


def validate_space(space: SearchSpace, config_dirs: Sequence[str | os.PathLike] = (), *, study: str,
                   runs_root=None):
    """Compose and schema-check every corner of the space; return the corners' sweep plan.

    Each parameter contributes its ``points()``; they are crossed (every cross-field rule
    sees every combination) unless that passes _MAX_CORNERS, when each parameter's points
    are checked with the others at their first point. Raises a one-line UserError naming
    the value the schema refuses.
    """
    per = [[_value_text(x) for x in p.points()] for p in space.params]
    if math.prod(len(v) for v in per) <= _MAX_CORNERS:
        batches = [[f"{p.key}={','.join(v)}" for p, v in zip(space.params, per)]]
    else:
        batches = [[f"{p.key}={','.join(v) if i == j else v[0]}" for j, (p, v) in enumerate(zip(space.params, per))]
                   for i in range(len(per))]
    try:
        for b in batches:
            plan = expand([*space.fixed, *b], config_dirs, name=study, runs_root=runs_root)
    except UserError as e:
        raise UserError(f"the search space leaves what the schema allows: {e}") from None
    return plan
