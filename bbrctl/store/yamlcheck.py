"""YAML that someone else may have written, read with bounds: one line for anything wrong.

Used for the files of a user's ``--config-dir`` (checked before Hydra reads them) and for a
run directory's ``config.yaml``. Refused, each with one UserError line naming the file:
bytes that are not UTF-8, YAML syntax errors (an unclosed bracket, a tab as indentation),
duplicate keys, tags that build objects (``!!python/object``: the safe loader refuses them),
nesting deeper than :data:`MAX_DEPTH`, and aliases that would expand to more than
:data:`MAX_NODES` nodes (an "anchor bomb": a few lines that would grow to gigabytes once
copied into a config).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bbrctl.errors import UserError

MAX_NODES = 200_000         # far above any real config (the full config has ~600 nodes)
MAX_DEPTH = 64
MAX_BYTES = 4 << 20


class BadYaml(UserError):
    pass


def _where(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{what}{at}".split())[:160]


def load_text(text: str, where: str) -> Any:
    """The data of YAML ``text``, checked as the module doc says; BadYaml naming ``where``."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise BadYaml(f"{where} is YAML nested too deeply (more than {MAX_DEPTH} levels)") from None
    except yaml.YAMLError as e:
        raise BadYaml(f"{where} is not valid YAML ({_where(e)})") from None
    if node is None:
        return None
    _check(node, where)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:      # a tag the safe loader does not build (!!python/object, ...)
        raise BadYaml(f"{where} is not valid YAML ({_where(e)}); bbrctl reads plain YAML only") from None
    except RecursionError:
        raise BadYaml(f"{where} is YAML nested too deeply (more than {MAX_DEPTH} levels)") from None


def load_file(path: str | os.PathLike) -> Any:
    """:func:`load_text` of the file at ``path`` (at most :data:`MAX_BYTES`, UTF-8)."""
    from bbrctl.store import safe

    path = Path(path)
    try:
        data = safe.read_bytes(path, limit=MAX_BYTES)
    except OSError as e:
        raise BadYaml(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadYaml(f"{path}: not UTF-8 text (byte {e.start}); a config file is YAML text") from None
    return load_text(text, str(path))


def _check(root, where: str) -> None:
    """Duplicate keys, depth and the expanded size, over the node graph (aliases shared)."""
    import yaml

    sizes: dict[int, int] = {}
    # Iterative post-order walk: a node's size is counted once however often it is aliased.
    stack: list[tuple[Any, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if id(node) in sizes:
            continue
        if depth > MAX_DEPTH:
            raise BadYaml(f"{where} is YAML nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(node, yaml.MappingNode):
            children = [x for kv in node.value for x in kv]
            keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
            dup = next((k for i, k in enumerate(keys) if k in keys[:i] and k != "<<"), None)
            if dup is not None:
                raise BadYaml(f"{where}: key {dup!r} appears twice in one mapping "
                              f"(line {node.start_mark.line + 1}); give each key once")
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            sizes[id(node)] = 1
            continue
        if not done:
            stack.append((node, depth, True))
            stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(c), 1) for c in children)
        if total > MAX_NODES:
            raise BadYaml(f"{where}: YAML expands to more than {MAX_NODES} values (aliases of aliases?); "
                          "refused")
        sizes[id(node)] = total
