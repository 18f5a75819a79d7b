"""`ElementDescriptors`: the periodic table's descriptors of each species (`foundation.data.elements`)
mapped linearly onto an encoder's atom features, added to its learned species embedding.

The map starts at zero, so a model gains the input without changing what it computes: a model
built with it predicts as one without it until training moves the map (and a pretrained encoder
could be given it for fine-tuning). The table is a persistent buffer, so a checkpoint carries the
values it was trained with, whatever pymatgen's table says later.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.elements import element_descriptors

__all__ = ["ElementDescriptors"]


class ElementDescriptors(nn.Module):
    """forward(numbers [n_atoms] long) -> [n_atoms, width]."""

    def __init__(self, n_species: int, width: int):
        super().__init__()
        # A copy: the table is cached for every model, and a buffer is written in place (load_state_dict).
        table = torch.tensor(element_descriptors(n_species - 1), dtype=torch.get_default_dtype())
        self.register_buffer("table", table)  # [n_species, n_descriptors]
        self.linear = nn.Linear(table.shape[1], width, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        return self.linear(self.table.index_select(0, numbers))
