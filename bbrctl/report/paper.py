"""The paper's published numbers (Tables 1-3), from ``bbrctl/data/paper_results.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PAPER_FILE = Path(__file__).resolve().parent.parent / "data" / "paper_results.yaml"


@dataclass(frozen=True)
class PaperRow:
    id: str
    labels: tuple[str, ...]
    values: dict[str, float]
    notes: dict[str, str] = field(default_factory=dict)   # cell (a column, or "n" for the row) -> footnote, e.g. a likely typo


@dataclass(frozen=True)
class PaperTable:
    id: str
    caption: str
    setting: str
    columns: tuple[str, ...]
    rows: dict[str, PaperRow]


@lru_cache(maxsize=None)
def paper_tables(path: str | None = None) -> dict[str, PaperTable]:
    """Every published table by id (``table1``...). Values in percent, exactly as printed."""
    import yaml

    with open(path or PAPER_FILE, "rb") as f:
        raw = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    out: dict[str, PaperTable] = {}
    for tid, t in raw["tables"].items():
        cols = tuple(t["columns"])
        rows = {}
        for r in t["rows"]:
            if len(r["values"]) != len(cols):
                raise ValueError(f"{path or PAPER_FILE}: {tid}.{r['id']} has {len(r['values'])} values for {len(cols)} columns")
            rows[r["id"]] = PaperRow(r["id"], tuple(r["labels"]), {c: float(v) for c, v in zip(cols, r["values"])},
                                     {str(k): str(v) for k, v in (r.get("notes") or {}).items()})
        out[tid] = PaperTable(tid, t.get("caption", ""), t.get("setting", ""), cols, rows)
    return out


def source() -> str:
    import yaml

    with open(PAPER_FILE, "rb") as f:
        return str(yaml.safe_load(f).get("source", ""))
