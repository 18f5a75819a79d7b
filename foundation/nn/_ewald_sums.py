"""Ewald sums of point charges: parameter choice, lattice bookkeeping and the torch kernels.

Private module; the public entry points are in `foundation.nn.ewald`. Conventions:
charges in e, lengths in Å, energies in eV, potentials φ_i = ∂E/∂q_i in eV/e. Every sum is
written as a potential, φ = A q with A symmetric, and the energy is E = ½ Σ_i q_i φ_i.

The integer bookkeeping (which pairs, which k vectors, which α) is decided on detached numpy
copies; everything that carries a gradient (distances, k vectors, volumes) is recomputed
from `positions` and `cell` with torch ops, so forces and stress flow through autograd. α and
the cutoffs are constants for autograd: their effect on the energy is below the requested
accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy import constants
from vesin import NeighborList

__all__ = ["COULOMB", "EwaldPlan", "make_plan", "ewald_potential"]

# e^2 / (4 π ε0) in eV·Å (14.399645...).
COULOMB = constants.e / (4.0 * constants.pi * constants.epsilon_0) / constants.angstrom

# Residual net charge tolerated on a slab, relative to Σ|q| (in units of the dtype's epsilon):
# a neutralised float32 set keeps ~n_atoms·eps of rounding.
_SLAB_NEUTRAL_EPS = 1e3


@dataclass(frozen=True)
class EwaldPlan:
    """Integer and numerical bookkeeping of one batch (numpy, no gradients).

    Modes per graph: 3 = bulk (3-D Ewald), 2 = slab (exact 2-D Ewald), 0 = molecule (direct).
    """

    mode: np.ndarray  # [n_graphs] int | number of periodic directions
    alpha: np.ndarray  # [n_graphs] 1/Å | splitting parameter (0 for molecules)
    pair_i: np.ndarray  # [n_pairs] int64 | real-space pairs (full list, both directions)
    pair_j: np.ndarray  # [n_pairs] int64
    pair_shift: np.ndarray  # [n_pairs, 3] float64 | integer cell shifts of j
    bulk_graphs: np.ndarray  # [n_bulk] int64 | graphs summed in 3-D reciprocal space
    bulk_m: np.ndarray  # [n_bulk, max_k, 3] float64 | half-space Miller indices, zero padded
    bulk_mask: np.ndarray  # [n_bulk, max_k] bool
    slab_graphs: np.ndarray  # [n_slab] int64
    slab_axes: np.ndarray  # [n_slab, 3] int64 | (periodic u, periodic v, open axis)
    slab_pair_i: np.ndarray  # [n_slab_pairs] int64 | all (i, j) in a slab, i == j included
    slab_pair_j: np.ndarray  # [n_slab_pairs] int64
    slab_m: np.ndarray  # [n_slab, max_k2, 2] float64 | half-plane indices, zero padded
    slab_mask: np.ndarray  # [n_slab, max_k2] bool


def split_parameters(mode: int, n_atoms: int, measure: float, accuracy: float, alpha=None):
    """α (1/Å), real-space cutoff r_c (Å) and angular k cutoff (1/Å) for one structure.

    Both truncation errors are set to `accuracy` by exp(-(α r_c)^2) = exp(-(π k_c/α)^2) = ε
    with k = 2π k_c, i.e. r_c = s/α and k_max = 2 s α, s = sqrt(-ln ε). α balances cost:
    bulk α = sqrt(π) (N/V²)^(1/6) (real-space work ∝ N² r_c³/V equals reciprocal work
    ∝ N V k_max³); slab α = sqrt(π/A) (real-space work ∝ N² r_c²/A equals the pairwise
    reciprocal work ∝ N² A k_max²). `measure` is V (Å³) for bulk and A (Å²) for slabs.
    """
    s = math.sqrt(-math.log(accuracy))
    if alpha is None:
        if mode == 3:
            alpha = math.sqrt(math.pi) * (n_atoms / measure**2) ** (1.0 / 6.0)
        elif mode == 2:
            alpha = math.sqrt(math.pi / measure)
        else:
            raise ValueError(f"no splitting parameter for {mode} periodic directions")
    alpha = float(alpha)
    if not alpha > 0:
        raise ValueError(f"the Ewald splitting parameter must be positive, got {alpha}")
    return alpha, s / alpha, 2.0 * s * alpha


def _miller_half_space(recip: np.ndarray, dual: np.ndarray, k_max: float) -> np.ndarray:
    """Integer m ≠ 0 with |2π m·recip| < k_max, one of each ±m pair. recip: [d, 3] rows b_i;
    dual: [d, 3] the rows a_i with a_i·b_j = δ_ij in their plane (the periodic cell vectors)."""
    # |m_i| = |k·a_i|/2π <= k_max |a_i| / 2π.
    bound = np.floor(k_max * np.linalg.norm(dual, axis=1) / (2 * math.pi)).astype(int)
    grids = np.meshgrid(*[np.arange(-b, b + 1) for b in bound], indexing="ij")
    m = np.stack([g.ravel() for g in grids], axis=1)  # [n, d]
    k = 2 * math.pi * m @ recip
    keep = (np.einsum("nc,nc->n", k, k) < k_max**2) & _first_nonzero_positive(m)
    return m[keep].astype(np.float64)


def _first_nonzero_positive(m: np.ndarray) -> np.ndarray:
    nonzero = m != 0
    first = np.argmax(nonzero, axis=1)
    return nonzero.any(axis=1) & (m[np.arange(len(m)), first] > 0)


def _slab_frame(cell: np.ndarray, open_axis: int):
    """Periodic axes (u, v), unit normal and area of a slab cell."""
    u, v = [a for a in range(3) if a != open_axis]
    normal = np.cross(cell[u], cell[v])
    area = float(np.linalg.norm(normal))
    return u, v, normal / max(area, 1e-300), area


def _real_pairs(pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r_cut: float):
    i, j, shift = NeighborList(cutoff=r_cut, full_list=True).compute(
        points=pos, box=cell, periodic=pbc.tolist(), quantities="ijS"
    )
    return np.asarray(i, np.int64), np.asarray(j, np.int64), np.asarray(shift, np.float64)


def _pad(rows: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    size = max([len(r) for r in rows], default=0)
    out = np.zeros((len(rows), size, width))
    mask = np.zeros((len(rows), size), dtype=bool)
    for g, r in enumerate(rows):
        out[g, : len(r)] = r
        mask[g, : len(r)] = True
    return out, mask


def _check_slab_neutral(q: np.ndarray, graph: int, eps: float) -> None:
    total, scale = float(q.sum()), float(np.abs(q).sum())
    if abs(total) > _SLAB_NEUTRAL_EPS * eps * max(scale, 1.0):
        raise ValueError(
            f"graph {graph}: a slab (2 periodic directions) must be charge neutral, net charge "
            f"{total:.6g} e; an infinite charged sheet has no finite energy per cell"
        )


class _GraphPlan(NamedTuple):
    alpha: float  # 1/Å, 0 for a direct sum
    i: np.ndarray  # [n_pairs] local real-space pair indices
    j: np.ndarray
    shift: np.ndarray  # [n_pairs, 3] integer cell shifts
    miller: np.ndarray | None  # [n_k, 3] bulk or [n_k, 2] slab half-space indices
    axes: tuple[int, int, int] | None  # slab: (periodic u, periodic v, open axis)


def _plan_graph(g: int, p, q, c, periodic, accuracy: float, alpha, eps: float) -> _GraphPlan:
    """Method and bookkeeping of graph `g`: positions p [n, 3], charges q [n], cell c [3, 3]."""
    n, mode = len(p), int(periodic.sum())
    if not np.isfinite(p).all() or not np.isfinite(q).all():
        raise ValueError(f"graph {g}: non-finite positions or charges")
    if mode == 0:
        # Direct Coulomb sum: every ordered pair i != j, bare 1/r (α = 0 makes erfc = 1).
        ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        keep = ii != jj
        return _GraphPlan(0.0, ii[keep], jj[keep], np.zeros((int(keep.sum()), 3)), None, None)
    if mode == 1:
        raise ValueError(
            f"graph {g}: pbc={periodic.tolist()}; 1-D periodic (wire) Ewald sums are not "
            "supported: make the cell 3-D periodic with vacuum, or non-periodic"
        )
    if mode == 3:
        volume = abs(float(np.linalg.det(c)))
        if not volume > 1e-6:
            raise ValueError(f"graph {g}: periodic cell has zero volume ({volume:.3g} Å^3)")
        a, r_cut, k_max = split_parameters(3, n, volume, accuracy, alpha)
        i, j, shift = _real_pairs(p, c, periodic, r_cut)
        return _GraphPlan(a, i, j, shift, _miller_half_space(np.linalg.inv(c).T, c, k_max), None)
    open_axis = int(np.flatnonzero(~periodic)[0])
    u, v, normal, area = _slab_frame(c, open_axis)
    if not area > 1e-6:
        raise ValueError(f"graph {g}: periodic plane of the slab has zero area")
    _check_slab_neutral(q, g, eps)
    a, r_cut, k_max = split_parameters(2, n, area, accuracy, alpha)
    miller = _miller_half_space(np.linalg.inv(np.stack([c[u], c[v], normal])).T[:2], c[[u, v]], k_max)
    # vesin needs a full-rank box; the open direction is never shifted, so any height works.
    box = c.copy()
    box[open_axis] = normal * (np.ptp(p @ normal) + 1.0)
    i, j, shift = _real_pairs(p, box, periodic, r_cut)
    return _GraphPlan(a, i, j, shift, miller, (u, v, open_axis))


def make_plan(positions, cell, charges, batch, pbc, accuracy: float, alpha=None) -> EwaldPlan:
    """Choose the method, α, pairs and k vectors of every graph of a batch (see `EwaldPlan`)."""
    if not 0.0 < accuracy < 1.0:
        raise ValueError(f"Ewald accuracy must lie in (0, 1), got {accuracy}")
    pos = positions.detach().cpu().double().numpy()
    cells = cell.detach().cpu().double().numpy()
    q = charges.detach().cpu().double().numpy()
    graph = batch.detach().cpu().numpy()
    periodic = pbc.detach().cpu().numpy().astype(bool).reshape(-1, 3)
    eps = float(torch.finfo(charges.dtype).eps)
    n_graphs = cells.shape[0]
    starts = np.searchsorted(graph, np.arange(n_graphs + 1))
    if not (np.all(np.diff(graph) >= 0) and starts[-1] == len(graph)):
        raise ValueError("`batch` must be sorted with values in [0, n_graphs)")

    alphas = np.zeros(n_graphs)
    pi, pj, ps = [], [], []
    bulk, bulk_m, slab, slab_axes, slab_m, si, sj = [], [], [], [], [], [], []
    for g in range(n_graphs):
        lo, hi = int(starts[g]), int(starts[g + 1])
        if hi == lo:
            continue
        plan = _plan_graph(g, pos[lo:hi], q[lo:hi], cells[g], periodic[g], accuracy, alpha, eps)
        alphas[g] = plan.alpha
        pi.append(plan.i + lo), pj.append(plan.j + lo), ps.append(plan.shift)
        if plan.axes is not None:
            ii, jj = np.meshgrid(np.arange(lo, hi), np.arange(lo, hi), indexing="ij")
            slab.append(g), slab_axes.append(plan.axes), slab_m.append(plan.miller)
            si.append(ii.ravel()), sj.append(jj.ravel())
        elif plan.miller is not None:
            bulk.append(g), bulk_m.append(plan.miller)

    def cat(parts, shape):
        return np.concatenate(parts) if parts else np.zeros(shape)

    bm, bmask = _pad(bulk_m, 3)
    sm, smask = _pad(slab_m, 2)
    return EwaldPlan(
        mode=periodic.sum(axis=1),
        alpha=alphas,
        pair_i=cat(pi, (0,)).astype(np.int64),
        pair_j=cat(pj, (0,)).astype(np.int64),
        pair_shift=cat(ps, (0, 3)),
        bulk_graphs=np.asarray(bulk, np.int64),
        bulk_m=bm,
        bulk_mask=bmask,
        slab_graphs=np.asarray(slab, np.int64),
        slab_axes=np.asarray(slab_axes, np.int64).reshape(-1, 3),
        slab_pair_i=cat(si, (0,)).astype(np.int64),
        slab_pair_j=cat(sj, (0,)).astype(np.int64),
        slab_m=sm,
        slab_mask=smask,
    )


def ewald_potential(positions, cell, charges, batch, plan: EwaldPlan) -> torch.Tensor:
    """φ_i = ∂E/∂q_i in eV/e, [n_atoms], summing the terms each graph's mode calls for."""
    dev, dt = positions.device, positions.dtype
    alpha = torch.as_tensor(plan.alpha, device=dev, dtype=dt)  # [n_graphs] 1/Å
    phi = _real_space(positions, cell, charges, batch, alpha, plan)
    # Self term (an atom's own screening Gaussian); α = 0 for direct sums, so it vanishes there.
    phi = phi - 2.0 / math.sqrt(math.pi) * alpha[batch] * charges
    if len(plan.bulk_graphs):
        phi = phi + _bulk_reciprocal(positions, cell, charges, batch, alpha, plan)
    if len(plan.slab_graphs):
        phi = phi + _slab_reciprocal(positions, cell, charges, batch, alpha, plan)
    return COULOMB * phi


