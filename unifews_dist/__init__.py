"""unifews_dist: entry-wise sparsified GNN training (Unifews) on sampled minibatches, with DDP."""
import os

# OpenMP threads that spin at every barrier collapse when another process shares the cores: the
# built-in sampler ran several times slower beside one busy process with torch's default than
# with passive waiting (benchmarks/sampler_speed.py, BENCHMARKS.md). OpenMP reads this when torch loads, so it takes
# effect where unifews_dist is imported before torch (the CLI, DataLoader workers it starts);
# a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
