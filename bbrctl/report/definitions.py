"""Table and figure definitions: which runs make which row, read from ``report/*.yaml``.

A definition is a YAML file in the ``report/`` folder of the shipped config tree
(``conf/report/``) or of a user's config directory (``--config-dir``/``BBRCTL_CONFIG_PATH``;
a user's file of the same name wins). ``--table 1`` finds ``table1.yaml`` (or ``1.yaml``),
``--figure 9a`` finds ``figure9a.yaml``. Three kinds:

- ``kind: table``  rows of label cells + metric columns; each row has a ``match`` of dotted
  config keys → values, ANDed with the table's ``match``; a row's ``baseline`` (a row id)
  gives its Δ column, and ``compare: [row id, ...]`` adds one Δ column per id, every other
  row against that one (``conf/report/zoo.yaml``: against the baseline and Focal-EIoU).
- ``kind: figure`` series × x value → one metric (Figure 9).
- ``kind: simulation`` the newest ``bbrctl simulate --setup N`` output (Figures 7, 8).

Only PyYAML is imported (no Hydra/OmegaConf): the report must start fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bbrctl.errors import UserError

KINDS = ("table", "figure", "simulation")
PREFIX = {"table": "table", "figure": "figure", "simulation": "figure"}


@dataclass(frozen=True)
class Row:
    id: str
    labels: tuple[str, ...]
    match: dict[str, Any]
    baseline: str | None = None     # row id the Δ column compares against
    paper: str | None = None        # row id in the paper table (``id`` unless given; null: the paper has no such row)
    paper_only: str | None = None   # reason we cannot run it; shown only with --paper


@dataclass(frozen=True)
class TableDef:
    name: str
    title: str
    rows: tuple[Row, ...]
    label_columns: tuple[str, ...] = ("Method",)
    metric: str = "bbox"
    columns: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    delta: str | None = "AP"
    match: dict[str, Any] = field(default_factory=dict)
    paper: str | None = None
    hint: str | None = None
    source: str = ""
    kind: str = "table"
    # label column -> dotted config key: a row whose runs ran another value of that key
    # than the first its match names (the paper's) shows the value they ran in that cell
    # (Table 3: resnet_tiny runs are not labelled ResNet-50-FPN).
    ran_labels: dict[str, str] = field(default_factory=dict)
    # Row ids every other row is also compared with: one more Δ column each (``compare:``).
    compare: tuple[str, ...] = ()


@dataclass(frozen=True)
class Series:
    id: str
    label: str
    match: dict[str, Any]


@dataclass(frozen=True)
class FigureDef:
    name: str
    title: str
    x: str
    series: tuple[Series, ...]
    y: str = "AP"
    metric: str = "bbox"
    x_label: str = ""
    match: dict[str, Any] = field(default_factory=dict)
    reference: Series | None = None
    hint: str | None = None
    source: str = ""
    kind: str = "figure"


@dataclass(frozen=True)
class SimulationDef:
    name: str
    title: str
    setup: int
    hint: str | None = None
    source: str = ""
    kind: str = "simulation"


def _yaml_load(path: Path) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, "rb") as f:
            return yaml.load(f, Loader=loader)
    except yaml.YAMLError as e:
        raise UserError(f"report definition {path} is not valid YAML: {' '.join(str(e).split())}") from None


def report_dirs(config_dirs: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Folders searched for definitions, highest priority first (the user's before ours)."""
    from bbrctl.config import package_config_dir, user_config_dirs

    dirs = [d / "report" for d in user_config_dirs(config_dirs)]
    dirs.append(package_config_dir() / "report")
    return [d for d in dirs if d.is_dir()]


def available(config_dirs: Iterable[str | os.PathLike] = ()) -> dict[str, Path]:
    """Every definition file by stem (``table1``), user files shadowing shipped ones."""
    found: dict[str, Path] = {}
    for d in reversed(report_dirs(config_dirs)):
        for p in sorted(d.glob("*.yaml")):
            found[p.stem] = p
    return dict(sorted(found.items()))


