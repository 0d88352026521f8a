"""Imports point one way: no cycles among the package's modules, function-level imports included.

Layers (a module imports only from lower layers, or from its own package)::

    errors, redact, provenance  <-  store, losses, extras  <-  config  <-  detection, simulate, sweep
            <-  preflight, doctor, status, report  <-  train, evaluation, launch  <-  tune  <-  cli  <-  __main__
"""

from __future__ import annotations

import ast
from pathlib import Path

import bbrctl

PKG = Path(bbrctl.__file__).resolve().parent

RANK = {"errors": 0, "redact": 0, "plotting": 0, "provenance": 0, "extras": 1, "store": 1, "losses": 1, "config": 2, "detection": 3, "simulate": 3, "sweep": 3,
        "preflight": 4, "doctor": 4, "status": 4, "report": 4, "train": 5, "evaluation": 5, "launch": 5, "tune": 6, "cli": 7, "__main__": 8,
        "__init__": 0}


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["bbrctl", *parts])] = p
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """bbrctl modules imported anywhere in ``path`` (top level and inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bbrctl"):
                    found.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("bbrctl"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles():
    g = graph()
    # Tarjan's strongly connected components; any with more than one module is a cycle.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    for v in g:
        if v not in index:
            visit(v)
    assert [sorted(c) for c in sccs if len(c) > 1] == []


def test_imports_point_down_the_layers():
    bad = []
    for mod, deps in graph().items():
        a = layer(mod)
        for dep in deps:
            b = layer(dep)
            if a == b or dep == "bbrctl":
                continue
            if RANK[a] <= RANK[b]:
                bad.append(f"{mod} -> {dep}")
    assert bad == []


def test_every_module_has_a_layer():
    assert {layer(m) for m in modules()} <= set(RANK)
