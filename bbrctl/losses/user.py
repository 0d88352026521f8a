"""Users' own losses: three ways in, one registry (``bbrctl.losses.spec.SPECS``).

A user loss is a plain function ``fn(pred, target, weight=None, reduction="mean", **params)``
on decoded xyxy boxes (``space="boxes"``) or encoded deltas (``space="deltas"``), returning
per-pair values (N,) for ``reduction="none"`` and a scalar for "mean"/"sum". It enters by

1. a config file ``loss/<name>.yaml`` in a ``--config-dir`` whose ``loss`` group declares it::

       loss: {name: corner_l1, target: "mypkg.losses:corner_l1", space: boxes,
              params: {scale: 1.0}, param_ranges: {scale: [0.0, 10.0]}}

2. an entry point in the group ``bbrctl.losses`` of an installed package
   (``corner_l1 = "mypkg.losses:corner_l1"``); the function may carry the rest of that
   declaration as a dict attribute ``fn.bbrctl_loss = {"space": ..., "params": ...,
   "param_ranges": ..., "weight": ...}``;

3. ``register_loss(name, fn, space=..., params=..., param_ranges=...)`` from Python.

All three end in :func:`declare`, which refuses a name of a built-in loss, checks that each
declared parameter is a keyword of the function, and adds a ``LossSpec`` to ``SPECS``, so
``check_params``, ``get_loss``, config validation and every detector treat the loss as
they treat a built-in one. ``param_ranges`` maps a parameter to ``[low, high]`` (closed;
either side may be null); a parameter without a range accepts any finite number.

Contract with the rest of bbrctl: a composed config of a user loss always carries the
whole declaration in its ``loss`` group (``name, target, space, params, param_ranges``;
:func:`config_node` builds it for ways 2 and 3), so a job run in another process (the
local launcher's subprocess, a SLURM task) re-imports ``target`` and validates exactly as
the submitting process did; only a function whose module other processes can import is
usable that way (a function defined in ``__main__`` works only in the process that
registered it). The run signature adds :func:`code_id` (sha256 of the source file of the
target's module), so editing that file starts new runs.

Importing this module does not import torch; importing a user's target does whatever
that module does (usually import torch).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import re
import sys
from typing import Any, Callable, Mapping

from bbrctl.losses.spec import BOXES, DELTAS, LOSSES, SPECS, LossParamError, LossSpec, Param, check_params

ENTRY_POINT_GROUP = "bbrctl.losses"
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
SPACES = (BOXES, DELTAS)
# Keywords of the loss contract itself, never loss parameters.
CONTRACT = ("pred", "target", "weight", "reduction")
# Sec. 5.2's loss weights: 2.5 for losses on boxes (IoU family), 1.0 on deltas (l_n).
DEFAULT_WEIGHT = {BOXES: 2.5, DELTAS: 1.0}

_FUNCTIONS: dict[str, Callable] = {}        # user loss name -> its function
_TARGETS: dict[str, str | None] = {}        # user loss name -> "module:function" (None: not importable)
_WEIGHTS: dict[str, float] = {}


def is_user_loss(name: str) -> bool:
    return name in _FUNCTIONS


def function(name: str) -> Callable:
    """The registered function of a user loss (looked up through entry points if needed)."""
    if name not in _FUNCTIONS:
        find(name)
    if name not in _FUNCTIONS:
        raise LossParamError(f"unknown loss {name!r}; valid: {', '.join(SPECS)}")
    return _FUNCTIONS[name]


def target_of(name: str) -> str | None:
    return _TARGETS.get(name)


def import_target(target: Any, what: str = "loss.target") -> Callable:
    """Import ``"package.module:function"``; every way it can fail is one LossParamError line."""
    if not isinstance(target, str) or not TARGET.fullmatch(target):
        raise LossParamError(f"{what}={target!r} is not valid: must be 'package.module:function'")
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise LossParamError(f"{what}={target!r}: no module named {e.name!r} (install the package, or put "
                                 "its folder on PYTHONPATH)") from None
        raise LossParamError(f"{what}={target!r}: importing {module!r} failed: {_one_line(e)}") from None
    except Exception as e:      # the user's module raised while being imported
        raise LossParamError(f"{what}={target!r}: importing {module!r} raised {_one_line(e)}") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LossParamError(f"{what}={target!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise LossParamError(f"{what}={target!r} is not callable (a {type(obj).__name__}); it must name a "
                             "loss function fn(pred, target, weight=None, reduction='mean', **params)")
    return obj


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _as_params(name: str, fn: Callable, params: Mapping[str, Any] | None,
               ranges: Mapping[str, Any] | None) -> dict[str, Param]:
    """The loss's parameters: the function's keyword parameters with defaults, ``params`` over them.

    A parameter must be a named keyword of the function (``**kwargs`` declares none), so a
    misspelt one is refused instead of being swallowed.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    keywords = {} if sig is None else {k: p for k, p in sig.parameters.items()
                                       if k not in CONTRACT and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if params is not None and not isinstance(params, Mapping):
        raise LossParamError(f"loss {name!r}: params must map parameter names to default numbers, got {params!r}")
    # Keyword defaults that are numbers (or None) are parameters bbrctl can set and sweep;
    # others (strings, flags) stay the function's own business.
    merged: dict[str, Any] = {k: p.default for k, p in keywords.items()
                              if p.default is None or (isinstance(p.default, (int, float))
                                                       and not isinstance(p.default, bool))}
    merged.update({str(k): v for k, v in (params or {}).items()})
    ranges = dict(ranges or {})
    out: dict[str, Param] = {}
    for key, value in merged.items():
        if key not in keywords:
            valid = ", ".join(keywords) or "none"
            raise LossParamError(f"loss {name!r} declares parameter {key!r}, which its function does not take "
                                 f"as a keyword; its keyword parameters: {valid}")
        if isinstance(value, Param):
            out[key] = value
            continue
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise LossParamError(f"loss {name!r}: parameter {key}={value!r} must be a number (or null)")
        low, high = _range(name, key, ranges.pop(key, None))
        out[key] = Param(value, low, high, nullable=value is None, doc="user parameter")
    if ranges:
        extra = sorted(ranges)[0]
        raise LossParamError(f"loss {name!r}: param_ranges names {extra!r}, which is not one of its parameters "
                             f"({', '.join(out) or 'none'})")
    return out


def _range(name: str, key: str, r: Any) -> tuple[float | None, float | None]:
    if r is None:
        return None, None
    ok = isinstance(r, (list, tuple)) and len(r) == 2 and all(
        x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)) for x in r)
    if not ok or (r[0] is not None and r[1] is not None and r[0] > r[1]):
        raise LossParamError(f"loss {name!r}: param_ranges.{key}={r!r} is not valid: must be [low, high] "
                             "(numbers, low <= high; null for an open side)")
    return (None if r[0] is None else float(r[0])), (None if r[1] is None else float(r[1]))


