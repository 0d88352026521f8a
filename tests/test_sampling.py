"""Aspect-ratio grouped batching (bbrctl.detection.data.sampling): single-group batches, the same
stream as TrainSampler with one group, exact resume, DDP shards, nothing dropped; and a
grouped training run that resumes to bitwise the same weights."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bbrctl.detection.data import datasets as D
from bbrctl.detection.data import sampling as S
from bbrctl.detection.train.checkpoint import load_checkpoint


def take(it, n):
    return list(islice(it, n))


def test_bins_are_torchvisions_and_groups_follow_them():
    assert S.bin_edges(-1) == [] and S.bin_edges(0) == [1.0]
    edges = S.bin_edges(3)
    assert len(edges) == 7 and edges[0] == pytest.approx(0.5) and edges[3] == pytest.approx(1.0)
    assert edges[-1] == pytest.approx(2.0)
    sizes = [(640, 480), (480, 640), (640, 427), (640, 640), (1000, 300), (300, 1000)]
    assert S.aspect_ratio_groups(sizes, 3, 1) == [5, 2, 5, 4, 7, 0]
    assert S.aspect_ratio_groups(sizes, 0, 1) == [1, 0, 1, 1, 1, 0]


def test_groups_smaller_than_a_batch_join_their_nearest_neighbour():
    sizes = [(640, 480)] * 5 + [(480, 640)] * 5 + [(640, 640)]     # one square image
    groups = S.aspect_ratio_groups(sizes, 3, 4)
    assert groups[:5] == [5] * 5 and groups[5:10] == [2] * 5 and groups[10] == 5   # 4 is nearer 5 than 2
    assert set(S.aspect_ratio_groups(sizes, 3, 8)) == {5}            # every group too small: one group


@given(n=st.integers(1, 40), per_rank=st.integers(1, 4), world=st.sampled_from([1, 2, 4]),
       seed=st.integers(0, 5), start_batches=st.integers(0, 30))
def test_one_group_is_trainsamplers_stream(n, per_rank, world, seed, start_batches):
    bs = per_rank * world
    for rank in range(world):
        want = D.TrainSampler(n, seed, start=start_batches * bs, rank=rank, world_size=world)
        got = S.GroupedTrainSampler([0] * n, bs, seed, start=start_batches * bs, rank=rank, world_size=world)
        assert take(iter(got), 3 * n) == take(iter(want), 3 * n)


@given(groups=st.lists(st.integers(0, 3), min_size=1, max_size=40), per_rank=st.integers(1, 3),
       world=st.sampled_from([1, 2, 3]), seed=st.integers(0, 3), k=st.integers(0, 25))
def test_grouped_batches_are_single_group_resumable_and_sharded(groups, per_rank, world, seed, k):
    bs = per_rank * world
    full = S.GroupedTrainSampler(groups, bs, seed)
    batches = take(full.batches(), k + 6)
    assert all(len(b) == bs and len({groups[i] for i, _ in b}) == 1 for b in batches)
    stream = [key for b in batches for key in b]
    # Resume at iteration k: the same keys as the uninterrupted stream from k * bs on.
    assert take(iter(S.GroupedTrainSampler(groups, bs, seed, start=k * bs)), 6 * bs) == stream[k * bs:]
    # Each rank's consecutive per-rank batches are its share of one global batch.
    shards = [take(iter(S.GroupedTrainSampler(groups, bs, seed, start=k * bs, rank=r, world_size=world)), 6 * per_rank)
              for r in range(world)]
    for j in range(6):
        parts = [s[j * per_rank:(j + 1) * per_rank] for s in shards]
        assert sorted(x for p in parts for x in p) == sorted(batches[k + j])
        assert [x for r in range(per_rank) for x in (p[r] for p in parts)] == batches[k + j]


@given(ratios=st.lists(st.sampled_from([(640, 480), (480, 640), (640, 640), (900, 300)]), min_size=1, max_size=30),
       bs=st.integers(1, 6), seed=st.integers(0, 3))
def test_nothing_is_dropped_or_repeated(ratios, bs, seed):
    """The output is the epoch stream reordered with a bounded delay. Every group holds at
    least a batch (or is the only one), so a key waits at most until its group has filled
    one batch: within two epochs. Every key of the first N of the epoch stream comes out
    within N + 2n keys, and nothing comes out that the stream did not hold."""
    groups = S.aspect_ratio_groups(ratios, 3, bs)
    n = len(groups)
    base = take(iter(D.TrainSampler(n, seed)), 6 * n)
    out = take(iter(S.GroupedTrainSampler(groups, bs, seed)), 6 * n)
    assert not Counter(base[:4 * n]) - Counter(out)
    assert not Counter(out) - Counter(base + take(iter(D.TrainSampler(n, seed, start=6 * n)), 2 * n))


def test_config_picks_the_sampler(tmp_path):
    class Fake:
        def __init__(self, sizes):
            self.sizes = sizes

        def __len__(self):
            return len(self.sizes)

        def image_info(self, i):
            return {"width": self.sizes[i][0], "height": self.sizes[i][1]}

    ds = Fake([(640, 480), (480, 640)] * 4)
    kw = dict(batch_size=2, seed=0, hflip_prob=0.5, start=0, rank=0, world_size=1)
    assert isinstance(S.train_sampler({}, ds, **kw), D.TrainSampler)
    assert isinstance(S.train_sampler({"aspect_ratio_group_factor": -1}, ds, **kw), D.TrainSampler)
    grouped = S.train_sampler({"aspect_ratio_group_factor": 3}, ds, **kw)
    keys = take(iter(grouped), 16)
    for j in range(0, 16, 2):
        assert len({ds.sizes[i] for i, _ in keys[j:j + 2]}) == 1


MIXED = ["data=shapes_coco", "data.num_train=12", "data.num_val=4", "data.image_shapes=[[96,64],[64,96],[80,80]]",
         "data.image_shape_weights=[2,2,1]", "data.max_objects=4", "data.clutter=1.0", "data.anchor_base=16",
         "data.num_workers=0", "model.min_size=64", "model.max_size=96", "backbone=resnet_tiny", "schedule=smoke",
         "schedule.batch_size=2", "schedule.max_iter=6", "schedule.steps=[5]", "schedule.checkpoint_period=0", "loss=eiou"]


@pytest.mark.slow
def test_grouped_training_resumes_bitwise_and_loads_with_workers(tmp_path):
    import torch

    from bbrctl.config import compose, to_container
    from bbrctl.detection.train import engine

    cfg = to_container(compose(MIXED))
    D.ensure_dataset(cfg["data"])
    ds = D.build_dataset(cfg["data"], "train")
    assert {(ds.image_info(i)["width"], ds.image_info(i)["height"]) for i in range(len(ds))} >= {(96, 64), (64, 96)}
    dist = engine.Dist()
    # The loader's batches (two workers, real JPEGs) are single-shape and equal to one process's.
    loaders = [engine.train_loader({**cfg, "data": {**cfg["data"], "num_workers": w}}, ds, dist, 3) for w in (0, 2)]
    seq = [[[tuple(im.shape) for im in next(it)[0]] for _ in range(6)] for it in map(iter, loaders)]
    assert seq[0] == seq[1] and all(len(set(b)) == 1 for b in seq[0])

    torch.set_num_threads(1)

    def run(run_dir, max_iter):
        run_dir.mkdir(exist_ok=True)
        c = {**cfg, "schedule": {**cfg["schedule"], "max_iter": max_iter}}
        engine.run(c, run_dir, dist, progress=False)
        return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]

    straight = run(tmp_path / "straight", 6)
    run(tmp_path / "split", 3)
    resumed = run(tmp_path / "split", 6)
    assert "resuming at iteration 3/6" in (tmp_path / "split" / "train.log").read_text()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
