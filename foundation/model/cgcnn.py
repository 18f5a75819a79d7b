"""CGCNN (Xie and Grossman, PRL 120, 145301, 2018): gated convolutions on Gaussian-expanded
distances, the baseline every crystal model is measured against, written on our graphs and heads.

Per layer, for atom i and each neighbour j (the `max_neighbors` nearest within the cutoff; the
paper: 12 within 8 Å), with u_ij the Gaussian expansion of |r_ij| (`n_basis` centres, 0.2 Å apart
in the paper):

    z_ij = [v_i, v_j, u_ij] W + b                            # [n_edges, 2·width]
    v_i' = softplus(v_i + BN(Σ_j σ(BN(z_ij)_filter) ⊙ softplus(BN(z_ij)_core)))

Differences from the reference package, none of which favour us: species enter through a
learned embedding, not the 92-value element descriptor table; the heads are ours (an MLP per
atom, pooled), not pooling then an MLP. The paper's widths: 64 atom features, 3 layers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..data.graph import Batch
from .config import ModelConfig, building_dtype
from ..nn.cell import CellDescriptors
from ..nn.species import ElementDescriptors
from .encoder import check_species, distance_edges, mean_pool, species_features

__all__ = ["CGCNNEncoder", "CGConv"]


class CGConv(nn.Module):
    """One gated convolution: [n_atoms, w] -> [n_atoms, w]."""

    def __init__(self, width: int, n_basis: int):
        super().__init__()
        self.linear = nn.Linear(2 * width + n_basis, 2 * width)
        self.bn_edges = nn.BatchNorm1d(2 * width)
        self.bn_atoms = nn.BatchNorm1d(width)

    def forward(self, v: torch.Tensor, basis: torch.Tensor, receiver: torch.Tensor, sender: torch.Tensor) -> torch.Tensor:
        z = self.linear(torch.cat([v.index_select(0, receiver), v.index_select(0, sender), basis], dim=-1))
        gate, core = self.bn_edges(z).chunk(2, dim=-1)  # [n_edges, w] each
        message = torch.sigmoid(gate) * F.softplus(core)  # [n_edges, w]
        summed = torch.zeros_like(v).index_add_(0, receiver, message)  # [n_atoms, w]
        return F.softplus(v + self.bn_atoms(summed))


class CGCNNEncoder(nn.Module):
    """forward(batch, positions=None) -> {node_invariants [n_atoms, width], graph_features
    [n_graphs, width]} (the invariant output every encoder gives the heads)."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None):
        super().__init__()
        self.config, self.n_invariants = config, config.width
        with building_dtype(dtype):
            self.embedding = nn.Embedding(config.n_species, config.width)
            self.element_features = ElementDescriptors(config.n_species, config.width) if config.element_features else None
            self.cell_features = CellDescriptors(config.n_species, config.width) if config.cell_features else None
            self.blocks = nn.ModuleList(CGConv(config.width, config.n_basis) for _ in range(config.n_layers))

    def forward(self, batch: Batch, positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        check_species(batch.numbers, self.config)
        pos = batch.positions if positions is None else positions  # [n_atoms, 3] Å
        receiver, sender, _, basis = distance_edges(batch, pos, self.config)  # basis [n_kept, n_basis]
        v = species_features(self, batch).to(pos.dtype)  # [n_atoms, w]
        for block in self.blocks:
            v = block(v, basis, receiver, sender)
        return {"node_invariants": v, "graph_features": mean_pool(v, batch.batch, batch.n_graphs)}
