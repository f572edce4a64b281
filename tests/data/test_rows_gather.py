"""#40: the first layer's rule applied in the loader, before the gather. Rows no layer reads are
not gathered, and what the model computes is exactly what it computes from the whole block."""
import os
from types import SimpleNamespace

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.sampler import NodeSamplerInput

from unifews_dist.data import TorchNeighborSampler, UnifewsDataModule
from unifews_dist.data.samplers import has_module
from unifews_dist.nn import UnifewsGNN
from unifews_dist.sparsify import node_norms


def _block(num_nodes=1500, num_edges=15000, fanout=(10, 8, 4), seeds=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(num_nodes, 24, generator=g) * torch.rand(num_nodes, 1, generator=g) * 3
    ei = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    out = TorchNeighborSampler(Data(edge_index=ei, num_nodes=num_nodes), list(fanout), seed=0) \
        .sample_from_nodes(NodeSamplerInput(None, torch.arange(seeds)))
    return x, out, torch.stack([out.row, out.col])


def _run(model, x, out, ei, mean=None):
    """Outputs, parameter gradients and packed statistics of one training forward and backward."""
    model.zero_grad()
    y = model(x, ei, out.num_sampled_nodes, 64, out.num_sampled_edges, input_mean=mean)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()], model.stats_tensor().clone()


@pytest.mark.parametrize("layers,lock", [(2, "never"), (3, "always"), (3, "never")])
def test_the_loaders_rule_is_the_stacks(layers, lock):
    """Rows left out by the rule at the loader's threshold (zeros in x) change nothing the stack
    computes, at that threshold or a higher one: outputs, gradients, statistics (bit for bit)."""
    x, out, ei = _block(fanout=(10, 8, 4)[:layers])
    torch.manual_seed(1)
    model = UnifewsGNN("sage", 24, 16, 5, num_layers=layers, thr_a=[1.4, 1.0, 0.8][:layers], thr_w=0.5,
                       lock_target_edges=lock, dropout=0.0)
    rule = model.input_rule()
    xb = x[out.node]
    norms = node_norms(x)[out.node]  # every node's, computed once
    assert torch.equal(norms, node_norms(xb))  # (what the layer computes from the block)
    whole = _run(model, xb, out, ei)
    gathered = []
    for loader_thr in (1.4, 1.1, 0.0):
        rows, mean = rule.rows_read(norms, ei, out.num_sampled_nodes, out.num_sampled_edges, 64, loader_thr)
        xz = torch.zeros_like(xb).index_copy_(0, rows, xb[rows])
        mine = _run(model, xz, out, ei, mean=mean)
        assert torch.equal(mine[0], whole[0]) and torch.equal(mine[2], whole[2])
        assert all(torch.equal(a, b) for a, b in zip(mine[1], whole[1]))
        gathered.append(rows.numel())
    inner = sum(out.num_sampled_nodes[:layers - 1])  # the second layer's targets are read
    assert inner < gathered[0] < gathered[1] < gathered[2] == xb.size(0)


def test_only_convs_that_score_their_inputs_have_a_loader_rule():
    made = {conv: UnifewsGNN(conv, 8, 8, 3, num_layers=2).input_rule() for conv in ("sage", "gcn", "gat", "gin",
                                                                                      "gcnii")}
    assert made["sage"] is not None and [c for c, r in made.items() if r is not None] == ["sage"]
    with pytest.raises(ValueError, match="input_mean is for a stack"):
        UnifewsGNN("gcn", 8, 8, 3)(torch.randn(4, 8), torch.tensor([[0], [1]]), input_mean=torch.tensor(1.0))


def _modules(prune, lock="always", **data):
    """A data module (Cora, quick-start fanout) and a fake trainer whose module holds ``model``."""
    torch.manual_seed(3)
    dm = UnifewsDataModule("cora", num_neighbors=[25, 25], batch_size=140, random_split=[0.5, 0.25],
                           prune_before_gather=prune, **data)
    model = UnifewsGNN("sage", dm.num_features, 16, dm.num_classes, thr_a=[2.0, 1.0], thr_w=0.0, dropout=0.0,
                       lock_target_edges=lock)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(model=model), world_size=1, global_rank=0)
    return dm, model


@pytest.mark.parametrize("data", [{}, {"num_workers": 2, "feature_gather": "device", "feature_dtype": "float16"}],
                         ids=["main-process", "workers-device-gather-fp16"])
def test_batches_gathered_by_the_rule_train_as_whole_ones(data):
    whole_dm, model = _modules(False, **data)
    dm, _ = _modules(True, **data)
    loader = dm.train_dataloader()
    dm._gather.publish(2.0)
    n = 0
    for a, b in zip(whole_dm.train_dataloader(), loader):
        a, b = whole_dm.on_after_batch_transfer(a, 0), dm.on_after_batch_transfer(b, 0)
        assert b.gather_thr == 2.0 and b.rows_gathered < 0.7 * b.n_id.numel()
        assert torch.equal(b.x[b.x_rows], a.x[b.x_rows]) and int((b.x != 0).any(1).sum()) <= b.rows_gathered
        dm.before_training_step(b, 2.0)
        outs = []
        for batch, mean in ((a, None), (b, b.score_mean)):
            model.zero_grad()
            y = model(batch.x, batch.edge_index, batch.num_sampled_nodes, batch.batch_size, batch.num_sampled_edges,
                      input_mean=mean)
            y.square().mean().backward()
            outs.append((y.detach(), [p.grad.clone() for p in model.parameters()], model.stats_tensor()))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][2], outs[1][2])
        assert all(torch.equal(g, h) for g, h in zip(outs[0][1], outs[1][1]))
        n += 1
    assert n == 10  # 1354 training nodes in batches of 140


