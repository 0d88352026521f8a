"""Training batches grouped by aspect ratio: deterministic, DDP-sharded, exactly resumable.

Why: torchvision's detectors resize every image (shorter side 800, longer at most 1333 on
COCO) and pad a batch to its largest height and largest width, so a batch that mixes a
landscape and a portrait image is padded to about 1333 x 1333: nearly twice the pixels of
either. Batching images of similar shape together (as torchvision's and mmdetection's
references do) removes that waste.

Groups (:func:`aspect_ratio_groups`, ``data.aspect_ratio_group_factor = k``): the aspect
ratio w / h of each image is binned at the edges ``2 ** linspace(-1, 1, 2k + 1)`` (k = 3:
0.5, 0.63, 0.79, 1, 1.26, 1.59, 2; 2k + 2 groups), torchvision's reference rule; k = 0 is
two groups, w / h < 1 and >= 1 (mmdetection's); k = -1 (the default) turns grouping off.
A group with fewer images than a global batch is merged into its nearest non-empty
neighbour, so that no batch has to repeat an image of a tiny group.

The stream (:class:`GroupedTrainSampler`): the epoch order is :class:`TrainSampler`'s
(a permutation and flip coins drawn from (seed, epoch)); keys are dealt, in that order,
into one buffer per group, and a group's buffer is emitted as the next *global* batch as
soon as it holds ``batch_size`` keys. Buffers carry over from one epoch to the next, so
no image is dropped or repeated: over time every image is seen once per epoch. The
stream is a pure function of (seed, sizes, groups), and its position after iteration i is
``i * batch_size``, as for TrainSampler: ``start = i * batch_size`` resumes it exactly
(the carried buffers are recomputed by replaying the earlier epochs' orders, a fraction of
a second for COCO's 12 epochs). With one group it *is* TrainSampler's stream.

DDP: rank r of w takes the keys at global positions p with p % w == r, like TrainSampler;
since w divides the global batch, the consecutive ``batch_size / w`` keys a rank's
DataLoader batches together are exactly its share of one global batch, all of one group.
"""

from __future__ import annotations

import bisect
from typing import Any, Iterator, Mapping, Sequence

from bbrctl.errors import UserError

OFF = -1


def bin_edges(factor: int) -> list[float]:
    """Aspect-ratio bin edges for ``factor`` k: 2 ** linspace(-1, 1, 2k + 1); [1.0] for k = 0."""
    if factor < 0:
        return []
    if factor == 0:
        return [1.0]
    n = 2 * factor + 1
    return [2.0 ** (-1.0 + 2.0 * i / (n - 1)) for i in range(n)]


def aspect_ratio_groups(sizes: Sequence[tuple[int, int]], factor: int, batch_size: int) -> list[int]:
    """Group id of each image from its (width, height); see the module docstring.

    Group ids are bin indices (0 = the tallest images) after merging groups smaller than
    ``batch_size`` into their nearest non-empty neighbour (ties: the lower bin).
    """
    edges = bin_edges(factor)
    groups = [bisect.bisect_right(edges, w / h) for w, h in sizes]
    if not groups:
        return groups
    while True:
        counts: dict[int, int] = {}
        for g in groups:
            counts[g] = counts.get(g, 0) + 1
        small = sorted((n, g) for g, n in counts.items() if n < batch_size)
        if not small or len(counts) == 1:
            return groups
        _, g = small[0]
        others = [o for o in counts if o != g]
        target = min(others, key=lambda o: (abs(o - g), o))
        groups = [target if x == g else x for x in groups]


class GroupedTrainSampler:
    """An endless stream of ``(index, hflip)`` keys whose global batches are single-group.

    ``groups[i]``: group id of dataset index i (:func:`aspect_ratio_groups`);
    ``batch_size``: the global batch. Other arguments as :class:`TrainSampler`.
    """

    def __init__(self, groups: Sequence[int], batch_size: int, seed: int = 0, *, hflip_prob: float = 0.5,
                 start: int = 0, rank: int = 0, world_size: int = 1):
        from bbrctl.detection.data.datasets import TrainSampler

        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"the global batch {batch_size} must be a positive multiple of the world size {world_size}")
        self.base = TrainSampler(len(groups), seed, hflip_prob=hflip_prob, start=0, rank=0, world_size=1)
        self.groups = list(groups)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.start, self.rank, self.world_size = int(start), rank, world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")

    def batches(self) -> Iterator[list[tuple[int, bool]]]:
        """The global batches, from the first."""
        buffers: dict[int, list] = {}
        epoch = 0
        while True:
            for key in self.base.epoch_keys(epoch):
                buf = buffers.setdefault(self.groups[key[0]], [])
                buf.append(key)
                if len(buf) == self.batch_size:
                    yield buf
                    buffers[self.groups[key[0]]] = []
            epoch += 1

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        first, offset = divmod(self.start, self.batch_size)
        for b, batch in enumerate(self.batches()):
            if b < first:
                continue
            base = b * self.batch_size
            for j in range(offset if b == first else 0, self.batch_size):
                if (base + j) % self.world_size == self.rank:
                    yield batch[j]


def train_sampler(data_cfg: Mapping[str, Any], dataset, *, batch_size: int, seed: int, hflip_prob: float,
                  start: int, rank: int, world_size: int):
    """The training sampler ``data_cfg`` asks for: grouped by aspect ratio, or TrainSampler."""
    from bbrctl.detection.data.datasets import TrainSampler

    factor = data_cfg.get("aspect_ratio_group_factor")
    factor = OFF if factor is None else int(factor)
    if factor < 0:
        return TrainSampler(len(dataset), seed=seed, hflip_prob=hflip_prob, start=start, rank=rank,
                            world_size=world_size)
    if len(dataset) == 0:
        raise UserError("the training set is empty: no image has a usable annotation")
    sizes = [(dataset.image_info(i)["width"], dataset.image_info(i)["height"]) for i in range(len(dataset))]
    groups = aspect_ratio_groups(sizes, factor, batch_size)
    return GroupedTrainSampler(groups, batch_size, seed, hflip_prob=hflip_prob, start=start, rank=rank,
                               world_size=world_size)
