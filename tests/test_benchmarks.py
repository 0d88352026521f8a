"""The benchmark scripts of issue 13 run and print their figures (CPU, small settings).
What they measure is recorded in the README; here only that they work and say what they skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_gpu_check_runs_on_a_cpu_and_says_what_it_skips(tmp_path):
    out = script("gpu_check.py", "--quick", "--json", str(tmp_path / "g.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no CUDA device: the CUDA parts are skipped" in out.stdout
    assert out.stdout.count("unmeasured (no CUDA device") == 3
    rep = json.loads((tmp_path / "g.json").read_text())
    assert {(r["loss"], r["n"]) for r in rep["losses"]} == {(l, n) for l in ("eiou", "focal_eiou", "tv_ciou")
                                                             for n in (10 ** 4, 10 ** 5)}
    assert all(r["median_ms"] > 0 and r["bytes_per_s"] > 0 and r["vs_peak"] is None for r in rep["losses"])
    assert rep["copy_bytes_per_s"] > 0 and rep["train"] is None and rep["simulate"] is None


@pytest.mark.slow
def test_data_throughput_prints_loader_and_model_rates(tmp_path):
    out = script("data_throughput.py", "--batch", "2", "--batches", "3", "--model-iters", "1", "--workers", "0,1",
                 "--json", str(tmp_path / "d.json"), "data.num_train=8", "data.num_val=2",
                 "data.image_shapes=[[96,64],[64,96]]", "data.image_shape_weights=[1,1]", "data.max_objects=3",
                 "model.min_size=64", "model.max_size=96", "data.num_workers=1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "loader, 0 worker(s):" in out.stdout and "loader, 1 worker(s):" in out.stdout
    assert "default data.num_workers=1: loader" in out.stdout and "padded pixels per image" in out.stdout
    rep = json.loads((tmp_path / "d.json").read_text())
    assert [r["workers"] for r in rep["loader"]] == [0, 1] and all(r["images_per_s"] > 0 for r in rep["loader"])
    assert all(v > 0 for v in rep["model_images_per_s"])
    g, p = rep["padded_pixels"]["2"]
    assert 0 < g <= p        # grouping never pads more than mixing
