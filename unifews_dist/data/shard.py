"""Even seed sharding across DDP ranks."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data.distributed import DistributedSampler


class ShardedSeedSampler(DistributedSampler):
    """Positions ``0 .. num_seeds - 1`` split so that every rank gets exactly as many.

    Each epoch the positions are shuffled from ``(seed, epoch)`` (same permutation on every
    rank), cut to a multiple of ``num_replicas`` (**drops** at most ``num_replicas - 1`` seeds,
    different ones each epoch) and dealt round-robin, so ranks see disjoint seeds and the same
    number of batches for any seed count. With ``drop=False`` (evaluation) nothing is dropped
    and ranks may differ by one seed.

    Lightning calls :meth:`set_epoch` on it every epoch. :meth:`resume_at` makes the next pass
    over a given epoch start after the positions a checkpointed run had already used. It is a
    :class:`~torch.utils.data.distributed.DistributedSampler` (with its own split), so Lightning
    never replaces it with one of its own, whatever ``use_distributed_sampler`` says (a loader
    whose sampler already is one is left as it is).
    """

    def __init__(self, num_seeds: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop: bool = True):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
        if num_seeds < num_replicas:
            raise ValueError(f"{num_seeds} seed nodes cannot be split over {num_replicas} ranks")
        super().__init__(range(num_seeds), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop)
        self.num_seeds, self.num_replicas, self.rank = num_seeds, num_replicas, rank
        self.shuffle, self.seed, self.drop, self.epoch = shuffle, seed, drop, 0
        self._resume = None  # (epoch, positions to skip) for the next pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, used: int) -> None:
        """The next pass, if it is over ``epoch``, skips the first ``used`` positions."""
        self._resume = (int(epoch), int(used))

    def __len__(self) -> int:
        if self.drop:
            return self.num_seeds // self.num_replicas
        return len(range(self.rank, self.num_seeds, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_seeds, generator=g)
        else:
            order = torch.arange(self.num_seeds)
        if self.drop:
            order = order[: self.num_seeds - self.num_seeds % self.num_replicas]
        start = 0
        if self._resume is not None:
            epoch, used = self._resume
            self._resume = None
            start = used if epoch == self.epoch else 0
        return iter(order[self.rank::self.num_replicas][start:].tolist())
