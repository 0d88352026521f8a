"""The measured seed noise of a setting, from ``bbrctl/data/seed_study.yaml``.

A table whose rows have one seed each cannot tell a gain from seed noise by itself. The
seed study holds per-seed results of a few rows run with several seeds in one setting
(its date, machine, thread count, torch version and commit beside them); the report
pools their within-row spread into σ (:func:`bbrctl.report.stats.pooled_std`, per metric)
and compares single-seed differences against it (:func:`bbrctl.report.stats.noise`).

A study applies to a table when its ``table`` names the table's definition and every run
shown in the table matches its ``match`` (dotted config keys, as in report definitions):
noise measured in one setting says nothing about another (COCO, another schedule or
backbone), and the report then says that no study covers the setting.

Only PyYAML is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

STUDY_FILE = Path(__file__).resolve().parent.parent / "data" / "seed_study.yaml"


@dataclass(frozen=True)
class SeedStudy:
    id: str
    table: str
    match: dict[str, Any]
    metric: str
    rows: dict[str, dict[str, list[float]]]       # row id -> metric -> per-seed values
    seeds: dict[str, list[Any]]                   # row id -> seeds, aligned with the values
    meta: dict[str, Any] = field(default_factory=dict)  # date, machine, load, threads, commit, torch, command

    def sigma(self, column: str) -> tuple[float, int] | None:
        """(pooled σ, degrees of freedom) of ``column`` over the study's rows, or None."""
        from bbrctl.report.stats import pooled_std

        groups = [vals[column] for vals in self.rows.values() if len(vals.get(column, [])) >= 2]
        if not groups:
            return None
        return pooled_std(groups)

    def describe(self) -> str:
        m = self.meta
        n = sorted({len(s) for s in self.seeds.values()})
        seeds = "/".join(str(k) for k in n)
        parts = [f"seed study {self.id}", f"{seeds} seeds of {', '.join(self.rows)}"]
        for key, label in (("date", ""), ("machine", ""), ("threads", "threads "), ("torch", "torch "),
                           ("commit", "commit ")):
            if m.get(key) not in (None, ""):
                parts.append(f"{label}{m[key]}")
        return "; ".join(parts)


def _parse(raw: Any, where: str) -> list[SeedStudy]:
    if not isinstance(raw, dict) or not isinstance(raw.get("studies"), list):
        raise ValueError(f"{where}: expected a mapping with a list 'studies'")
    out = []
    for i, s in enumerate(raw["studies"]):
        if not isinstance(s, dict) or not isinstance(s.get("rows"), dict):
            raise ValueError(f"{where}: studies[{i}] needs id, table, match and rows")
        rows, seeds = {}, {}
        for rid, r in s["rows"].items():
            seeds[str(rid)] = list(r.get("seeds") or [])
            rows[str(rid)] = {k: [float(v) for v in vals] for k, vals in r.items()
                              if k != "seeds" and isinstance(vals, list)}
            for k, vals in rows[str(rid)].items():
                if len(vals) != len(seeds[str(rid)]):
                    raise ValueError(f"{where}: studies[{i}].rows.{rid}.{k} has {len(vals)} values for "
                                     f"{len(seeds[str(rid)])} seeds")
        meta = {k: v for k, v in s.items() if k not in ("id", "table", "match", "metric", "rows")}
        out.append(SeedStudy(id=str(s.get("id", i)), table=str(s.get("table", "")), match=dict(s.get("match") or {}),
                             metric=str(s.get("metric", "bbox")), rows=rows, seeds=seeds, meta=meta))
    return out


@lru_cache(maxsize=None)
def studies(path: str | None = None) -> tuple[SeedStudy, ...]:
    """Every seed study in the shipped file (or ``path``); empty if the file is absent."""
    import yaml

    p = Path(path) if path else STUDY_FILE
    if not p.is_file():
        return ()
    with open(p, "rb") as f:
        raw = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return tuple(_parse(raw, str(p)))


def study_for(table: str, metric: str, configs: Iterable[dict], path: str | None = None) -> SeedStudy | None:
    """The first study of ``table`` and ``metric`` whose match every config satisfies."""
    from bbrctl.report.matching import matches

    configs = list(configs)
    if not configs:
        return None
    for s in studies(path):
        if s.table == table and s.metric == metric and all(matches(c, s.match) for c in configs):
            return s
    return None
