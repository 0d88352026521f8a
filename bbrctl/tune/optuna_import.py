"""The one import of Optuna: a one-line error naming the extra when it is missing."""

from __future__ import annotations

from bbrctl.errors import UserError

EXTRA_HINT = "install it with `pip install 'bbrctl[tune]'`"


def optuna():
    try:
        import optuna as _optuna
    except ImportError:
        raise UserError(f"`bbrctl tune` needs Optuna, which is not installed; {EXTRA_HINT}") from None
    _optuna.logging.set_verbosity(_optuna.logging.WARNING)
    return _optuna
