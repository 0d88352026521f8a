"""Multi-node training path with a real c10d rendezvous: two torchrun agents on this host
(``--nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d``, gloo, CPU, loopback only) form one
world of two, and train what one process trains.

What the maths says must be equal, and what holds: with the same global batch the two ranks
see disjoint halves of each batch of the one-process stream (bbrctl.detection.data.datasets), and
DDP averages their gradients. RetinaNet's losses are means over images of per-image terms,
so the averaged gradient is the one-process gradient, given a model without batch
statistics (``model.norm=group``: BatchNorm would normalise over each rank's half). It is
equal up to floating-point summation order (the all-reduce adds two partial sums; one
process adds the per-image terms in another order), so the test allows 1e-5 relative on the
per-iteration losses and 1e-4 relative (1e-6 absolute) on the final weights; measured on the
development machine after 4 SGD iterations: losses within 5e-7, weights within 6e-8 absolute.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from bbrctl import store
from bbrctl.detection.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

CFG = ["data=shapes_tiny", "schedule=smoke", "backbone=resnet_tiny", "model.norm=group", "loss=eiou",
       "schedule.max_iter=4", "schedule.batch_size=4", "schedule.log_period=1", "schedule.eval_batch_size=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(run_dir, overrides=CFG):
    from bbrctl.config import compose, signature, to_container

    cfg = to_container(compose(list(overrides)))
    store.prepare_run_dir(run_dir, cfg, signature=signature(cfg), name=run_dir.name, overrides=list(overrides))
    return run_dir


def env() -> dict:
    # One thread per process (2 cores, 2 processes) and gloo on the loopback interface.
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def two_agents(args: list[str], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Run ``args`` (a module and its arguments) under two torchrun agents meeting at 127.0.0.1."""
    port = free_port()
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
             "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=test-{port}",
             "--rdzv-conf=join_timeout=120", "--local-addr=127.0.0.1", "--max-restarts=0", *args]
    procs = [subprocess.Popen(agent, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    out = []
    try:
        for p in procs:
            stdout, _ = p.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess(agent, p.returncode, stdout, ""))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / store.METRICS).read_text().splitlines()) if "loss" in r]


def test_two_agents_rendezvous_and_train_what_one_process_trains(tmp_path):
    import torch

    one, two = prepare(tmp_path / "one"), prepare(tmp_path / "two")
    single = subprocess.run([sys.executable, "-m", "bbrctl", "train", "--run-dir", str(one), "--device", "cpu",
                             "--no-progress"], env=env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr
    agents = two_agents(["-m", "bbrctl", "train", "--run-dir", str(two), "--device", "cpu", "--no-progress"])
    assert all(a.returncode == 0 for a in agents), "\n".join(a.stdout[-3000:] for a in agents)

    res = store.read_results(two)
    assert res["status"] == "done" and res["world_size"] == 2 and res["iteration"] == 4
    assert "world size 2, batch 4" in (two / store.LOG).read_text()
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, rel=1e-5)
    wa = load_checkpoint(one / store.CHECKPOINTS / "last.pt")["model"]
    wb = load_checkpoint(two / store.CHECKPOINTS / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    for k, v in wa.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(wb[k], v, rtol=1e-4, atol=1e-6, msg=k)
    # ... and four steps moved the weights far more than that: the test can tell them apart.
    from bbrctl.detection.models.build import build_model

    torch.manual_seed(0)
    w0 = build_model(store.read_job(one)["config"], 5).state_dict()
    moved = max(float((w0[k] - v).abs().max()) for k, v in wa.items() if v.dtype.is_floating_point)
    assert moved > 1e-3
