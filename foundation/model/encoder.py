"""`Encoder`: species embedding, L equivariant interaction blocks, optional latent Ewald blocks.

Reads a `foundation.data.graph.Batch`; the architecture reads top to bottom, each block's
`irreps_in` checked against the previous block's `irreps_out` when the encoder is built.
Edge vectors are recomputed from positions, cell and integer shifts on every call, so gradients
reach positions (forces) and cell (stress).
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from ..data.graph import Batch
from ..nn.ewald import LatentEwald
from ..nn.pooling import mean_pool
from ..nn.interaction import InteractionBlock, check_irreps, normalize_irreps, reachable_irreps
from ..nn.radial import RadialEmbedding
from ..nn.cell import CellDescriptors
from ..nn.species import ElementDescriptors
from .config import ModelConfig, building_dtype

__all__ = ["Encoder", "edge_vectors", "mean_pool", "nearest_edges", "nearest_shell_edges", "gaussian_basis", "species_features", "check_species", "distance_edges"]


def edge_vectors(batch: Batch, positions: torch.Tensor | None = None) -> torch.Tensor:
    """r_ij = pos[j] − pos[i] + shift · cell[graph(i)], [n_edges, 3] Å (graph.py's convention)."""
    pos = batch.positions if positions is None else positions  # [n_atoms, 3] Å
    receiver, sender = batch.edge_index[0], batch.edge_index[1]
    cell = batch.cell.index_select(0, batch.batch.index_select(0, receiver))  # [n_edges, 3, 3] Å
    shift = torch.einsum("ek,ekx->ex", batch.edge_shift.to(pos.dtype), cell)  # [n_edges, 3] Å
    return pos.index_select(0, sender) - pos.index_select(0, receiver) + shift


def nearest_edges(receiver: torch.Tensor, length: torch.Tensor, k: int) -> torch.Tensor:
    """[n_edges] bool: the `k` shortest edges of every receiving atom (all when k = 0); ties
    are broken by edge order, so the choice is deterministic."""
    if k <= 0 or length.numel() == 0:
        return torch.ones_like(receiver, dtype=torch.bool)
    order = torch.argsort(length.detach(), stable=True)
    order = order[torch.argsort(receiver.index_select(0, order), stable=True)]  # by receiver, then length
    sorted_receiver = receiver.index_select(0, order)
    first = torch.searchsorted(sorted_receiver, sorted_receiver, right=False)  # start of each receiver's run
    rank = torch.arange(order.numel(), device=order.device) - first
    keep = torch.zeros_like(receiver, dtype=torch.bool)
    keep[order] = rank < k
    return keep


def nearest_shell_edges(receiver: torch.Tensor, length: torch.Tensor, k: int, tol: float = 1e-4) -> torch.Tensor:
    """[n_edges] bool: every edge of a receiving atom no longer than its k-th shortest (+ `tol` Å;
    all when k = 0). Unlike `nearest_edges`, a shell of equal distances is kept whole, so the choice
    does not depend on edge order: a cap that keeps permutation invariance and supercell consistency
    in symmetric crystals (where the k-th and (k+1)-th neighbours are often at one distance)."""
    if k <= 0 or length.numel() == 0:
        return torch.ones_like(receiver, dtype=torch.bool)
    first_k = nearest_edges(receiver, length, k)
    radius = torch.zeros(int(receiver.max()) + 1, dtype=length.dtype, device=length.device)
    radius = radius.scatter_reduce(0, receiver[first_k], length.detach()[first_k], "amax", include_self=False)
    return length.detach() <= radius.index_select(0, receiver) + tol


def species_features(encoder: nn.Module, batch: Batch) -> torch.Tensor:
    """An encoder's first atom features [n_atoms, width]: its learned `embedding` of each species,
    plus its `element_features` (the periodic table's descriptors, mapped) and its `cell_features`
    (the structure's packing, mapped; foundation/nn/cell.py) when it has them."""
    h = encoder.embedding(batch.numbers)
    if encoder.element_features is not None:
        h = h + encoder.element_features(batch.numbers)
    if encoder.cell_features is not None:
        h = h + encoder.cell_features(batch.numbers, batch.cell, batch.pbc, batch.batch, batch.n_graphs)
    return h


def gaussian_basis(length: torch.Tensor, n: int, cutoff: float) -> torch.Tensor:
    """exp(−(d − μ_k)² / σ²) on n centres μ_k evenly from 0 to `cutoff`, σ their spacing (CGCNN,
    SchNet): [n_edges] Å -> [n_edges, n]."""
    centres = torch.linspace(0.0, cutoff, n, device=length.device, dtype=length.dtype)  # [n] Å
    spacing = cutoff / max(n - 1, 1)
    return torch.exp(-((length.unsqueeze(-1) - centres) ** 2) / spacing**2)


def distance_edges(batch: Batch, positions: torch.Tensor, config: ModelConfig):
    """What the distance-only baselines (CGCNN, SchNet) read of a graph: (receiver, sender, length
    Å, Gaussian basis) of the `config.max_neighbors` nearest edges of every atom, [n_kept] each and
    [n_kept, n_basis]; lengths from `positions`, so forces flow through them."""
    length = edge_vectors(batch, positions).norm(dim=-1)  # [n_edges] Å
    keep = nearest_edges(batch.edge_index[0], length, config.max_neighbors)
    length = length[keep]
    return (batch.edge_index[0][keep], batch.edge_index[1][keep], length,
            gaussian_basis(length, config.n_basis, config.cutoff))


def _scalar_channels(irreps: o3.Irreps) -> list[int]:
    """Indices of the 0e channels of a feature vector of `irreps`."""
    return [i for (_, ir), sl in zip(irreps, irreps.slices()) if ir == o3.Irrep("0e") for i in range(sl.start, sl.stop)]


@torch.compiler.disable  # reads a value to the host: under torch.compile it runs eager, between graphs
def check_species(numbers: torch.Tensor, config: ModelConfig) -> None:
    if numbers.numel() and int(numbers.max()) > config.max_atomic_number:
        raise ValueError(f"atomic number {int(numbers.max())} > max_atomic_number {config.max_atomic_number}")


class Encoder(nn.Module):
    """Equivariant message-passing encoder.

    forward(batch, positions=None) -> dict with
        node_features    [n_atoms, irreps_out.dim]  all channels (equivariant; 0e only with scalar_last)
        node_invariants  [n_atoms, F]               the 0e channels, F = config.n_scalars
        graph_features   [n_graphs, F]              mean over each structure's atoms
        block_features   [n_graphs, F_all]          the mean 0e channels of the embedding and of
                                                    every block, concatenated (frozen features:
                                                    early blocks keep what the last one discards)
        ewald_energy     [n_graphs] eV              only when config.ewald_every > 0
    `positions` replaces batch.positions (a tensor that requires grad, for forces).
    Built in `dtype` (torch's default if None); see `building_dtype` for why float64 work
    should build in float64 rather than cast.
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None):
        super().__init__()
        with building_dtype(dtype):
            self._build(config)

    def _build(self, config: ModelConfig) -> None:
        self.config = config
        hidden = normalize_irreps(config.hidden_irreps)
        self.irreps_sh = o3.Irreps.spherical_harmonics(config.lmax)
        self.irreps_embed = o3.Irreps(f"{config.n_scalars}x0e")
        self.embedding = nn.Embedding(config.n_species, config.n_scalars)
        self.element_features = ElementDescriptors(config.n_species, config.n_scalars) if config.element_features else None
        self.cell_features = CellDescriptors(config.n_species, config.n_scalars) if config.cell_features else None
        self.spherical_harmonics = o3.SphericalHarmonics(
            self.irreps_sh, normalize=True, normalization="component"
        )
        self.radial = RadialEmbedding(config.cutoff, config.n_basis, config.cutoff_p)
        self.blocks = nn.ModuleList()
        self.ewald = nn.ModuleDict()  # str(block index) -> LatentEwald after that block
        irreps = self.irreps_embed
        block_scalars = []  # per block: the 0e channels of its output
        for layer in range(config.n_layers):
            # scalar_last: the last block makes only the scalars of hidden (n_scalars x 0e, as the embedding)
            wanted = self.irreps_embed if config.scalar_last and layer == config.n_layers - 1 else hidden
            block = InteractionBlock(
                irreps, reachable_irreps(irreps, self.irreps_sh, wanted), self.irreps_sh,
                config.n_basis, config.radial_hidden,
                config.avg_num_neighbors, context=config.context, pair_hidden=config.pair_hidden,
                pair_radial=config.pair_radial, ffn_hidden=config.ffn_hidden,
                vector_products=config.vector_products, vector_channels=config.vector_channels,
            )
            check_irreps(irreps, block.irreps_in, f"interaction block {layer} input")
            self.blocks.append(block)
            irreps = block.irreps_out
            block_scalars.append(_scalar_channels(irreps))
            if config.ewald_every and (layer + 1) % config.ewald_every == 0:
                # Imported here so the encoder builds without the Ewald code when it is off.
                ewald = LatentEwald(irreps, config.ewald_hidden, config.ewald_accuracy)
                check_irreps(irreps, ewald.irreps_in, f"Ewald block after layer {layer}")
                self.ewald[str(layer)] = ewald
                irreps = ewald.irreps_out
        self.irreps_out = irreps
        scalar = _scalar_channels(irreps)
        self.register_buffer("scalar_index", torch.tensor(scalar, dtype=torch.long), persistent=False)
        for layer, index in enumerate(block_scalars):
            self.register_buffer(f"block_scalar_index_{layer}", torch.tensor(index, dtype=torch.long), persistent=False)
        self.n_invariants = len(scalar)
        self.n_block_features = config.n_scalars + sum(len(i) for i in block_scalars)

    def forward(self, batch: Batch, positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        numbers = batch.numbers
        check_species(numbers, self.config)
        pos = batch.positions if positions is None else positions  # [n_atoms, 3] Å
        n_graphs = batch.n_graphs
        vec = edge_vectors(batch, pos)  # [n_edges, 3] Å
        length = vec.norm(dim=-1)  # [n_edges] Å
        edge_index = batch.edge_index  # [2, n_edges]
        if self.config.max_neighbors:
            # The k nearest of each atom, ties kept (CGCNN's cap): fewer edges per step, but the
            # energy jumps where the k-th and (k+1)-th neighbours swap: not for forces or dynamics.
            keep = nearest_shell_edges(edge_index[0], length, self.config.max_neighbors)
            vec, length, edge_index = vec[keep], length[keep], edge_index[:, keep]
        edge_sh = self.spherical_harmonics(vec)  # [n_edges, irreps_sh.dim]
        edge_radial = self.radial(length)  # [n_edges, n_basis]
        # Standard-normal embedding rows, so the first block sees unit-variance scalars.
        h = species_features(self, batch).to(pos.dtype)  # [n_atoms, F] 0e
        pooled = [mean_pool(h, batch.batch, n_graphs)]  # [n_graphs, F] per block
        ewald_energy = None
        for layer, block in enumerate(self.blocks):
            h = block(h, edge_sh, edge_radial, edge_index, batch.batch, n_graphs)  # [n_atoms, hidden]
            pooled.append(mean_pool(h.index_select(1, getattr(self, f"block_scalar_index_{layer}")), batch.batch, n_graphs))
            if str(layer) in self.ewald:
                h, energy = self.ewald[str(layer)](h, pos, batch.cell, batch.pbc, batch.batch, n_graphs)
                ewald_energy = energy if ewald_energy is None else ewald_energy + energy  # [n_graphs] eV
        invariants = h.index_select(1, self.scalar_index)  # [n_atoms, F]
        out = {
            "node_features": h,
            "node_invariants": invariants,
            "graph_features": mean_pool(invariants, batch.batch, n_graphs),  # [n_graphs, F]
            "block_features": torch.cat(pooled, dim=1),  # [n_graphs, F_all]
        }
        if ewald_energy is not None:
            out["ewald_energy"] = ewald_energy
        return out
