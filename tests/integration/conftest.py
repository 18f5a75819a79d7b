import subprocess

import pytest
import yaml
from run_fixtures import ROOT, clean_env, one_node, sample_config

STEPS = 12


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory):
    """One shard cache for every end-to-end run of the session (keyed by content: runs share it)."""
    return tmp_path_factory.mktemp("shard_cache")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, sample_cache):
    """One uninterrupted 2-process run of `sample_config` (12 steps, checkpoints at 6 and 12; also
    the shard build, once per session): (config, run_dir, output)."""
    base = tmp_path_factory.mktemp("pretrain")
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump(sample_config(sample_cache, STEPS)))
    run_dir = base / "run"
    proc = subprocess.run(one_node(config, 2, f"run_dir={run_dir}"), env=clean_env(), capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return config, run_dir, out