def _real_space(positions, cell, charges, batch, alpha, plan: EwaldPlan) -> torch.Tensor:
    dev, dt = positions.device, positions.dtype
    i = torch.as_tensor(plan.pair_i, device=dev)
    j = torch.as_tensor(plan.pair_j, device=dev)
    shift = torch.as_tensor(plan.pair_shift, device=dev, dtype=dt)  # [n_pairs, 3]
    graph = batch[i]
    lattice = torch.einsum("pk,pkc->pc", shift, cell[graph])  # [n_pairs, 3] Å
    vec = positions[j] - positions[i] + lattice  # [n_pairs, 3] Å
    r = torch.linalg.vector_norm(vec, dim=-1)  # [n_pairs] Å, > 0 (no self pairs)
    kernel = torch.special.erfc(alpha[graph] * r) / r  # [n_pairs] 1/Å
    return torch.zeros_like(charges).index_add(0, i, kernel * charges[j])


def _slots(graphs: np.ndarray, n_graphs: int, device) -> torch.Tensor:
    """slot[g] = position of graph g in `graphs`, -1 where absent."""
    slot = torch.full((n_graphs,), -1, dtype=torch.long, device=device)
    slot[torch.as_tensor(graphs, device=device)] = torch.arange(len(graphs), device=device)
    return slot