def listing(config_dirs: Iterable[str | os.PathLike] = ()) -> list[tuple[str, str, str, Path]]:
    """(kind, key to type, title, file) for every definition, e.g. ("table", "1", ...)."""
    out = []
    for stem, path in available(config_dirs).items():
        raw = _yaml_load(path)
        kind = raw.get("kind", "table") if isinstance(raw, dict) else "?"
        title = raw.get("title", stem) if isinstance(raw, dict) else "(not a mapping)"
        prefix = PREFIX.get(kind, "")
        key = stem[len(prefix):] if prefix and stem.startswith(prefix) and len(stem) > len(prefix) else stem
        out.append((kind, key, str(title), path))
    return out


def load(what: str, key: str, config_dirs: Iterable[str | os.PathLike] = ()):
    """The definition that ``--table KEY`` (what="table") or ``--figure KEY`` names."""
    key = str(key).strip()
    files = available(config_dirs)
    wanted = ("table",) if what == "table" else ("figure", "simulation")
    for stem in (f"{what}{key}", key):
        path = files.get(stem)
        if path is None:
            continue
        defn = parse(_yaml_load(path), stem, path)
        if defn.kind not in wanted:
            raise UserError(f"{path} defines a {defn.kind}, not a {what}; use --{'table' if defn.kind == 'table' else 'figure'} {key}")
        return defn
    valid = [k for kind, k, _, _ in listing(config_dirs) if (kind == "table") == (what == "table")]
    raise UserError(f"unknown {what} {key!r}; valid {what}s: {', '.join(valid) or 'none'} "
                    f"(definitions live in conf/report/; add your own with --config-dir DIR holding report/<name>.yaml)")


