"""The loaders a data module hands Lightning: the resumable training loader, which gathers only
the feature rows a layer reads, and a one-batch dataset for whole-graph evaluation."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch_geometric.loader import NodeLoader


class PublishedThreshold:
    """A first-layer threshold the trainer publishes (:meth:`publish`) and the loader reads as it
    samples: in shared memory, so DataLoader workers, forked or spawned, read what was written last."""

    def __init__(self):
        self.threshold = torch.zeros(1, dtype=torch.float64).share_memory_()

    def publish(self, thr_a: float) -> None:
        self.threshold.fill_(float(thr_a))

    def read(self) -> float:
        return float(self.threshold[0])


class RowsGather(PublishedThreshold):
    """Gathers a training batch's feature rows that some layer reads: the first layer's edge
    rule (a model's :meth:`~unifews_dist.nn.UnifewsGNN.input_rule`) applied to the sampled block
    from every node's input norm, at the threshold the trainer last published (each step). A
    batch carries
    ``x_rows`` (the block positions of its rows), ``x`` (those rows only, unless ``features`` is
    ``None``: gathered after the transfer), ``score_mean`` (the rule's mean, which the model's
    first layer takes), ``gather_thr`` (the threshold applied) and ``rows_gathered``.

    Why not PyG's: :class:`NodeLoader` gathers every sampled node's row; its
    ``transform_sampler_output`` hook sees the sample before the gather, but what it finds (the
    rows to gather, the scores) has no way into the batch (``filter_fn`` gathers every node of
    the sample and keeps the sample's own fields only), so the loader's ``filter_fn`` calls
    this after gathering everything but the features (:meth:`ResumableNodeLoader.filter_fn`)."""

    def __init__(self, rule, norms: Tensor, features: Optional[Tensor]):
        super().__init__()
        self.rule, self.norms, self.features = rule, norms, features

    def __call__(self, out, data) -> None:
        thr = self.read()
        norms = self.norms.index_select(0, out.node.to(self.norms.device))
        rows, mean = self.rule.rows_read(norms, data.edge_index, out.num_sampled_nodes, out.num_sampled_edges,
                                         int(data.batch_size), thr)
        data.x_rows, data.score_mean, data.gather_thr = rows, mean, thr
        data.rows_gathered = int(rows.numel())
        if self.features is not None:
            data.x = self.features.index_select(0, out.node.index_select(0, rows).to(self.features.device))


class SampleLess(PublishedThreshold):
    """The sampler's ``expand_rule`` (:class:`~unifews_dist.data.sampler.TorchNeighborSampler`):
    a model's first-layer rule (:meth:`~unifews_dist.nn.models.input_rule.InputRule.hop_kept`),
    estimated hop by hop while sampling, so a node whose every out-edge it drops is never
    expanded. The threshold is the one published for the epoch (the first layer's at the
    epoch's start), so a batch's sample depends on its
    epoch only, never on when a worker drew it: a run, resumed or not, samples the same blocks.
    An approximation of the method: the rule's mean is the hops so far, not the whole block's,
    and a node not expanded may still be read through an edge the exact rule keeps."""

    def __init__(self, rule, norms: Tensor):
        super().__init__()
        self.rule, self.norms = rule, norms

    def __call__(self, hop: int, src: Tensor, dst: Tensor, num_dst: int, partial):
        norms = self.norms.index_select(0, src.to(self.norms.device)).to(src.device)
        return self.rule.hop_kept(norms, dst, num_dst, hop, self.read(), partial)


def expand_rows(batch, x: Tensor) -> Tensor:
    """A batch's gathered rows ``x`` (at ``batch.x_rows``) as the block's full feature matrix,
    zeros where no row was gathered (read by no layer)."""
    full = x.new_zeros(batch.n_id.numel(), *x.shape[1:])
    return full.index_copy_(0, batch.x_rows, x)


class ResumableNodeLoader(NodeLoader):
    """A training loader Lightning resumes mid-epoch: its state (Lightning saves it in every
    checkpoint, see ``CombinedLoader``'s stateful loaders) is the epoch and how many batches
    training has taken from it; loaded, the next pass over that epoch starts after them, so a run
    resumed from a mid-epoch checkpoint (SLURM's requeue signal, ``every_n_train_steps``) sees
    the batches an uninterrupted one does. PyG's NodeLoader keeps no such state.

    ``gather``: a :class:`RowsGather`; the graph given then holds no features (``x``), and each
    batch's rows are gathered by it, only those a layer reads."""

    def __init__(self, *args, gather: Optional[RowsGather] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gather = gather

    def filter_fn(self, out):
        data = super().filter_fn(out)
        if self.gather is not None:
            self.gather(out, data)
        return data

    def __iter__(self):
        self._taken = 0
        for batch in super().__iter__():
            self._taken += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": getattr(self, "_taken", 0)}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.resume_at(state["epoch"], state["batches"] * self.batch_size)


class OneBatch(torch.utils.data.Dataset):
    """A dataset of one item, ``make()``, made anew each time it is read: what it holds lives only
    as long as whoever reads it keeps it."""

    def __init__(self, make):
        self.make = make

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        if i != 0:
            raise IndexError(i)
        return self.make()
