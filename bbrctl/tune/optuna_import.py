"""The one import of Optuna: through bbrctl.extras, so a missing one is a one-line error naming the extra."""

from __future__ import annotations

from bbrctl import extras


def optuna():
    _optuna = extras.require("optuna", "`bbrctl tune`")
    _optuna.logging.set_verbosity(_optuna.logging.WARNING)
    return _optuna