def parse(raw: Any, name: str, path: Path | str = "<memory>"):
    """Validate a definition's raw YAML mapping; one-line UserError naming the file and field."""
    where = str(path)
    if not isinstance(raw, dict):
        raise UserError(f"report definition {where} must be a mapping with kind: {'|'.join(KINDS)}")
    kind = raw.get("kind", "table")
    if kind not in KINDS:
        raise UserError(f"report definition {where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    title = str(raw.get("title") or name)
    hint = raw.get("hint")
    if kind == "simulation":
        setup = raw.get("setup")
        if not isinstance(setup, int) or isinstance(setup, bool):
            raise UserError(f"report definition {where}: setup must be an integer (the simulate --setup), got {setup!r}")
        return SimulationDef(name=name, title=title, setup=setup, hint=hint, source=where)
    match = _match(raw.get("match"), where, "match")
    metric = _str(raw.get("metric", "bbox"), where, "metric")
    if kind == "figure":
        series_raw = raw.get("series")
        if not isinstance(series_raw, list) or not series_raw:
            raise UserError(f"report definition {where}: series must be a non-empty list of {{id, label, match}}")
        series = tuple(_series(s, where, f"series[{i}]") for i, s in enumerate(series_raw))
        _unique([s.id for s in series], where, "series")
        ref = raw.get("reference")
        reference = _series({"id": "reference", **ref}, where, "reference") if isinstance(ref, dict) else None
        if ref is not None and reference is None:
            raise UserError(f"report definition {where}: reference must be a mapping {{label, match}}")
        return FigureDef(name=name, title=title, x=_str(raw.get("x"), where, "x"), series=series,
                         y=_str(raw.get("y", "AP"), where, "y"), metric=metric,
                         x_label=str(raw.get("x_label") or raw.get("x")), match=match,
                         reference=reference, hint=hint, source=where)
    label_columns = tuple(_str(c, where, "label_columns") for c in _list(raw.get("label_columns", ["Method"]), where, "label_columns"))
    columns = tuple(_str(c, where, "columns") for c in _list(raw.get("columns", list(TableDef.columns)), where, "columns"))
    if not columns:
        raise UserError(f"report definition {where}: columns must name at least one metric (e.g. AP)")
    delta = raw.get("delta", "AP" if "AP" in columns else None)
    if delta is not None and delta not in columns:
        raise UserError(f"report definition {where}: delta {delta!r} is not one of the columns {', '.join(columns)}")
    rows_raw = raw.get("rows")
    if not isinstance(rows_raw, list) or not rows_raw:
        raise UserError(f"report definition {where}: rows must be a non-empty list of {{id, labels, match}}")
    default_base = raw.get("baseline")
    rows = tuple(_row(r, i, where, len(label_columns), default_base) for i, r in enumerate(rows_raw))
    ids = [r.id for r in rows]
    _unique(ids, where, "row")
    for r in rows:
        if r.baseline is not None and r.baseline not in ids:
            raise UserError(f"report definition {where}: row {r.id!r} has baseline {r.baseline!r}, "
                            f"which is not a row id; valid: {', '.join(ids)}")
    ran = raw.get("ran_labels") or {}
    if not isinstance(ran, dict) or any(c not in label_columns or not isinstance(k, str) for c, k in ran.items()):
        raise UserError(f"report definition {where}: ran_labels must map label columns "
                        f"({', '.join(label_columns)}) to dotted config keys, got {ran!r}")
    compare = tuple(_str(c, where, "compare") for c in _list(raw.get("compare", []), where, "compare"))
    for c in compare:
        if c not in ids:
            raise UserError(f"report definition {where}: compare names {c!r}, which is not a row id; "
                            f"valid: {', '.join(ids)}")
    if compare and delta is None:
        raise UserError(f"report definition {where}: compare needs a delta column (e.g. delta: AP)")
    return TableDef(name=name, title=title, rows=rows, label_columns=label_columns, metric=metric,
                    columns=columns, delta=delta, match=match, paper=raw.get("paper"), hint=hint, source=where,
                    ran_labels=dict(ran), compare=compare)


def _row(raw: Any, i: int, where: str, n_labels: int, default_base: str | None) -> Row:
    if not isinstance(raw, dict):
        raise UserError(f"report definition {where}: rows[{i}] must be a mapping {{id, labels, match}}")
    rid = _str(raw.get("id"), where, f"rows[{i}].id")
    labels = raw.get("labels", raw.get("label", rid))
    labels = tuple(str(x) for x in (labels if isinstance(labels, list) else [labels]))
    if len(labels) != n_labels:
        raise UserError(f"report definition {where}: row {rid!r} has {len(labels)} labels, "
                        f"but the table has {n_labels} label columns")
    paper_only = raw.get("paper_only")
    if paper_only is True:
        paper_only = "not run here"
    match = _match(raw.get("match"), where, f"row {rid!r} match")
    if not match and not paper_only:
        raise UserError(f"report definition {where}: row {rid!r} needs a match (e.g. {{loss.name: eiou}}) or paper_only: <reason>")
    base = raw.get("baseline", default_base)
    if base == rid:
        base = None
    paper = raw.get("paper", rid)
    return Row(id=rid, labels=labels, match=match, baseline=base, paper=None if paper is None else str(paper),
               paper_only=str(paper_only) if paper_only else None)


def _series(raw: Any, where: str, what: str) -> Series:
    if not isinstance(raw, dict):
        raise UserError(f"report definition {where}: {what} must be a mapping {{id, label, match}}")
    sid = _str(raw.get("id"), where, f"{what}.id")
    match = _match(raw.get("match"), where, f"{what}.match")
    if not match:
        raise UserError(f"report definition {where}: {what} needs a match, e.g. {{loss.name: eiou}}")
    return Series(id=sid, label=str(raw.get("label", sid)), match=match)


def _match(raw: Any, where: str, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and k for k in raw):
        raise UserError(f"report definition {where}: {what} must map dotted config keys to values, e.g. {{loss.name: eiou}}")
    for k, v in raw.items():
        if isinstance(v, dict):
            raise UserError(f"report definition {where}: {what} value for {k!r} must be a scalar or list, not a mapping")
    return dict(raw)


def _str(v: Any, where: str, what: str) -> str:
    if v is None or isinstance(v, (dict, list)) or str(v) == "":
        raise UserError(f"report definition {where}: {what} must be a non-empty string, got {v!r}")
    return str(v)


def _list(v: Any, where: str, what: str) -> list:
    if not isinstance(v, list):
        raise UserError(f"report definition {where}: {what} must be a list, got {v!r}")
    return v


def _unique(ids: list[str], where: str, what: str) -> None:
    seen = set()
    for i in ids:
        if i in seen:
            raise UserError(f"report definition {where}: duplicate {what} id {i!r}")
        seen.add(i)
