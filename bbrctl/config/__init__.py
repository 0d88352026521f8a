"""Configs: compose (Hydra), check (the typed schema), sign (portable signatures).

Modules::

    tree.py        where configs come from: the shipped tree, --config-dir, BBRCTL_CONFIG_PATH
    compose.py     Hydra's compose API, one-line errors
    fields.py      typed fields (Int, Float, Choice, ListOf, ...) for the schema
    schema.py      the schema of every group and key, cross-field rules: validate()
    signature.py   what identifies an experiment: signature(), legacy_signature()

Imports nothing heavy: Hydra and OmegaConf are imported inside compose() only, and the names
below load their module on first access.
"""

import importlib

# Loaded on first access (PEP 562), so that importing one module of this package (the CLI's
# help imports ``bbrctl.config.tree`` for the preset list) does not import the schema and
# the composer too.
_LAZY = {
    **dict.fromkeys(("compose", "hydra_override_error", "one_line", "reject_sweep", "to_container", "to_plain",
                     "to_yaml"), "compose"),
    **dict.fromkeys(("GROUPS", "is_synthetic", "validate"), "schema"),
    **dict.fromkeys(("NON_RESULT_KEYS", "legacy_signature", "result_view", "signature"), "signature"),
    **dict.fromkeys(("group_options", "is_group", "package_config_dir", "search_path", "user_config_dirs"), "tree"),
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"bbrctl.config.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bbrctl.config' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
