"""Training checkpoints: atomic save, load, and the random state that makes resume exact.

A checkpoint is one ``torch.save`` dict::

    {"format": 1, "iteration": k (iterations completed), "model": state_dict,
     "optimizer": ..., "scaler": ... | None, "rng": [per-rank RNG states],
     "elapsed_s": training wall time so far, "signature": config signature}

It is written to a temporary file in the same directory, fsynced and renamed over
``checkpoints/last.pt``, so a kill at any moment leaves the previous checkpoint or the
new one, never a torn file. The data order needs no state: the sampler's stream is a
function of (seed, position), and the position is ``iteration * global batch``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

FORMAT = 1
LAST = "last.pt"


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    from bbrctl.store import CHECKPOINTS

    return Path(run_dir) / CHECKPOINTS / LAST


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save(state)`` to ``path`` atomically (temp file + fsync + rename)."""
    import torch

    from bbrctl.store import atomic_write_with

    atomic_write_with(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_checkpoint(path: str | os.PathLike) -> dict | None:
    """The checkpoint at ``path`` (tensors on the CPU), or None if there is none."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    # Our own file, written by save_checkpoint inside the run directory; numpy's RNG
    # state (a tuple with an ndarray) needs the full unpickler.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RuntimeError(f"{path} is not a bbrctl checkpoint of format {FORMAT}")
    return state


def rng_state() -> dict[str, Any]:
    """Every random state the training step can touch, for this process."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