def declare(name: Any, fn: Callable, space: Any, params: Mapping[str, Any] | None = None,
            param_ranges: Mapping[str, Any] | None = None, *, target: str | None = None, weight: Any = None,
            doc: str = "") -> LossSpec:
    """Add (or replace) a user loss in the registry; a one-line LossParamError if it is not valid."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise LossParamError(f"loss name {name!r} is not valid: 1-64 letters, digits and _, starting with a letter")
    if name in LOSSES or name == "baseline":
        raise LossParamError(f"loss name {name!r} is a built-in loss; give your loss another name "
                             f"(built-in: baseline, {', '.join(LOSSES)})")
    if not callable(fn):
        raise LossParamError(f"loss {name!r}: {fn!r} is not callable")
    if space not in SPACES:
        raise LossParamError(f"loss {name!r}: space={space!r} is not valid; valid: {', '.join(SPACES)}")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                               or not math.isfinite(weight) or weight < 0):
        raise LossParamError(f"loss {name!r}: weight={weight!r} must be a finite number >= 0")
    spec = LossSpec(name, space, _as_params(name, fn, params, param_ranges),
                    doc or (inspect.getdoc(fn) or "").split("\n")[0])
    previous = SPECS.get(name)
    SPECS[name] = spec
    try:        # each default within its declared range
        check_params(name, {k: p.default for k, p in spec.params.items() if p.default is not None})
    except LossParamError as e:
        if previous is None:
            del SPECS[name]
        else:
            SPECS[name] = previous
        raise

    _FUNCTIONS[name] = fn
    _TARGETS[name] = target if target is not None else _importable_target(fn)
    _WEIGHTS[name] = float(DEFAULT_WEIGHT[space] if weight is None else weight)
    return spec


def _importable_target(fn: Callable) -> str | None:
    """``module:qualname`` when importing it gives back ``fn`` (so other processes can), else None."""
    module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qual:
        return None
    mod = sys.modules.get(module)
    obj: Any = mod
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return f"{module}:{qual}" if obj is fn else None


def register_loss(name: str, fn: Callable, space: str = BOXES, params: Mapping[str, Any] | None = None,
                  param_ranges: Mapping[str, Any] | None = None, weight: float | None = None,
                  doc: str = "") -> LossSpec:
    """Register ``fn`` as loss ``name``: usable as ``get_loss(name)`` and ``loss=<name>`` afterwards.

    ``params``: parameter -> default (a number, or a ``Param`` with its range); None takes
    the function's keyword defaults. ``param_ranges``: parameter -> [low, high].
    ``weight``: the loss weight its config gets (default 2.5 on boxes, 1.0 on deltas).
    Jobs in other processes (sweeps, SLURM) re-import the function from its module, so
    define it in an importable module, not in ``__main__``.
    """
    return declare(name, fn, space, params, param_ranges, weight=weight, doc=doc)


def find(name: str) -> LossSpec | None:
    """The spec of loss ``name``: registered already, or from the ``bbrctl.losses`` entry points."""
    if name in SPECS:
        return SPECS[name]
    for ep in _entry_points():
        if ep.name == name:
            fn = import_target(ep.value, what=f"entry point {name!r} ({ENTRY_POINT_GROUP})")
            decl = getattr(fn, "bbrctl_loss", None) or {}
            if not isinstance(decl, Mapping):
                raise LossParamError(f"entry point {name!r}: {ep.value}.bbrctl_loss must be a dict with space, "
                                     "params, param_ranges, weight")
            return declare(name, fn, decl.get("space", BOXES), decl.get("params"), decl.get("param_ranges"),
                           target=ep.value, weight=decl.get("weight"))
    return None


def _entry_points():
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def entry_point_names() -> list[str]:
    """Names declared by installed packages (their modules are not imported)."""
    return sorted({ep.name for ep in _entry_points()})


def user_names() -> list[str]:
    return sorted(set(_FUNCTIONS) | set(entry_point_names()))


def from_config(loss: Mapping[str, Any]) -> LossSpec:
    """Declare the loss a config's ``loss`` group describes (its ``target`` is imported)."""
    name = loss.get("name")
    if name in LOSSES or name == "baseline":
        raise LossParamError(f"loss.name={name!r} with a loss.target: {name!r} is a built-in loss; give your "
                             "loss another name")
    target = loss.get("target")
    known = _TARGETS.get(name) if isinstance(name, str) else None
    if isinstance(name, str) and name in _FUNCTIONS and known is not None and known != target:
        raise LossParamError(f"loss.name={name!r} is already a loss from {known!r}; loss.target={target!r} "
                             "needs another name")
    fn = import_target(target)
    return declare(name, fn, loss.get("space"), loss.get("params"), loss.get("param_ranges"), target=target,
                   weight=_WEIGHTS.get(name) if isinstance(name, str) else None)


