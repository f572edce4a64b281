"""``unifews-dist report``: what a reader sees in the accuracy panel."""
import types

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from unifews_dist.commands.report import STEP, draw_accuracy, label  # noqa: E402


def _series(acc, edge, weight):
    steps = [9.0, 19.0, 29.0]
    return {"train/acc": (steps, acc), "val/acc": (steps, acc), "sparsity/edge/all": (steps, edge),
            "sparsity/weight/all": (steps, weight)}


def test_accuracy_panel_keeps_sparsity_apart_and_speaks_plainly(tmp_path):
    figures = []
    recording = types.SimpleNamespace(subplots=plt.subplots, close=figures.append)
    run = _series([0.5, 0.8, 0.9], [0.0, 0.5, 0.9], [0.0, 0.6, 0.91])
    dense = _series([0.5, 0.85, 0.9], [0.0] * 3, [0.0] * 3)
    assert draw_accuracy(recording, run, {"test_acc": 0.88}, (dense, {"test_acc": 0.89}), str(tmp_path / "a.png"))
    (fig,) = figures
    acc, sparsity = fig.axes  # two panels, one x axis: accuracy above, sparsity below (no twin axis)
    assert acc.get_ylabel() == "accuracy" and sparsity.get_ylabel() == "fraction pruned"
    assert sparsity.get_xlabel() == STEP and acc.get_shared_x_axes().joined(acc, sparsity)
    acc_labels = [t.get_text() for t in acc.get_legend().get_texts()]
    assert acc_labels == ["train accuracy", "validation accuracy", "test accuracy 0.880",
                          "baseline: validation accuracy", "baseline: test accuracy 0.890"]
    assert [t.get_text() for t in sparsity.get_legend().get_texts()] == ["edges pruned (all layers)",
                                                                         "weights pruned (all layers)"]
    assert all("/" not in t for t in acc_labels)
    plt.close(fig)


def test_labels_name_layers_from_one():
    assert label("sparsity/edge/layer0") == "layer 1" and label("time/forward_s") == "forward"
    assert label("something/else") == "something/else"
