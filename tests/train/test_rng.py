import random

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from foundation.train.rng import capture_rng, restore_rng


def test_rng_round_trip_through_safetensors(tmp_path):
    random.random(), np.random.rand(), torch.rand(1), np.random.randn()  # has_gauss = 1
    tensors, meta = capture_rng()
    save_file(tensors, str(tmp_path / "rng.safetensors"), metadata=meta)
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), np.random.randn())
    random.seed(123), np.random.seed(5), torch.manual_seed(9)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "rng.safetensors"), framework="pt") as fh:
        restore_rng(load_file(str(tmp_path / "rng.safetensors")), fh.metadata())
    again = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), np.random.randn())
    assert first == again
