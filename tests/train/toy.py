"""A tiny model, loss and synthetic batch stream for testing the training machinery alone.

Labels are a smooth function of the structure, so the loss can fall in a few steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from foundation.data.crystal import Crystal
from foundation.data.graph import collate, neighbor_graph


@dataclass(frozen=True)
class ToyTask:
    name: str
    target: str
    kind: str = "regression"
    level: str = "structure"
    unit: str = "eV"
    forces_of: str | None = None


TASKS = [ToyTask("energy", "energy"), ToyTask("is_metal", "is_metal", kind="classification", unit="")]


def random_crystal(rng: np.random.Generator, key: str) -> Crystal:
    n = int(rng.integers(2, 6))
    numbers = rng.integers(1, 9, size=n)
    cell = np.eye(3) * float(rng.uniform(3.0, 4.0))
    positions = rng.uniform(0, 1, size=(n, 3)) @ cell
    energy = float(np.sum(-0.5 * numbers) + 0.1 * n)
    return Crystal(numbers=numbers, positions=positions, cell=cell, pbc=(True, True, True),
                   targets={"energy": energy, "is_metal": float(numbers.mean() > 4.5)}, id=key, source="toy")


def make_batch(seed: int, rank: int, index: int, size: int = 4):
    rng = np.random.default_rng([seed, rank, index])
    crystals = [random_crystal(rng, f"{rank}-{index}-{k}") for k in range(size)]
    return collate([neighbor_graph(c, 3.0, dataset="toy") for c in crystals])


class SyntheticStream:
    """Endless, position-addressable: batch k of rank r is a pure function of (seed, r, k).
    Batches whose index is in `nan_at` carry a NaN energy label (a corrupt record)."""

    def __init__(self, seed: int, rank: int, nan_at: tuple[int, ...] = ()):
        self.seed, self.rank, self.index, self.nan_at = seed, rank, 0, set(nan_at)

    def __next__(self):
        batch = make_batch(self.seed, self.rank, self.index)
        if self.index in self.nan_at:
            batch.targets["energy"][0] = float("nan")
        self.index += 1
        return batch

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = int(state["index"])


class ToyModel(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(10, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))
        self.dropout = nn.Dropout(0.1)  # exercises the torch RNG, so resume must restore it

    def forward(self, batch):
        h = self.mlp(self.dropout(self.embed(batch.numbers)))  # [n_atoms, 2]
        out = torch.zeros(batch.n_graphs, 2, dtype=h.dtype, device=h.device)
        out.index_add_(0, batch.batch, h)
        return {"energy": out[:, 0], "is_metal": out[:, 1] / batch.n_atoms.to(h.dtype)}


class ToyLoss(nn.Module):
    """Uncertainty-weighted MSE + BCE (Kendall et al.), one learned log-variance per task."""

    def __init__(self):
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(2))

    def forward(self, preds, batch):
        mse = ((preds["energy"] - batch.targets["energy"]) ** 2).mean()
        bce = nn.functional.binary_cross_entropy_with_logits(preds["is_metal"], batch.targets["is_metal"])
        terms = torch.stack([mse, bce])
        loss = (torch.exp(-self.log_var) * terms + self.log_var).sum()
        return loss, {"loss/energy": mse.detach(), "loss/is_metal": bce.detach(),
                      "weight/energy": torch.exp(-self.log_var[0]).detach()}
