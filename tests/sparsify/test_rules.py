import contextlib
import io
import math
import os

import pytest
import torch

from unifews_dist.sparsify import (column_sq_sums, edge_keep_mask, edge_scores, node_norms,
                                   propagation_macs, transform_macs, weight_keep_mask)


def test_edge_scores_equal_materialised_message_norms():
    h = torch.randn(7, 5)
    src = torch.tensor([0, 3, 3, 6, 1])
    w = torch.tensor([0.5, -2.0, 1.0, 0.0, 3.0])
    expect = (w.view(-1, 1) * h[src]).norm(dim=-1)
    assert torch.allclose(edge_scores(node_norms(h), src, w), expect)


def test_edge_rule_by_hand():
    s = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3
    assert edge_keep_mask(s, 1.0).tolist() == [False, False, True, True]
    assert edge_keep_mask(s, 0.5).tolist() == [False, True, True, True]
    assert edge_keep_mask(s, 0.0).all()
    locked = torch.tensor([True, False, False, False])
    assert edge_keep_mask(s, 100.0, locked).tolist() == [True, False, False, False]


def test_edge_scores_take_the_weights_magnitude():
    norm, src = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 2, 2])
    w = torch.tensor([0.5, -1.0, 2.0, -0.25])
    assert edge_scores(norm, src, w).tolist() == [0.5, 2.0, 6.0, 0.75]
    # weights known non-negative (a stack's prepared ones): no abs, the same scores
    assert edge_scores(norm, src, w.abs(), nonneg=True).tolist() == [0.5, 2.0, 6.0, 0.75]
    assert edge_scores(norm, src).tolist() == [1.0, 2.0, 3.0, 3.0]


def test_weight_rule_matches_brute_force():
    torch.manual_seed(0)
    W, X = torch.randn(6, 5), torch.randn(40, 5) * torch.tensor([0.1, 1, 2, 5, 0.5])
    thr = 1.3
    c = X.norm(dim=0)
    mask = weight_keep_mask(W, column_sq_sums(X).sqrt(), thr)
    ref = thr * c.norm() / 5
    expect = torch.zeros_like(mask)
    for i in range(6):
        for j in range(5):
            t = min(ref / c[j], W.abs().max() * (1 - 1e-6))
            expect[i, j] = W[i, j].abs() >= t
    assert torch.equal(mask, expect)
    assert 0 < mask.sum() < mask.numel()


def test_weight_rule_never_empties_a_layer():
    W = torch.randn(4, 3)
    assert weight_keep_mask(W, torch.ones(3), 1e9).sum() >= 1
    assert weight_keep_mask(W, torch.zeros(3), 2.0).sum() >= 1  # all-zero input: no NaN
    assert weight_keep_mask(W, torch.ones(3), 0.0).all()


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "x"])
def test_bad_thresholds(bad):
    with pytest.raises(ValueError, match="thr_a must be a finite number >= 0, got"):
        edge_keep_mask(torch.ones(3), bad)
    with pytest.raises(ValueError, match="thr_w"):
        weight_keep_mask(torch.ones(2, 3), torch.ones(3), bad)


def test_mismatched_shapes():
    with pytest.raises(ValueError, match=r"col_norms must have shape \(3,\)"):
        weight_keep_mask(torch.ones(2, 3), torch.ones(4), 1.0)
    with pytest.raises(ValueError, match="edge_weight must have shape"):
        edge_scores(torch.ones(3), torch.tensor([0, 1]), torch.ones(3))
    with pytest.raises(ValueError, match="locked must have shape"):
        edge_keep_mask(torch.ones(3), 1.0, torch.ones(2, dtype=torch.bool))


def test_macs_are_64_bit_safe():
    # papers100M-sized counts overflow int32: Python ints do not
    assert propagation_macs(3_200_000_000, 256) == 819_200_000_000
    assert transform_macs(111_000_000, 256, 256, weight_nnz=6554) == 111_000_000 * 6554
    assert transform_macs(10, 3, 4) == 120
    assert propagation_macs(2**31, 2) == 2**32 == int(math.pow(2, 32))


def test_the_weight_rule_is_stated_once_the_same_everywhere():
    """README, --help (the module's docstring) and the layer say the rule the code applies:
    ``|W[i, j]| * ||X[:, j]|| < thr_w * ||c||_2 / F_in`` (not 'the mean column norm', which it is not)."""
    from unifews_dist.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = " ".join(out.getvalue().split())
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    readme = " ".join(open(os.path.join(root, "README.md")).read().split())
    for text in (help_text, readme):
        assert "thr_w * ||c||_2 / F_in" in text
        assert "mean input column norm" not in text and "mean input-column norm" not in text
    # and it is what the code does: the threshold is exactly at thr_w * ||c||_2 / F_in
    w = torch.tensor([[0.5, 2.0], [1.0, 4.0]])
    c = torch.tensor([2.0, 1.0])
    ref = 1.0 * torch.linalg.vector_norm(c) / 2  # thr_w 1: 1.118
    keep = weight_keep_mask(w, c, 1.0)
    assert keep.tolist() == [[(0.5 * 2.0) >= ref, (2.0 * 1.0) >= ref], [(1.0 * 2.0) >= ref, (4.0 * 1.0) >= ref]]
