"""Ewald summation of point charges and the learned long-range block `LatentEwald`.

Units: charges in e, lengths in Å, energies in eV, potentials φ_i = ∂E/∂q_i in eV/e, with the
Coulomb constant e²/(4πε0) = 14.399645 eV·Å taken from scipy.constants (`COULOMB`).

What each structure gets, chosen from its `pbc` (never silently treated as 3-D periodic):
    pbc = (T, T, T)  3-D Ewald sum: real space ½ Σ q_i q_j erfc(α r)/r over images within r_c,
                     reciprocal space (2π/V) Σ_k exp(-k²/4α²)/k² |S(k)|²,
                     self term -α/√π Σ q².
                     A charged cell gets the uniform neutralising background -π Q²/(2 V α²), the
                     usual convention (as in pymatgen and LAMMPS), so its energy is α-independent.
    two periodic     exact 2-D Ewald sum (Parry 1975; Heyes, Barber and Clarke 1977): the open
                     direction is infinite vacuum whatever the cell vector along it says; no
                     vacuum padding and no dipole correction are needed. Pairwise, O(N²·n_k).
                     A slab must be neutral (ValueError otherwise: a charged sheet has no finite
                     energy per cell).
    pbc = (F, F, F)  direct Coulomb sum ½ Σ_{i≠j} q_i q_j / r_ij, any net charge.
    one periodic     ValueError (1-D Ewald sums are not implemented).
Splitting parameter and cutoffs come from `accuracy` ε:
exp(-(α r_c)²) = exp(-k_max²/4α²) = ε, with α balanced so real and reciprocal work are
equal (see `_ewald_sums.split_parameters`).
Gradients flow to positions, cell and charges through torch ops (pairs and k vectors are integer
bookkeeping); α and the cutoffs are held fixed for autograd.
"""

from __future__ import annotations

import torch
from e3nn import o3

from ._ewald_sums import COULOMB, ewald_potential, make_plan

__all__ = ["COULOMB", "ewald_energy", "ewald_sum", "LatentEwald"]


