"""Training checkpoints: safe to load, checked on load, written whole, the last two kept.

A checkpoint file is an ordinary ``torch.save`` file that holds::

    {"format": 2, "sha256": hex digest of payload, "bytes": len(payload), "iteration": k,
     "payload": uint8 tensor = torch.save({"iteration", "model", "optimizer", "scaler",
                                           "rng", "elapsed_s", "signature", "loss_state"})}

``loss_state`` is the state of stateful losses (Wise-IoU's running mean,
``bbrctl.detection.models.heads.loss_states``): a list of {"mean": float64 tensor}.

Why this shape:

* **No code from a checkpoint.** Everything is read with ``torch.load(weights_only=True)``:
  tensors, numbers, strings, lists, tuples and dicts only. A pickle that would call any
  function (a crafted ``last.pt``) is refused with one line before anything runs. The RNG
  states the project saves are kept in that vocabulary (numpy's state as a tensor and
  plain numbers), so the project's own files need no allow-list.
* **Checked on load.** The payload's SHA-256 is stored beside it; a truncated, garbled or
  foreign file is reported as damaged, never half-loaded.
* **The last two are kept.** A save writes a temp file (fsync), moves ``last.pt`` to
  ``prev.pt`` and renames the temp file to ``last.pt``. A kill at any moment leaves a
  whole ``last.pt``, or a whole ``prev.pt`` to resume from; a damaged ``last.pt`` falls
  back to ``prev.pt`` with a note. Temp files of an interrupted save are removed on the
  next start (:func:`remove_stale_temps`).
* **Disk full** is reported as such (the file is serialised in memory first, so the only
  failing call is a plain write, whose OSError names the path).

The data order needs no state: the sampler's stream is a function of (seed, position),
and the position is ``iteration * global batch``.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path
from typing import Any, Callable

from bbrctl.errors import UserError

FORMAT = 2
LAST = "last.pt"
PREV = "prev.pt"


class DamagedCheckpoint(UserError):
    """A checkpoint that cannot be trusted (exit 2 with what to do)."""


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    from bbrctl.store import RunDir

    return RunDir(run_dir).checkpoints / LAST


def previous_path(run_dir: str | os.PathLike) -> Path:
    from bbrctl.store import RunDir

    return RunDir(run_dir).checkpoints / PREV


def encode(state: dict) -> bytes:
    """The bytes of a checkpoint file holding ``state``."""
    import torch

    inner = io.BytesIO()
    torch.save(state, inner)
    payload = bytearray(inner.getbuffer())
    outer = io.BytesIO()
    torch.save({"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload),
                "iteration": int(state.get("iteration", 0)),
                "payload": torch.frombuffer(payload, dtype=torch.uint8) if payload else torch.empty(0, dtype=torch.uint8)},
               outer)
    return outer.getvalue()


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` whole; the file it replaces becomes ``prev.pt`` beside it."""
    from bbrctl.store import atomic_write_with

    path = Path(path)
    data = encode(state)

    def write(f) -> None:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # before the rotation below, not only after this callback
        # Rotate just before the new file takes the name: at every instant one whole
        # checkpoint carries a resumable name.
        if path.exists():
            os.replace(path, path.with_name(PREV))

    atomic_write_with(path, write, levels=2)    # neither the run directory nor checkpoints/ a link


def decode(path: str | os.PathLike) -> dict:
    """The state in checkpoint ``path``; DamagedCheckpoint naming what is wrong."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, AttributeError, TypeError) as e:
        raise DamagedCheckpoint(f"{path} is not a checkpoint bbrctl can load safely: it holds objects a "
                                f"weights-only load refuses ({_short(e)}); bbrctl never unpickles code") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as e:
        raise DamagedCheckpoint(f"{path} is truncated or not a PyTorch file ({_short(e)})") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT or not torch.is_tensor(outer.get("payload")):
        fmt = outer.get("format") if isinstance(outer, dict) else None
        raise DamagedCheckpoint(f"{path} is not a bbrctl checkpoint of format {FORMAT} (format {fmt!r})")
    t = outer["payload"]
    if t.dtype != torch.uint8 or t.dim() != 1 or t.is_sparse or not isinstance(outer.get("bytes"), int):
        raise DamagedCheckpoint(f"{path} is not a bbrctl checkpoint: its payload is a {str(t.dtype).replace('torch.', '')} "
                                f"tensor of shape {list(t.shape)}, not the 1-D uint8 bytes bbrctl writes")
    payload = t.contiguous().numpy().tobytes()
    if len(payload) != outer.get("bytes") or hashlib.sha256(payload).hexdigest() != outer.get("sha256"):
        raise DamagedCheckpoint(f"{path} fails its checksum (the file was changed or damaged after it was written)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a checksummed payload that does not load is damaged
        raise DamagedCheckpoint(f"{path}: its payload does not load ({_short(e)})") from None
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise DamagedCheckpoint(f"{path} holds no training state (model, iteration)")
    it, model = state["iteration"], state["model"]
    if not isinstance(it, int) or isinstance(it, bool) or it < 0 or not isinstance(model, dict) \
            or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in model.items()):
        raise DamagedCheckpoint(f"{path} holds no training state (an iteration >= 0 and a model of named tensors)")
    return state


def _short(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:160]


def load_checkpoint(path: str | os.PathLike) -> dict | None:
    """The checkpoint at ``path`` (tensors on the CPU), or None if there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    return decode(path)


