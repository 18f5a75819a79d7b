"""Capture and restore every random generator a rank uses, as tensors + JSON (safetensors-ready).

Saved per rank: Python `random`, NumPy's global generator, torch CPU and (if present) every
CUDA device. Restoring them makes dropout, shuffles and sampling after a resume identical to
the uninterrupted run.
"""

from __future__ import annotations

import json
import random

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata): the tensors hold the big states, the metadata (strings) the small ones."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {
        "rng.torch": torch.get_rng_state(),  # [5056] uint8
        "rng.numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),  # [624] (uint32 values)
        "rng.python_state": torch.tensor(py_state, dtype=torch.int64),  # [625]
    }
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta = {
        "rng.python": json.dumps({"version": py_version, "gauss": py_gauss}),
        "rng.numpy": json.dumps({"name": np_name, "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                                 "gauss": float(np_gauss)}),
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Inverse of `capture_rng`. CUDA states are restored for the devices present in both."""
    py = json.loads(meta["rng.python"])
    random.setstate((py["version"], tuple(int(v) for v in tensors["rng.python_state"].tolist()), py["gauss"]))
    npm = json.loads(meta["rng.numpy"])
    keys = tensors["rng.numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((npm["name"], keys, npm["pos"], npm["has_gauss"], npm["gauss"]))
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            key = f"rng.cuda.{i}"
            if key in tensors:
                torch.cuda.set_rng_state(tensors[key].to(torch.uint8), device=i)