def test_a_step_below_the_loaders_threshold_gathers_the_rest():
    """A batch pruned at a threshold above its step's (a threshold that fell) is completed when
    the step starts: its x is then the whole block's."""
    whole_dm, _ = _modules(False)
    dm, _ = _modules(True)
    loader = dm.train_dataloader()
    dm._gather.publish(2.0)
    a, b = next(iter(whole_dm.train_dataloader())), dm.on_after_batch_transfer(next(iter(loader)), 0)
    before = b.rows_gathered
    dm.before_training_step(b, 1.9)
    assert torch.equal(b.x, a.x) and b.rows_gathered == b.n_id.numel() > before and b.gather_thr == 0.0
    assert dm._gather.read() == 1.9  # what the loader prunes the next batches at


def test_workers_prune_at_the_threshold_published_last():
    dm, _ = _modules(True, num_workers=2)
    loader = dm.train_dataloader()
    dm._gather.publish(1.5)
    seen = []
    for i, b in enumerate(loader):
        seen.append(b.gather_thr)
        if i == 0:
            dm._gather.publish(3.0)
    # the first batches were asked of the workers before the change; those asked after see it
    assert seen[0] == 1.5 and seen[-1] == 3.0 and set(seen) == {1.5, 3.0}


def test_feature_norms_are_computed_once_and_kept_beside_the_prepared_graph():
    from unifews_dist.data.prepared import feature_norms, load_prepared

    ds = load_prepared("synthetic-tiny", seed=5, feature_dtype="float16")
    first = feature_norms(ds)
    kept = [f for f in os.listdir(ds.folder) if f.startswith("x_norm-")]
    assert len(kept) == 1 and torch.equal(first, node_norms(ds.data.x.float()))
    os.utime(os.path.join(ds.folder, kept[0]), (0, 0))
    assert torch.equal(feature_norms(ds), first)  # read back, not written again
    assert os.stat(os.path.join(ds.folder, kept[0])).st_mtime == 0


def test_sample_less_estimates_the_rule_from_the_hops_so_far():
    """#40 item 2: a hop's edges are weighed from their targets' in-edges in the hop (SAGE: 1/deg)
    and compared with the mean over the hops so far; seed edges are kept where the rule locks them."""
    rule = UnifewsGNN("sage", 4, 4, 2, lock_target_edges="never").input_rule()
    norms, dst = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 1, 1])  # scores 0.5 1 1.5 2, mean 1.25
    keep, partial = rule.hop_kept(norms, dst, 2, 0, 1.0)
    assert keep.tolist() == [False, False, True, True] and partial.tolist() == [5.0, 4.0]
    ones, two = torch.tensor([1.0, 1.0]), torch.tensor([0, 1])  # scores 1 1: mean so far 7 / 6
    assert rule.hop_kept(ones, two, 2, 1, 1.0, partial)[0].tolist() == [False, False]
    assert rule.hop_kept(ones, two, 2, 1, 0.8, partial)[0].tolist() == [True, True]
    locked = UnifewsGNN("sage", 4, 4, 2, lock_target_edges="always").input_rule()
    assert locked.hop_kept(norms, dst, 2, 0, 1.0)[0].all() and not locked.hop_kept(norms, dst, 2, 1, 1.0)[0].all()


def test_sample_less_samples_at_the_epochs_threshold_which_checkpoints_keep():
    whole_dm, _ = _modules(True, lock="eval", sample_less=False)
    dm, _ = _modules(True, lock="eval", sample_less=True)
    loader = dm.train_dataloader()
    dm.before_training_epoch(2.0)
    a, b = next(iter(whole_dm.train_dataloader())), next(iter(loader))
    assert b.num_sampled_nodes[:2] == a.num_sampled_nodes[:2] and b.num_sampled_edges[0] == a.num_sampled_edges[0]
    assert b.n_id.numel() < 0.7 * a.n_id.numel()  # the hop-1 nodes whose seed edge the rule drops: not expanded
    assert dm.state_dict() == {"epoch_thr_a": 2.0} and whole_dm.state_dict() == {}
    resumed, _ = _modules(True, lock="eval", sample_less=True)
    resumed.load_state_dict(dm.state_dict())  # a checkpoint restored before the loader is made
    c = next(iter(resumed.train_dataloader()))
    assert torch.equal(b.n_id, c.n_id) and torch.equal(b.edge_index, c.edge_index)
    val = next(iter(dm.val_dataloader()))  # evaluation samples in full
    assert val.n_id.numel() == next(iter(whole_dm.val_dataloader())).n_id.numel()
    if has_module("torch_sparse"):  # a sampler of the user's choosing samples in full
        other, _ = _modules(True, lock="eval", sample_less=True, sampler="torch_sparse")
        other.train_dataloader()
        assert other._less is None
