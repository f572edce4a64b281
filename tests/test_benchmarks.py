"""CI runs each benchmark once at --scale tiny to prove it works (timings are not asserted)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script,out,keys", [
    ("layer_speed.py", "layer_speed.json", ["propagation_ratio_90", "transform_ratio_90"]),
    ("sampler_speed.py", "sampler_speed.json", ["builtin_s_per_batch", "torch_sparse_s_per_batch"]),
])
def test_benchmark_runs_tiny(tmp_path, script, out, keys):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--scale", "tiny",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / out) as f:
        res = json.load(f)
    for k in keys:
        assert k in res
    assert res[keys[0]] > 0
