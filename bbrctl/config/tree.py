"""Where configs come from: the shipped tree and the user's directories."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from bbrctl.errors import UserError

ENV = "BBRCTL_CONFIG_PATH"


def package_config_dir() -> Path:
    """The shipped config tree: bbrctl/conf in an installed wheel, conf/ in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return cand
    raise RuntimeError(f"bbrctl's config tree is missing (looked in {here / 'conf'} and {here.parent / 'conf'})")


def user_config_dirs(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """``--config-dir`` directories, then ``BBRCTL_CONFIG_PATH`` (os.pathsep-separated)."""
    dirs = [Path(p) for p in extra if str(p)]
    env = os.environ.get(ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"config directory {str(d)!r} does not exist")
    out = [d.resolve() for d in dirs]
    for d in out:
        check_yaml_files(d)
    return out


MAX_USER_FILES = 5000


def check_yaml_files(d: Path) -> None:
    """Every ``*.yaml`` of a user's config directory read with bounds before Hydra sees it
    (bbrctl.store.yamlcheck: one line for broken YAML, duplicate keys, object tags, deep
    nesting, anchor bombs, non-UTF-8 bytes). Unchanged files are checked once per process."""
    from bbrctl.store.yamlcheck import load_file

    files = []
    for i, p in enumerate(sorted(d.rglob("*.yaml"))):
        if i >= MAX_USER_FILES:
            raise UserError(f"config directory {str(d)!r} holds more than {MAX_USER_FILES} YAML files")
        try:
            st = p.stat()
        except OSError:
            continue
        files.append((str(p), st.st_mtime_ns, st.st_size))
    for key in files:
        if key not in _CHECKED:
            load_file(key[0])
            _CHECKED.add(key)


_CHECKED: set[tuple[str, int, int]] = set()


def search_path(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    return [package_config_dir(), *user_config_dirs(extra)]


def group_options(group: str, extra_dirs: Iterable[str | os.PathLike] = (), include_registered: bool = True) -> list[str]:
    """Every option of a config group, across the shipped and the user's directories.

    The loss group also offers the user losses registered in this process and those that
    installed packages declare as entry points (bbrctl.losses.user; none is imported).
    """
    names: set[str] = set()
    for d in search_path(extra_dirs):
        g = d / group
        if g.is_dir():
            names.update(p.stem for p in g.glob("*.yaml"))
    if group == "loss" and include_registered:
        from bbrctl.losses.user import user_names

        names.update(user_names())
    return sorted(names)


def is_group(key: str, extra_dirs: Iterable[str | os.PathLike] = ()) -> bool:
    if not key or "." in key:
        return False
    return any((d / key).is_dir() for d in search_path(extra_dirs))
