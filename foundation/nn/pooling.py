"""Per-structure pooling of per-atom rows (the encoders' graph features, the structure context)."""

from __future__ import annotations

import torch

__all__ = ["mean_pool"]


def mean_pool(values: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Per-graph mean of per-atom rows: [n_atoms, F] -> [n_graphs, F]."""
    total = values.new_zeros((n_graphs,) + values.shape[1:]).index_add_(0, batch, values)
    count = values.new_zeros(n_graphs).index_add_(0, batch, values.new_ones(values.shape[0]))
    return total / count.clamp(min=1).reshape((n_graphs,) + (1,) * (values.dim() - 1))
