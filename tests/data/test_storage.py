"""Where datasets live: ``--data.root``, else ``$UNIFEWS_DATA``, else the cache's ``data/``."""
import glob
import os

import yaml

from cli_run import ROOT
from unifews_dist.data.storage import cache_dir, data_dir


def test_data_root_is_the_option_then_the_variable_then_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIFEWS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UNIFEWS_DATA", raising=False)
    assert data_dir() == str(tmp_path / "cache" / "data") == os.path.join(cache_dir(), "data")
    monkeypatch.setenv("UNIFEWS_DATA", str(tmp_path / "datasets"))
    assert data_dir() == str(tmp_path / "datasets")
    assert data_dir(str(tmp_path / "mine")) == str(tmp_path / "mine")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir("~/graphs") == str(tmp_path / "home" / "graphs")


def test_no_shipped_config_reads_data_outside_the_users_data_root():
    """The configs leave the root to data_dir(): a fresh clone reads and downloads datasets where
    the user keeps them, not into a folder beside the checkout."""
    configs = glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    assert len(configs) >= 12
    for path in configs:
        with open(path) as f:
            data = (yaml.safe_load(f) or {}).get("data") or {}
        assert "root" not in data, f"{path} sets data.root {data.get('root')!r}"
