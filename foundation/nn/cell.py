"""`CellDescriptors`: how densely a crystal is packed, as an input to every atom.

A 4 Å message-passing graph sees each atom's bonds, not the empty space of a layered or open
framework beyond them; yet that space is what makes such a crystal soft (its bulk and shear moduli
are set by the weakest direction). Three numbers per periodic structure say it, each invariant
under rotation, permutation and the choice of supercell:

    log(V / N)                       volume per atom, Å^3
    log(Σ_i v_i / V)                 packing fraction of the atoms' spheres, v_i = 4/3 π r_i^3
                                     (r_i the atomic radius of species i)
    log(V / Σ_i m_i)                 volume against the elemental solids' (m_i: the molar volume
                                     of species i's element, per atom)

with pymatgen's radii and molar volumes (`foundation.data.elements.element_volumes`). Each is
centred and scaled by fixed constants (roughly mp2018's mean and spread), then mapped linearly onto
the atom features and added to the species embedding. The map starts at zero, so a model given them
computes what it computed without until training moves it. Structures that are not periodic in all
three directions (molecules, slabs with vacuum) get zeros: their cell volume is not the atoms'.
The volume is differentiable in the cell, so stress through the cell would see it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.elements import element_volumes

__all__ = ["CellDescriptors", "cell_descriptors"]

# (centre, scale) of the three descriptors, fixed so a checkpoint never depends on its training set.
_CENTRE = (2.9, -0.55, -0.2)
_SCALE = (0.4, 0.35, 0.3)


def cell_descriptors(volumes: torch.Tensor, numbers: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                     batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """[n_graphs, 3]: the scaled descriptors above; `volumes` [n_species, 2] is (sphere volume,
    elemental volume per atom) in Å^3. Rows of structures not periodic in x, y and z are zero."""
    dtype = cell.dtype
    v = volumes.to(dtype).index_select(0, numbers)  # [n_atoms, 2] Å^3
    sums = v.new_zeros((n_graphs, 2)).index_add_(0, batch, v)  # [n_graphs, 2] Å^3
    count = v.new_zeros(n_graphs).index_add_(0, batch, v.new_ones(v.shape[0]))  # [n_graphs]
    periodic = pbc.all(dim=-1)  # [n_graphs]
    volume = torch.linalg.det(cell).abs()  # [n_graphs] Å^3
    safe = torch.where(periodic & (volume > 0) & (count > 0), volume, torch.ones_like(volume))
    raw = torch.stack([
        torch.log(safe / count.clamp(min=1)),
        torch.log(sums[:, 0].clamp(min=1e-6) / safe),
        torch.log(safe / sums[:, 1].clamp(min=1e-6)),
    ], dim=-1)  # [n_graphs, 3]
    centre = torch.tensor(_CENTRE, dtype=dtype, device=cell.device)
    scale = torch.tensor(_SCALE, dtype=dtype, device=cell.device)
    return torch.where(periodic.unsqueeze(-1), (raw - centre) / scale, torch.zeros_like(raw))


class CellDescriptors(nn.Module):
    """forward(numbers [n_atoms], cell [n_graphs, 3, 3], pbc [n_graphs, 3], batch [n_atoms],
    n_graphs) -> [n_atoms, width]: the structure's descriptors, mapped, on each of its atoms."""

    def __init__(self, n_species: int, width: int):
        super().__init__()
        table = torch.tensor(element_volumes(n_species - 1), dtype=torch.get_default_dtype())
        self.register_buffer("volumes", table)  # [n_species, 2] Å^3, travels with a checkpoint
        self.linear = nn.Linear(3, width, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, numbers, cell, pbc, batch, n_graphs: int) -> torch.Tensor:
        d = cell_descriptors(self.volumes, numbers, cell, pbc, batch, n_graphs)  # [n_graphs, 3]
        return self.linear(d.to(self.linear.weight.dtype)).index_select(0, batch)
