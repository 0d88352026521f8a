"""Same seed, same machine, same thread count: bit-identical training results (CPU).

Two runs of one config in fresh run directories end with exactly the same weights and
COCO metrics, with the CPU speed settings of the embedded default (channels_last, bf16
autocast) and without them. Across thread counts or machines the float arithmetic runs in
another order and the numbers differ (README, "Determinism"); that is measured by the seed
study, not asserted here.
"""

from __future__ import annotations

import pytest
import torch

from bbrctl import store

TINY = ["data=shapes_tiny", "schedule=smoke", "schedule.max_iter=6", "schedule.checkpoint_period=0",
        "backbone=resnet_tiny", "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32", "model.head_convs=1",
        "loss=focal_eiou", "seed=3"]


def _train(root, extra):
    from bbrctl.detection.train.checkpoint import load_checkpoint
    from bbrctl.train import train_from_overrides

    run_dir, results = train_from_overrides([*TINY, *extra, f"runs_root={root}"], progress=False)
    state = load_checkpoint(run_dir / store.CHECKPOINTS / "last.pt")
    return results, state["model"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["schedule.cpu_amp=bf16", "schedule.channels_last=true", "backbone.stem=conv3x2"],
                                   ["schedule.cpu_amp=off", "schedule.channels_last=false"]],
                         ids=["bf16-channels-last", "fp32"])
def test_training_twice_gives_identical_weights_and_metrics(tmp_path, extra):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (r1, w1), (r2, w2) = _train(tmp_path / "a", extra), _train(tmp_path / "b", extra)
    finally:
        torch.set_num_threads(threads)
    assert r1["status"] == r2["status"] == "done"
    assert r1["timing"]["threads"] == 1
    assert r1["metrics"] == r2["metrics"]
    assert list(w1) == list(w2)
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    # Not vacuous: one iteration fewer ends with other weights.
    torch.set_num_threads(1)
    try:
        (_, w3) = _train(tmp_path / "c", [*extra, "schedule.max_iter=5"])
    finally:
        torch.set_num_threads(threads)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1 if w1[k].is_floating_point())