def _bulk_reciprocal(positions, cell, charges, batch, alpha, plan: EwaldPlan) -> torch.Tensor:
    """(8π/V) Σ_{k in half space} exp(-k²/4α²)/k² Re[e^{-ik·r_i} S(k)], plus the neutralising
    background -π Q/(V α²) that makes a charged cell's energy α-independent."""
    dev, dt = positions.device, positions.dtype
    gb = torch.as_tensor(plan.bulk_graphs, device=dev)
    m = torch.as_tensor(plan.bulk_m, device=dev, dtype=dt)  # [n_bulk, n_k, 3]
    mask = torch.as_tensor(plan.bulk_mask, device=dev)  # [n_bulk, n_k]
    cell_b = cell[gb]  # [n_bulk, 3, 3] Å
    inv = torch.linalg.inv(cell_b)  # [n_bulk, 3, 3]
    volume = torch.linalg.det(cell_b).abs()  # [n_bulk] Å^3
    k = 2.0 * math.pi * m @ inv.transpose(-1, -2)  # [n_bulk, n_k, 3] 1/Å
    k2 = torch.where(mask, (k * k).sum(-1), torch.ones_like(mask, dtype=dt))
    a = alpha[gb][:, None]
    weight = torch.where(mask, torch.exp(-k2 / (4 * a * a)) / k2, torch.zeros_like(k2))

    slot = _slots(plan.bulk_graphs, cell.shape[0], dev)[batch]  # [n_atoms]
    atoms = torch.nonzero(slot >= 0).squeeze(1)
    s = slot[atoms]
    r = positions[atoms]
    # Wrap into the cell so float32 phases keep their precision; the shift is an integer
    # lattice vector (detached), so k·r changes by 2π n and gradients are untouched.
    frac = torch.einsum("ac,acd->ad", r, inv[s]).detach()
    r = r - torch.einsum("ad,adc->ac", torch.floor(frac), cell_b[s])
    phase = torch.einsum("akc,ac->ak", k[s], r)  # [n_bulk_atoms, n_k]
    cos, sin = torch.cos(phase), torch.sin(phase)
    q = charges[atoms]
    c_sum = torch.zeros_like(weight).index_add(0, s, q[:, None] * cos)  # [n_bulk, n_k] e
    s_sum = torch.zeros_like(weight).index_add(0, s, q[:, None] * sin)
    phi = 8 * math.pi / volume[s] * (weight[s] * (c_sum[s] * cos + s_sum[s] * sin)).sum(-1)
    net = torch.zeros_like(volume).index_add(0, s, q)  # [n_bulk] e
    phi = phi - math.pi * net[s] / (volume[s] * alpha[gb][s] ** 2)
    return torch.zeros_like(charges).index_add(0, atoms, phi)


