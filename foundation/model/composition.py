"""The composition-only baseline: what element fractions alone predict, no structure.

Each atom's feature is an MLP of its element's embedding and the mean embedding of its structure
(`n_layers` layers of `width`), so a head's pooled prediction is a nonlinear function of the
element fractions and nothing else: two polymorphs get the same prediction. The number a
structure-aware model must beat to show it uses the structure (Roost and ElemNet are the
stronger, learned relatives of this baseline).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.graph import Batch
from .config import ModelConfig, building_dtype
from ..nn.cell import CellDescriptors
from ..nn.species import ElementDescriptors
from .encoder import check_species, mean_pool, species_features

__all__ = ["CompositionEncoder"]


class CompositionEncoder(nn.Module):
    """forward(batch, positions=None) -> {node_invariants [n_atoms, width], graph_features [n_graphs, width]}."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None):
        super().__init__()
        self.config, self.n_invariants = config, config.width
        w = config.width
        with building_dtype(dtype):
            self.embedding = nn.Embedding(config.n_species, w)
            self.element_features = ElementDescriptors(config.n_species, w) if config.element_features else None
            self.cell_features = CellDescriptors(config.n_species, w) if config.cell_features else None
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(2 * w, w), nn.SiLU()) for _ in range(config.n_layers))

    def forward(self, batch: Batch, positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        check_species(batch.numbers, self.config)
        dtype = (batch.positions if positions is None else positions).dtype
        h = species_features(self, batch).to(dtype)  # [n_atoms, w]
        for block in self.blocks:
            context = mean_pool(h, batch.batch, batch.n_graphs).index_select(0, batch.batch)  # [n_atoms, w]
            h = h + block(torch.cat([h, context], dim=-1))
        return {"node_invariants": h, "graph_features": mean_pool(h, batch.batch, batch.n_graphs)}
