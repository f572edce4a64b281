import os
import socket
import tempfile

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

SHARED_CORA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "planetoid")
# The suite reaches data as a user does (data_dir(): $UNIFEWS_DATA), here this machine's read-only
# copy of Cora when there is one, and writes its caches to a folder of its own, never to the
# user's ~/.cache (subprocesses inherit both).
if os.path.isdir(os.path.join(SHARED_CORA, "Cora", "raw")):
    os.environ.setdefault("UNIFEWS_DATA", os.path.abspath(SHARED_CORA))
os.environ.setdefault("UNIFEWS_CACHE", tempfile.mkdtemp(prefix="unifews-test-cache-"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped without one (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def float64():
    """Tensors and modules made in the test are float64: path-equivalence tests compare two
    summation orders, which agree to ~1e-16 of the scale there (close.py)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def random_graph(num_nodes=30, num_edges=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    return torch.unique(ei, dim=1)
