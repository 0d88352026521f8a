"""Compose bbrctl configs with Hydra's compose API; every failure a user causes is one line.

The config tree ships in the package (bbrctl/conf in a wheel, conf/ in a checkout), so
composition works from any directory. Users add their own config directories with
``--config-dir`` or ``BBRCTL_CONFIG_PATH``; their files may add new options to any group
(conf/loss/my_loss.yaml) or override ours. Group files may be written either way Hydra
allows: with ``# @package _global_`` (keys from the top, as the shipped loss files set
``loss:`` and ``weight:``) or plainly (keys of the group itself).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from bbrctl.config import schema
from bbrctl.config.fields import did_you_mean
from bbrctl.config.tree import group_options, package_config_dir, user_config_dirs
from bbrctl.errors import UserError

T = TypeVar("T")


def compose(overrides: Sequence[str] = (), config_dirs: Iterable[str | Path] = (), resolve: bool = True,
            validate: bool = True):
    """Compose the config for ``overrides`` (Hydra override syntax, no sweeps).

    Returns an OmegaConf DictConfig (resolved unless ``resolve=False``), validated
    against bbrctl.config.schema unless ``validate=False``.

    An error message never quotes a ``launcher.setup`` override (:func:`hiding_setup`).
    """
    return hiding_setup(lambda ovs: _compose(ovs, config_dirs, resolve, validate), overrides)


def hiding_setup(run: Callable[[list[str]], T], overrides: Sequence[str]) -> T:
    """``run(overrides)``, whose UserError never quotes a ``launcher.setup`` override.

    Setup lines may hold secrets. On failure ``run`` is called again with every setup
    override emptied: its error is the one raised (it cannot hold a setup line), or, when
    that succeeds, one that names launcher.setup without its value.
    """
    overrides = [str(o) for o in overrides]
    try:
        return run(overrides)
    except UserError:
        from bbrctl.redact import withhold_override

        setup = [o for o in overrides if withhold_override(o) != o]
        if not setup:
            raise
        run([f"{o.partition('=')[0]}=[]" if o in setup and "=" in o else o for o in overrides])
        raise UserError("launcher.setup is not valid: must be a list of shell lines, e.g. "
                        "launcher.setup='[\"module load cuda\"]' (the value is not shown: setup lines may "
                        "hold secrets)") from None


def _compose(overrides: list[str], config_dirs, resolve: bool, validate: bool):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    user_dirs = user_config_dirs(config_dirs)
    for ov in overrides:
        reject_sweep(ov)
    hydra_overrides = list(overrides)
    if user_dirs:
        # User directories come first in the search path so their files win.
        paths = ",".join(f"file://{d}" for d in user_dirs)
        hydra_overrides.append(f"hydra.searchpath=[{paths}]")

    stored = _store_user_losses(overrides, user_dirs)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(package_config_dir()), version_base="1.3", job_name="bbrctl"):
            cfg = hydra_compose(config_name="config", overrides=hydra_overrides)
    except OverrideParseException as e:
        raise UserError(one_line(f"invalid override: {e}")) from None
    except MissingConfigException as e:
        raise UserError(_missing_option_message(e, user_dirs)) from None
    except HydraException as e:
        raise UserError(_composition_message(e, overrides, user_dirs)) from None
    except OmegaConfBaseException as e:
        raise UserError(one_line(f"invalid config: {e}")) from None
    finally:
        GlobalHydra.instance().clear()
        _unstore(stored)

    try:
        if resolve:
            OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        hint = ""
        if "Environment variable" in str(e):
            # e.g. +experiment=table3_paper reads $BBRCTL_WEIGHTS_DIR: a required setting, not a bug
            hint = "; set that environment variable (a preset that reads it needs it)"
        raise UserError(one_line(f"config does not resolve: {e}{hint}")) from None
    if validate:
        schema.validate(to_container(cfg))
    return cfg


def _store_user_losses(overrides: Sequence[str], user_dirs) -> list[str]:
    """Make ``loss=<name>`` choose a registered or entry-point loss that has no loss/<name>.yaml.

    Its option is put in Hydra's ConfigStore as the config file it stands for
    (bbrctl.losses.user.config_node: the whole declaration, so other processes re-import it)
    for this one composition (``_unstore``: a stored node would otherwise outlive it and be
    merged into a later loss/<name>.yaml as its schema). Only the names chosen are looked
    up: no other user module is imported.
    """
    stored: list[str] = []
    files = None
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if not sep or key.lstrip("+") != "loss" or key.startswith("~"):
            continue
        value = value.strip()
        if files is None:
            files = set(group_options("loss", user_dirs, include_registered=False))
        if value in files:
            continue
        from bbrctl.losses import user

        node = user.config_node(value)
        if node is not None:
            from hydra.core.config_store import ConfigStore

            ConfigStore.instance().store(group="loss", name=value, node=node, package="_global_")
            stored.append(value)
    return stored


def _unstore(names: list[str]) -> None:
    if names:
        from hydra.core.config_store import ConfigStore

        group = ConfigStore.instance().repo.get("loss", {})
        for name in names:
            group.pop(f"{name}.yaml", None)


def to_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)


def to_container(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def to_plain(cfg) -> dict:
    """The config as plain data with its interpolations kept."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=False)