def config_node(name: str) -> dict | None:
    """The config a ``loss=<name>`` choice composes to for a registered/entry-point loss."""
    spec = find(name)
    if spec is None or name not in _FUNCTIONS:
        return None
    node: dict[str, Any] = {"name": name, "target": _TARGETS.get(name), "space": spec.space,
                            "params": {k: p.default for k, p in spec.params.items()}}
    ranges = {k: [p.low, p.high] for k, p in spec.params.items() if p.low is not None or p.high is not None}
    if ranges:
        node["param_ranges"] = ranges
    if node["target"] is None:
        del node["target"]      # in-process only: other processes cannot import it
    return {"loss": node, "weight": _WEIGHTS.get(name, DEFAULT_WEIGHT[spec.space])}


def code_id(target: str) -> str | None:
    """sha256 (16 hex digits) of the source file of ``target``'s module, found without importing it.

    None where there is no source file (a compiled or namespace module).
    """
    module = target.partition(":")[0]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec is not None else None
    if not origin or not origin.endswith(".py"):
        return None
    try:
        with open(origin, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        return None


def identity(loss: Mapping[str, Any]) -> dict | None:
    """What identifies a user loss in the run signature: its import path and its code.

    None for built-in losses (their signatures stay what they were).
    """
    name = loss.get("name")
    target = loss.get("target")
    if target is None:
        if not isinstance(name, str) or name in LOSSES or name == "baseline":
            return None
        if find(name) is None:
            return None
        target = _TARGETS.get(name)
        if target is None:      # registered in this process from __main__: its source, if any
            try:
                src = inspect.getsource(_FUNCTIONS[name])
            except (OSError, TypeError):
                src = repr(_FUNCTIONS[name])
            return {"target": None, "code": hashlib.sha256(src.encode()).hexdigest()[:16]}
    return {"target": str(target), "code": code_id(str(target))}


_PROBED: dict[tuple, None] = {}


def probe(name: str, params: Mapping[str, Any]) -> None:
    """Call a user loss once on fixed valid boxes (cached): one line if it fails or is not finite."""
    key = (name, _TARGETS.get(name), id(_FUNCTIONS.get(name)), tuple(sorted((k, repr(v)) for k, v in params.items())))
    if key in _PROBED:
        return
    from bbrctl.losses.probe import probe_loss

    probe_loss(name, _FUNCTIONS[name], SPECS[name].space, dict(params))
    _PROBED[key] = None


__all__ = ["ENTRY_POINT_GROUP", "register_loss", "declare", "find", "from_config", "config_node", "code_id",
           "identity", "probe", "import_target", "is_user_loss", "function", "user_names", "entry_point_names"]
