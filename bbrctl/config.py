"""Compose bbrctl configs with Hydra's compose API, validate them, and sign them.

The config tree ships in the package (bbrctl/conf in a wheel, conf/ in a checkout), so
composition works from any directory. Users add their own config directories with
``--config-dir`` or ``BBRCTL_CONFIG_PATH`` (os.pathsep-separated); their files may add new
options to any group (conf/loss/my_loss.yaml) or override ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from bbrctl.errors import UserError

GROUPS = ("loss", "model", "backbone", "data", "schedule", "launcher", "experiment")

# Keys that do not change a job's results: excluded from its signature so that, say,
# more data-loader workers or another launcher does not re-run a finished job.
NON_RESULT_KEYS = (
    "data.num_workers",
    "data.cache_images",
    "launcher",
    "wandb",
    "sweep",
    "runs_root",
    "run_dir",
    "report",
)


def package_config_dir() -> Path:
    """The shipped config tree: bbrctl/conf in an installed wheel, conf/ in a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return cand
    raise RuntimeError(f"bbrctl's config tree is missing (looked in {here / 'conf'} and {here.parent / 'conf'})")


def user_config_dirs(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    dirs = [Path(p) for p in extra if str(p)]
    env = os.environ.get("BBRCTL_CONFIG_PATH", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"config directory {str(d)!r} does not exist")
    return [d.resolve() for d in dirs]


def group_options(group: str, extra_dirs: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Every option of a config group, across the shipped and the user's directories."""
    names: set[str] = set()
    for d in [package_config_dir(), *user_config_dirs(extra_dirs)]:
        g = d / group
        if g.is_dir():
            names.update(p.stem for p in g.glob("*.yaml"))
    return sorted(names)


def compose(overrides: Sequence[str] = (), config_dirs: Iterable[str | os.PathLike] = (),
            resolve: bool = True, validate: bool = True):
    """Compose the config for ``overrides`` (Hydra override syntax, no sweeps).

    Returns an OmegaConf DictConfig (resolved unless ``resolve=False``). Every failure a
    user can cause raises UserError with a one-line message.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    user_dirs = user_config_dirs(config_dirs)
    for ov in overrides:
        _reject_sweep(ov)
    hydra_overrides = list(overrides)
    if user_dirs:
        # User directories come first in the search path so their files win.
        paths = ",".join(f"file://{d}" for d in user_dirs)
        hydra_overrides.append(f"hydra.searchpath=[{paths}]")

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(package_config_dir()), version_base="1.3", job_name="bbrctl"):
            cfg = hydra_compose(config_name="config", overrides=hydra_overrides)
    except OverrideParseException as e:
        raise UserError(_one_line(f"invalid override: {e}")) from None
    except MissingConfigException as e:
        raise UserError(_missing_option_message(e, overrides, user_dirs)) from None
    except ConfigCompositionException as e:
        raise UserError(_composition_message(e, overrides)) from None
    except OmegaConfBaseException as e:
        raise UserError(_one_line(f"invalid config: {e}")) from None
    finally:
        GlobalHydra.instance().clear()

    try:
        if resolve:
            OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise UserError(_one_line(f"config does not resolve: {e}")) from None
    if validate:
        validate_config(cfg)
    return cfg


def validate_config(cfg) -> None:
    """Cross-field checks Hydra cannot do: loss parameters in range, weight >= 0."""
    from bbrctl.losses.spec import SPECS, check_params, check_weight

    try:
        check_weight(cfg.get("weight"))
        name = cfg.loss.name
        if name != "baseline" and name not in SPECS:
            raise ValueError(f"unknown loss {name!r}; valid: baseline, {', '.join(SPECS)}")
        if name != "baseline":
            from omegaconf import OmegaConf

            params = cfg.loss.get("params")
            check_params(name, OmegaConf.to_container(params, resolve=True) if params is not None else {})
        for key in ("gamma",):
            v = cfg.get(key)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
                raise ValueError(f"gamma must be a number >= 0, got {v!r}")
    except ValueError as e:
        raise UserError(str(e)) from None


def to_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)


def to_container(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def result_view(cfg: dict | Any) -> dict:
    """The part of a resolved config that determines a job's results."""
    if not isinstance(cfg, dict):
        cfg = to_container(cfg)
    view = json.loads(json.dumps(cfg))  # deep copy of plain data
    for dotted in NON_RESULT_KEYS:
        *parents, leaf = dotted.split(".")
        node = view
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(leaf, None)
    return view


def signature(cfg: dict | Any, length: int = 10) -> str:
    """Stable hash of what determines a job's results (key order and float spelling-proof)."""
    blob = json.dumps(result_view(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _reject_sweep(override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep:
        return
    if key.startswith("hydra"):
        raise UserError(f"override {override!r} is not allowed: hydra.* settings are managed by bbrctl")
    # A bare comma list or a sweep function means several jobs: only `bbrctl sweep` expands those.
    if re.match(r"^\s*(range|choice|glob|interval|tag)\(", value) or _has_top_level_comma(value):
        raise UserError(f"override {override!r} is a sweep; use `bbrctl sweep` to run several jobs")


def _has_top_level_comma(value: str) -> bool:
    depth, quote = 0, None
    for ch in value:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def _missing_option_message(e: Exception, overrides: Sequence[str], user_dirs) -> str:
    text = str(e)
    m = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if m:
        group, option = m.group(1), m.group(2)
        valid = group_options(group, user_dirs)
        return f"unknown {group} option {option!r}; valid {group} options: {', '.join(valid)}"
    m = re.search(r"Could not load '([^']+)/([^']+)'", text)
    if m:
        group, option = m.group(1), m.group(2)
        valid = group_options(group, user_dirs)
        return f"unknown {group} option {option!r}; valid {group} options: {', '.join(valid)}"
    return _one_line(text)


def _composition_message(e: Exception, overrides: Sequence[str]) -> str:
    text = str(e)
    cause = str(e.__cause__ or "")
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
    if m and "Could not override" in m.group(0):
        key = m.group(1)
        return (f"unknown config key {key!r}; known top-level keys: {', '.join(_top_level_keys())} "
                f"(prefix with + to add a new key: +{key}=...)")
    if m:
        return f"config key {m.group(1)!r} already exists; drop the leading + to override it"
    m = re.search(r"Could not find '([^']+)/([^']+)'", text + cause)
    if m:
        group, option = m.group(1), m.group(2)
        return f"unknown {group} option {option!r}; valid {group} options: {', '.join(group_options(group))}"
    return _one_line(f"{text} {cause}".strip())


def _top_level_keys() -> list[str]:
    from omegaconf import OmegaConf

    base = OmegaConf.load(package_config_dir() / "config.yaml")
    keys = [k for k in base.keys() if k != "defaults"]
    return sorted(set(keys) | set(GROUPS) - {"experiment"})