def model_state(path: str | os.PathLike) -> tuple[dict, dict]:
    """(model state dict, {"format", "iteration", "signature"}) of a bbrctl checkpoint, or of
    a bare state dict of tensors (weights from elsewhere), loaded weights-only."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, AttributeError, TypeError) as e:
        raise DamagedCheckpoint(f"{path} is not a checkpoint bbrctl can load safely: it holds objects a "
                                f"weights-only load refuses ({_short(e)}); bbrctl never unpickles code") from None
    except Exception as e:  # noqa: BLE001 - unreadable is unreadable
        raise DamagedCheckpoint(f"{path} is truncated or not a PyTorch file ({_short(e)})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        state = decode(path)
        return state["model"], {"format": FORMAT, "iteration": state.get("iteration"),
                                "signature": state.get("signature")}
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj, {}
    raise DamagedCheckpoint(f"checkpoint {str(path)!r} is neither a bbrctl checkpoint (format {FORMAT}) nor a "
                            "state dict of tensors")


def check_belongs(path: str | os.PathLike, ckpt_signature: Any, run_dir: str | os.PathLike,
                  signature: str | None = None) -> None:
    """UserError unless a checkpoint signed ``ckpt_signature`` belongs to ``run_dir``'s job
    (its signature, one it had before, or ``signature``); an unsigned one (weights from
    elsewhere) passes. The rule `train` applies on resume, for `eval` and report figures."""
    from bbrctl.store import read_job

    job = read_job(run_dir) or {}
    accepted = {None, signature, job.get("signature"), *(job.get("previous_signatures") or [])}
    if ckpt_signature not in accepted:
        raise UserError(f"{path} belongs to another config (signature {ckpt_signature}, this run is "
                        f"{job.get('signature') or signature}); give a checkpoint of this run")


def load_latest(run_dir: str | os.PathLike, note: Callable[[str], None] = lambda msg: None) -> dict | None:
    """The newest loadable checkpoint of a run: last.pt, else prev.pt (with a note), else None.

    Raises DamagedCheckpoint, with what to do, when checkpoints exist and none loads.
    """
    last, prev = checkpoint_path(run_dir), previous_path(run_dir)
    if not last.is_file() and not prev.is_file():
        return None
    problems = []
    for path in (last, prev):
        if not path.is_file():
            continue
        try:
            state = decode(path)
        except DamagedCheckpoint as e:
            problems.append(str(e))
            continue
        if problems:
            note(f"{problems[0]}; resuming from {path.name} (iteration {state['iteration']}) instead")
        return state
    raise DamagedCheckpoint(f"{problems[0]}{'; ' + problems[1] if len(problems) > 1 else ''}; no loadable "
                            f"checkpoint is left: delete {last.parent} to restart the run from iteration 0")


def remove_stale_temps(run_dir: str | os.PathLike) -> list[Path]:
    """Temp files left by saves that were killed (``.<name>.*.tmp``); removed, and returned."""
    from bbrctl.store import RunDir
    from bbrctl.store.atomic import TMP_SUFFIX

    rd = RunDir(run_dir)
    gone = []
    for d in (rd.path, rd.checkpoints):
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file():
                try:
                    p.unlink()
                    gone.append(p)
                except OSError:
                    pass
    return gone


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Every random state the training step can touch, for this process, as weights-only data."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