def ewald_sum(
    positions: torch.Tensor,
    cell: torch.Tensor,
    charges: torch.Tensor,
    batch: torch.Tensor,
    pbc: torch.Tensor,
    accuracy: float = 1e-8,
    alpha: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Electrostatic energy of every structure in a batch and the potential at every atom.

    Args:
        positions: [n_atoms, 3] Å (need not be wrapped into the cell).
        cell: [n_graphs, 3, 3] Å, rows are lattice vectors (ignored where pbc is all False).
        charges: [n_atoms] e.
        batch: [n_atoms] int64, sorted graph index of each atom.
        pbc: [n_graphs, 3] bool.
        accuracy: relative truncation error ε of the real- and reciprocal-space sums.
        alpha: splitting parameter in 1/Å for every periodic graph; None chooses it per graph.
    Returns:
        energy [n_graphs] eV and potential φ [n_atoms] eV/e, φ_i = ∂E/∂q_i.
    """
    n_graphs = cell.shape[0]
    if positions.shape != (charges.shape[0], 3) or charges.dim() != 1:
        raise ValueError(
            f"positions {tuple(positions.shape)} and charges {tuple(charges.shape)} disagree"
        )
    if batch.shape != charges.shape or pbc.shape != (n_graphs, 3):
        raise ValueError(
            f"batch {tuple(batch.shape)} / pbc {tuple(pbc.shape)} do not fit {n_graphs} graphs"
        )
    charges = charges.to(positions.dtype)
    plan = make_plan(positions, cell, charges, batch, pbc, accuracy, alpha)
    potential = ewald_potential(positions, cell, charges, batch, plan)  # [n_atoms] eV/e
    # φ is linear in q, so E = ½ q·φ is the whole energy and ∂E/∂q = φ.
    energy = torch.zeros(n_graphs, dtype=positions.dtype, device=positions.device)
    energy = energy.index_add(0, batch, 0.5 * charges * potential)  # [n_graphs] eV
    return energy, potential


def ewald_energy(
    positions: torch.Tensor,
    cell: torch.Tensor,
    charges: torch.Tensor,
    pbc=None,
    accuracy: float = 1e-8,
    alpha: float | None = None,
) -> torch.Tensor:
    """Electrostatic energy (eV, scalar tensor) of one structure.

    positions [n_atoms, 3] Å, cell [3, 3] Å (rows), charges [n_atoms] e, pbc: 3 bools or None
    (None = periodic in all three directions). See the module docstring for the methods.
    """
    positions = torch.as_tensor(positions)
    cell = torch.as_tensor(cell, dtype=positions.dtype, device=positions.device)
    charges = torch.as_tensor(charges, dtype=positions.dtype, device=positions.device)
    pbc = torch.ones(3, dtype=torch.bool) if pbc is None else torch.as_tensor(pbc, dtype=torch.bool)
    batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
    energy, _ = ewald_sum(
        positions, cell.reshape(1, 3, 3), charges, batch, pbc.reshape(1, 3), accuracy, alpha
    )
    return energy[0]


def _mlp(n_in: int, n_hidden: int, n_out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, n_hidden), torch.nn.SiLU(), torch.nn.Linear(n_hidden, n_out)
    )


class LatentEwald(torch.nn.Module):
    """Learned long-range electrostatics on latent charges (in the spirit of Ewald message
    passing, Kosmala et al. ICML 2023, and latent Ewald summation, Cheng 2025; our own code).

    Each atom gets a latent charge q_i = MLP(scalars_i) from its 0e channels; charges are made
    neutral per structure by subtracting the structure's mean; a physical Ewald sum (`ewald_sum`)
    gives the energy E (eV, returned for the energy head) and potentials φ_i; the pair
    (q_i, φ_i / COULOMB) goes through a second MLP whose output is added to the 0e channels only.
    Scalars in, scalars out: rotations act trivially on q and φ, so the block is equivariant for
    any irreps. The feedback MLP's last layer starts at zero, so the block starts as the identity
    on features (and trains like a zero-initialised residual branch).

    Cost: per structure, with α balanced, real- and reciprocal-space work both scale as
    N^1.5·(-ln ε)^1.5 (N atoms, ε = accuracy) for bulk, N²·(-ln ε) for slabs and N² for
    molecules; the pair list is built by vesin on the CPU (one host sync per call). Measured
    `ewald_sum` forward + backward at ε = 1e-4, float32, 2-core CPU: bulk 64 / 128 / 512 atoms
    2 / 5 / 48 ms, slab 64 / 128 / 256 atoms 5 / 16 / 64 ms.

    Shapes: forward(node_feats [n_atoms, irreps_in.dim], positions [n_atoms, 3] Å,
    cell [n_graphs, 3, 3] Å, pbc [n_graphs, 3] bool, batch [n_atoms], n_graphs)
    -> (node_feats_out [n_atoms, irreps_out.dim], energy [n_graphs] eV).
    """

    def __init__(self, irreps_in: o3.Irreps, n_hidden: int = 16, accuracy: float = 1e-4):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = self.irreps_in
        self.accuracy = float(accuracy)
        scalar = [
            index
            for (_, ir), sl in zip(self.irreps_in, self.irreps_in.slices())
            if ir == o3.Irrep("0e")
            for index in range(sl.start, sl.stop)
        ]
        if not scalar:
            raise ValueError(f"LatentEwald needs 0e channels in irreps_in, got {self.irreps_in}")
        index = torch.tensor(scalar, dtype=torch.long)  # [n_scalars] | 0e columns of node_feats
        self.register_buffer("scalar_index", index, persistent=False)
        self.charge_mlp = _mlp(len(scalar), n_hidden, 1)
        self.feedback_mlp = _mlp(2, n_hidden, len(scalar))
        torch.nn.init.zeros_(self.feedback_mlp[-1].weight)
        torch.nn.init.zeros_(self.feedback_mlp[-1].bias)

    def latent_charges(self, node_feats, batch, n_graphs: int) -> torch.Tensor:
        """Latent charges [n_atoms] e from the 0e channels, summing to zero in every structure."""
        scalars = node_feats.index_select(1, self.scalar_index)  # [n_atoms, n_scalars]
        q = self.charge_mlp(scalars).squeeze(-1)  # [n_atoms] e
        # Neutral in float32 at least: a bf16 mean leaves ~1e-3 e per slab, which the 2-D sum refuses.
        q = q.to(torch.promote_types(q.dtype, torch.float32))
        zeros = torch.zeros(n_graphs, dtype=q.dtype, device=q.device)
        counts = zeros.index_add(0, batch, torch.ones_like(q)).clamp(min=1)  # [n_graphs]
        return q - (zeros.index_add(0, batch, q) / counts)[batch]

    def forward(self, node_feats, positions, cell, pbc, batch, n_graphs: int):
        if node_feats.shape[-1] != self.irreps_in.dim:
            raise ValueError(
                f"node_feats last dim {node_feats.shape[-1]} != irreps_in.dim {self.irreps_in.dim}"
            )
        if cell.shape[0] != n_graphs:
            raise ValueError(f"cell has {cell.shape[0]} graphs, n_graphs = {n_graphs}")
        q = self.latent_charges(node_feats, batch, n_graphs)  # [n_atoms] e, float32 or wider
        # The sums run in float32 at least: bf16/fp16 have no matrix inverse and would resolve
        # phases k·r (tens of radians) to ~0.1 rad. Results return in the features' dtype.
        wide = q.dtype
        energy, phi = ewald_sum(positions.to(wide), cell.to(wide), q, batch, pbc, self.accuracy)
        # φ/COULOMB is in e/Å, O(1) for O(1) charges: keeps the feedback MLP's inputs tame.
        inputs = torch.stack([q, phi / COULOMB], dim=-1).to(node_feats.dtype)  # [n_atoms, 2]
        update = self.feedback_mlp(inputs)  # [n_atoms, n_scalars]
        # energy stays float32 or wider (heads pool energies in float32 under bf16/fp16)
        return node_feats.index_add(1, self.scalar_index, update), energy
