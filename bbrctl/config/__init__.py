"""Configs: compose (Hydra), check (the typed schema), sign (portable signatures).

Modules::

    tree.py        where configs come from: the shipped tree, --config-dir, BBRCTL_CONFIG_PATH
    compose.py     Hydra's compose API, one-line errors
    fields.py      typed fields (Int, Float, Choice, ListOf, ...) for the schema
    schema.py      the schema of every group and key, cross-field rules: validate()
    signature.py   what identifies an experiment: signature(), legacy_signature()

Imports nothing heavy: Hydra and OmegaConf are imported inside compose() only.
"""

from bbrctl.config.compose import compose, hydra_override_error, one_line, reject_sweep, to_container, to_plain, to_yaml
from bbrctl.config.schema import GROUPS, is_synthetic, validate
from bbrctl.config.signature import NON_RESULT_KEYS, legacy_signature, result_view, signature
from bbrctl.config.tree import group_options, is_group, package_config_dir, search_path, user_config_dirs

__all__ = ["compose", "hydra_override_error", "one_line", "reject_sweep", "to_container", "to_plain", "to_yaml", "GROUPS", "is_synthetic",
           "validate", "NON_RESULT_KEYS", "legacy_signature", "result_view", "signature", "group_options", "is_group",
           "package_config_dir", "search_path", "user_config_dirs"]