# What a Hydra user reaches for, and bbrctl's way of saying it.
HYDRA_KEYS = {
    "hydra.sweep.dir": "; sweeps live under the runs root: use --runs-root DIR (and sweep.name=NAME for the folder)",
    "hydra.sweep.subdir": "; each job's folder is named from its settings and signature (see `bbrctl sweep --dry-run`)",
    "hydra.run.dir": "; runs live under the runs root: use --runs-root DIR",
    "hydra.job.chdir": "; bbrctl never changes the working directory",
    "hydra.searchpath": "; add config directories with --config-dir DIR or $BBRCTL_CONFIG_PATH",
    "hydra/sweeper": "; bbrctl sweep expands comma lists and range()/choice() itself, bbrctl tune searches with Optuna",
    "hydra/launcher": "; pick a launcher with launcher=local or launcher=slurm",
}


def hydra_override_error(override: str) -> UserError:
    """The refusal of a hydra.* override, with what bbrctl uses instead where there is one."""
    key = override.partition("=")[0].lstrip("+~")
    return UserError(f"override {override!r} is not allowed: hydra.* settings are managed by bbrctl"
                     + HYDRA_KEYS.get(key, ""))


def reject_sweep(override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep:
        return
    if key.lstrip("+~").startswith("hydra"):
        raise hydra_override_error(override)
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


def one_line(msg: Any) -> str:
    return " ".join(str(msg).split())


def _missing_option_message(e: Exception, user_dirs) -> str:
    text = str(e)
    m = re.search(r"Could not (?:find|load) '([^']+)/([^']+)'", text)
    if m:
        group, option = m.group(1), m.group(2)
        valid = group_options(group, user_dirs)
        return f"unknown {group} option {option!r}; valid {group} options: {', '.join(valid)}"
    return one_line(text)


def _composition_message(e: Exception, overrides: Sequence[str], user_dirs) -> str:
    text = str(e)
    cause = str(e.__cause__ or "")
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        return unknown_key_message(m.group(1), overrides)
    m = re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
    if m:
        return f"config key {m.group(1)!r} already exists; drop the leading + to override it"
    m = re.search(r"Could not (?:find|load) '([^']+)/([^']+)'", text + cause)
    if m:
        group, option = m.group(1), m.group(2)
        return f"unknown {group} option {option!r}; valid {group} options: {', '.join(group_options(group, user_dirs))}"
    m = re.search(r"Error resolving interpolation '\$\{model\}_\$\{schedule\}'", text + cause)
    if m:       # conf/config.yaml's optional model_setting entry names both groups
        gone = next((ov.lstrip("~").split("=")[0] for ov in overrides if ov.startswith("~")
                     and ov.lstrip("~").split("=")[0] in ("model", "schedule")), "model")
        opts = ", ".join(group_options(gone, user_dirs))
        return f"the config has no {gone!r} group: choose one with {gone}=<option>; valid {gone} options: {opts}"
    m = re.search(r"Could not delete from config\. '([^']+)' does not exist", text + cause)
    if m:
        return unknown_key_message(m.group(1), overrides, verb="delete")
    return one_line(f"{text} {cause}".strip())


def unknown_key_message(key: str, overrides: Sequence[str] = (), verb: str = "set") -> str:
    """'unknown config key a.b; valid a keys: ...' with the keys of that group, not the top level's."""
    group, _, rest = key.partition(".")
    if group == "loss" and rest.startswith("params.") and verb == "set":
        return _unknown_loss_param(rest[len("params."):], _chosen_option("loss", overrides))
    if rest and group in schema.GROUPS:
        option = _chosen_option(group, overrides)
        keys = schema.group_keys(group, option)
        which = f"{group} ({option})" if option and group in ("model", "launcher") else group
        if rest in keys:  # an optional key the chosen group file leaves out
            fix = f"add it with +{key}=<value>" if verb == "set" else "there is nothing to delete"
            return f"config key {key!r} is valid but not in the chosen {group} file: {fix}"
        return f"unknown config key {key!r}{did_you_mean(rest, keys, group + '.')}; valid {which} keys: {', '.join(keys)}"
    top = sorted(set(schema.TOP) | set(schema.GROUPS))
    return f"unknown config key {key!r}{did_you_mean(key, top)}; valid top-level keys: {', '.join(top)}"


def _unknown_loss_param(param: str, loss: str | None) -> str:
    """`loss.params.X=v` where the chosen loss file has no X: name the loss's parameters."""
    from bbrctl.losses.spec import SPECS

    spec = SPECS.get(loss or "")
    if spec is None and loss:
        from bbrctl.losses.user import find

        try:
            spec = find(loss)
        except UserError:
            spec = None
    valid = ", ".join(spec.params) if spec is not None else None
    tail = f"; valid parameters: {valid or 'none'}" if valid is not None else \
        " (a parameter the loss declares but its file leaves out is added with +loss.params.<name>=<value>)"
    return f"loss {loss!r} has no parameter {param!r}{tail}"


def _chosen_option(group: str, overrides: Sequence[str]) -> str | None:
    chosen = None
    for ov in overrides:
        k, sep, v = ov.partition("=")
        if sep and k.lstrip("+") == group:
            chosen = v.strip()
    if chosen is None:
        chosen = _default_options().get(group)
    if group == "data" and chosen is not None:
        return "synthetic" if chosen in schema.SYNTHETIC_DATA else "coco"
    return chosen


def _default_options() -> dict[str, str]:
    import yaml

    base = yaml.safe_load((package_config_dir() / "config.yaml").read_text(encoding="utf-8")) or {}
    out: dict[str, str] = {}
    for item in base.get("defaults") or []:
        if isinstance(item, dict):
            out.update({str(k): str(v) for k, v in item.items()})
    return out
