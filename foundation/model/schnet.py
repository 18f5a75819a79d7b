"""SchNet (Schütt et al., J. Chem. Phys. 148, 241722, 2018): continuous-filter convolutions, the
second classic baseline, written on our graphs and heads.

Per interaction (`n_layers` of them, `width` features; the paper: 64 features, 3 interactions
for Materials Project formation energies, Gaussians 0.1 Å apart):

    W_ij = Dense(ssp(Dense(u_ij))) · c(|r_ij|)          # filter from the Gaussian expansion u_ij
    x_i' = x_i + Dense(ssp(Dense(Σ_j (x_j W_in) ⊙ W_ij)))   # residual update

ssp(x) = softplus(x) − log 2; c the cosine cutoff ½(cos(π r / r_c) + 1), which makes the energy
smooth where a neighbour crosses the cutoff.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..data.graph import Batch
from .config import ModelConfig, building_dtype
from ..nn.cell import CellDescriptors
from ..nn.species import ElementDescriptors
from .encoder import check_species, distance_edges, mean_pool, species_features

__all__ = ["SchNetEncoder", "Interaction"]


def _ssp(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x) - math.log(2.0)


class Interaction(nn.Module):
    """One continuous-filter interaction with its residual: [n_atoms, w] -> [n_atoms, w]."""

    def __init__(self, width: int, n_basis: int):
        super().__init__()
        self.filter_in, self.filter_out = nn.Linear(n_basis, width), nn.Linear(width, width)
        self.in2f = nn.Linear(width, width, bias=False)
        self.f2out, self.out = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor, basis: torch.Tensor, envelope: torch.Tensor, receiver: torch.Tensor,
                sender: torch.Tensor) -> torch.Tensor:
        w = self.filter_out(_ssp(self.filter_in(basis))) * envelope.unsqueeze(-1)  # [n_edges, w]
        message = self.in2f(x).index_select(0, sender) * w  # [n_edges, w]
        summed = torch.zeros_like(x).index_add_(0, receiver, message)  # [n_atoms, w]
        return x + self.out(_ssp(self.f2out(summed)))


class SchNetEncoder(nn.Module):
    """forward(batch, positions=None) -> {node_invariants [n_atoms, width], graph_features [n_graphs, width]}."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None):
        super().__init__()
        self.config, self.n_invariants = config, config.width
        with building_dtype(dtype):
            self.embedding = nn.Embedding(config.n_species, config.width)
            self.element_features = ElementDescriptors(config.n_species, config.width) if config.element_features else None
            self.cell_features = CellDescriptors(config.n_species, config.width) if config.cell_features else None
            self.blocks = nn.ModuleList(Interaction(config.width, config.n_basis) for _ in range(config.n_layers))

    def forward(self, batch: Batch, positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        check_species(batch.numbers, self.config)
        pos = batch.positions if positions is None else positions  # [n_atoms, 3] Å
        receiver, sender, length, basis = distance_edges(batch, pos, self.config)  # [n_kept], [n_kept, n_basis]
        envelope = 0.5 * (torch.cos(math.pi * length / self.config.cutoff) + 1.0)  # [n_kept]
        x = species_features(self, batch).to(pos.dtype)  # [n_atoms, w]
        for block in self.blocks:
            x = block(x, basis, envelope, receiver, sender)
        return {"node_invariants": x, "graph_features": mean_pool(x, batch.batch, batch.n_graphs)}
