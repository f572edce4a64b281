"""README's "Adding a conv" recipe, followed: PyG's ``GraphConv`` (sum of ``w_e x_j`` through
``lin_rel``, plus ``lin_root x_i``) as a Unifews conv in a few lines, equal to PyG's at zero
thresholds and following the edge rule literally above them."""
import pytest
import torch
from torch_geometric.nn import GraphConv

from close import assert_close, assert_same_forward_and_backward
from conftest import random_graph
from unifews_dist.nn import UnifewsConv, UnifewsLinear

N, F_IN, F_OUT = 30, 6, 4


class UnifewsGraphConv(UnifewsConv):
    """The recipe: its linear maps, and :meth:`combine`; the edges as given (no self-loops, no
    attention, nothing transformed before propagation), so nothing else is declared."""

    def __init__(self, in_channels: int, out_channels: int, thr_a: float = 0.0, thr_w: float = 0.0, **kwargs):
        super().__init__(thr_a=thr_a, **kwargs)
        self.lin_rel = UnifewsLinear(in_channels, out_channels, thr_w=thr_w)
        self.lin_root = UnifewsLinear(in_channels, out_channels, bias=False, thr_w=thr_w)

    def combine(self, agg, h_dst, x0):
        return self.lin_root(h_dst, add=self.lin_rel(agg))


def _pair(**kwargs):
    torch.manual_seed(0)
    mine, ref = UnifewsGraphConv(F_IN, F_OUT, **kwargs), GraphConv(F_IN, F_OUT)
    ref.lin_rel.weight.data.copy_(mine.lin_rel.weight)
    ref.lin_rel.bias.data.copy_(mine.lin_rel.bias)
    ref.lin_root.weight.data.copy_(mine.lin_root.weight)
    return mine, ref


@pytest.mark.parametrize("weighted", [False, True])
def test_the_recipe_conv_equals_pyg_at_zero_thresholds(weighted, float64):
    mine, ref = _pair()
    x, ei = torch.randn(N, F_IN), random_graph(N, 100, seed=2)
    ew = torch.rand(ei.size(1)) if weighted else None
    assert_same_forward_and_backward(lambda x: mine(x, ei, ew), lambda x: ref(x, ei, ew), x)
    assert_close(mine.lin_rel.weight.grad, ref.lin_rel.weight.grad)
    assert not (mine.adds_self_loops or mine.attention or mine.needs_x0 or mine.stack_options)
    assert mine.scores_inputs  # its first layer's rule can run in the loader, before the gather


def test_the_recipe_conv_prunes_by_the_rule(float64):
    mine, _ = _pair(thr_a=1.0)
    x, ei = torch.randn(N, F_IN), random_graph(N, 100, seed=3)
    ew = torch.rand(ei.size(1))
    scores = ew * x[ei[0]].norm(dim=1)
    expect = scores >= scores.mean()
    out, kept = mine(x, ei, ew, return_kept=True)
    assert torch.equal(kept, expect) and 0 < int(expect.sum()) < ei.size(1)
    agg = torch.zeros(N, F_IN).index_add_(0, ei[1][expect], (ew.view(-1, 1) * x[ei[0]])[expect])
    assert_close(out, agg @ mine.lin_rel.weight.t() + mine.lin_rel.bias + x @ mine.lin_root.weight.t())
