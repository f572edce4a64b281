"""unifews_dist: entry-wise sparsified GNN training (Unifews) on sampled minibatches, with DDP."""
import os

# OpenMP threads that spin at every barrier collapse when another process shares the cores: the
# built-in sampler ran 3.2x slower beside one busy process with torch's default, 1.55x with
# passive waiting (benchmarks/sampler_speed.py). OpenMP reads this when torch loads, so it takes
# effect where unifews_dist is imported before torch (the CLI, DataLoader workers it starts);
# a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
