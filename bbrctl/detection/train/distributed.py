"""Where a run runs: torchrun's environment (rank, world size, device), the process group,
the --device check made before a run directory exists, and the barrier."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def check_device(device: str | None) -> str:
    """The asked-for device ("auto", "cpu" or "cuda"), or a one-line UserError: called before
    a run directory is made, so a bad --device creates nothing."""
    from bbrctl.errors import UserError

    want = str(device or "auto").lower()
    if want not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device!r} is not valid; valid: auto, cpu, cuda")
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device")
    return want


def setup_distributed(device: str | None = None) -> Dist:
    """Read torchrun's environment; initialise the process group when WORLD_SIZE > 1.

    ``device``: "cpu", "cuda" or None/"auto" (CUDA when available). Each rank uses
    ``cuda:LOCAL_RANK``; the backend is NCCL on CUDA, gloo on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = check_device(device)
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return Dist(rank, world, local, dev)


def cleanup_distributed(dist: Dist) -> None:
    if dist.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.distributed:
        torch.distributed.barrier()