def _slab_profile(kappa, z, a):
    """e^{κz} erfc(αz + κ/2α) + e^{-κz} erfc(κ/2α - αz), free of overflow for z >= 0."""
    x = kappa / (2 * a)
    return torch.exp(-((a * z) ** 2) - x * x) * torch.special.erfcx(a * z + x) + torch.exp(
        -kappa * z
    ) * torch.special.erfc(x - a * z)


def _slab_reciprocal(positions, cell, charges, batch, alpha, plan: EwaldPlan) -> torch.Tensor:
    """Exact 2-D Ewald sum (Parry 1975; Heyes, Barber and Clarke 1977), pairwise over a slab:
    ψ(ρ, z) = (2π/A) Σ_{k in half plane} cos(k·ρ) g_k(z)/k
              - (2π/A) [z erf(αz) + e^{-α²z²}/(α√π)]."""
    dev, dt = positions.device, positions.dtype
    gs = torch.as_tensor(plan.slab_graphs, device=dev)
    axes = torch.as_tensor(plan.slab_axes, device=dev)
    m = torch.as_tensor(plan.slab_m, device=dev, dtype=dt)  # [n_slab, n_k, 2]
    mask = torch.as_tensor(plan.slab_mask, device=dev)
    a_u, a_v = cell[gs, axes[:, 0]], cell[gs, axes[:, 1]]  # [n_slab, 3] Å
    cross = torch.linalg.cross(a_u, a_v)
    area = torch.linalg.vector_norm(cross, dim=-1)  # [n_slab] Å^2
    normal = cross / area[:, None]
    plane = torch.stack([a_u, a_v], dim=1)  # [n_slab, 2, 3]
    inv = torch.linalg.inv(torch.cat([plane, normal[:, None]], dim=1))  # [n_slab, 3, 3]
    k = 2.0 * math.pi * m @ inv.transpose(-1, -2)[:, :2]  # [n_slab, n_k, 3] 1/Å, in plane
    kappa = torch.where(mask, torch.linalg.vector_norm(k, dim=-1), torch.ones_like(mask, dtype=dt))

    i = torch.as_tensor(plan.slab_pair_i, device=dev)
    j = torch.as_tensor(plan.slab_pair_j, device=dev)
    s = _slots(plan.slab_graphs, cell.shape[0], dev)[batch[i]]  # [n_pairs]
    d = positions[j] - positions[i]  # [n_pairs, 3] Å
    frac = torch.einsum("pc,pcd->pd", d, inv[s])[:, :2].detach()
    d = d - torch.einsum("pd,pdc->pc", torch.round(frac), plane[s])  # nearest in-plane image
    z = (d * normal[s]).sum(-1)  # [n_pairs] Å
    a = alpha[gs][s]
    up = z >= 0
    z_up = torch.where(up, z, torch.zeros_like(z))[:, None]
    z_down = torch.where(up, torch.zeros_like(z), -z)[:, None]
    kap, a2 = kappa[s], a[:, None]
    # The profile is even in z: evaluate each side in its stable form (exact derivatives at z = 0).
    profile = torch.where(up[:, None], _slab_profile(kap, z_up, a2), _slab_profile(kap, z_down, a2))
    waves = torch.cos(torch.einsum("pkc,pc->pk", k[s], d)) * profile / kap
    waves = torch.where(mask[s], waves, torch.zeros_like(waves)).sum(-1)  # [n_pairs]
    flat = z * torch.erf(a * z) + torch.exp(-((a * z) ** 2)) / (a * math.sqrt(math.pi))
    psi = 2 * math.pi / area[s] * (waves - flat)  # [n_pairs] 1/Å
    return torch.zeros_like(charges).index_add(0, i, psi * charges[j])
