"""Loading a model's weights from a checkpoint without running pickled code.

``torch.load(weights_only=True)`` unpickles tensors, containers and numbers only, and a
short allow-list of the other types a bbrctl checkpoint holds: numpy's RNG state (an
ndarray of uint32 with its dtype), saved beside the model so that resuming is exact
(bbrctl.detection.checkpoint). A file with anything else in it (a pickled object, a
function) is refused, whoever wrote it: ``bbrctl eval --checkpoint PATH`` may be pointed
at files from elsewhere.

Accepted files: a bbrctl checkpoint (``{"format": 1, "model": state_dict, ...}``) or a
bare state dict (``{name: tensor}``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bbrctl.errors import UserError


def _allowed() -> list:
    import numpy as np

    allowed: list[Any] = [np.ndarray, np.dtype]
    try:                                       # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:                        # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed.append(_reconstruct)
    dtypes = getattr(np, "dtypes", None)       # numpy >= 1.25 pickles dtypes by their class
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in ("UInt32DType", "Int64DType", "Float64DType") if hasattr(dtypes, n)]
    return allowed


def load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with the allow-list; UserError if refused."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    try:
        with torch.serialization.safe_globals(_allowed()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = " ".join(str(e).split())[:200]
        raise UserError(f"checkpoint {str(path)!r} holds more than weights and is refused "
                        f"(torch.load weights_only=True: {first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"checkpoint {str(path)!r} cannot be read: {' '.join(str(e).split())[:200]}") from None


def model_state(path: str | os.PathLike) -> tuple[dict, dict]:
    """(model state dict, what else the checkpoint says: iteration, signature, format)."""
    import torch

    obj = load_weights_only(path)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        meta = {k: obj.get(k) for k in ("format", "iteration", "signature")}
        state = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        meta, state = {}, obj
    else:
        raise UserError(f"checkpoint {str(path)!r} is neither a bbrctl checkpoint nor a state dict of tensors")
    return state, meta
