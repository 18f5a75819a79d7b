"""Physics tests of `foundation.nn.ewald` in float64: Madelung constants, invariances, gradients,
charged cells, slabs, molecules, batching, and the equivariance of `LatentEwald`.

Madelung constants are defined per ion pair with respect to the nearest-neighbour distance
r_nn: E_cell = -M · COULOMB · (n_atoms / 2) / r_nn for charges ±1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import units
from e3nn import o3
from e3nn.util.test import assert_equivariant
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pymatgen.analysis.ewald import EwaldSummation
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from foundation.nn.ewald import COULOMB, LatentEwald, ewald_energy, ewald_sum

F64 = torch.float64
CHARGE = {"Na": 1.0, "Cl": -1.0, "Cs": 1.0, "Zn": 1.0, "S": -1.0}
# (spacegroup, species, fractional sites, r_nn / a, Madelung constant w.r.t. r_nn)
CRYSTALS = {
    "rocksalt": ("Fm-3m", ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], 0.5, 1.747565),
    "cesium_chloride": ("Pm-3m", ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3], math.sqrt(3) / 2, 1.762675),
    "zincblende": ("F-43m", ["Zn", "S"], [[0, 0, 0], [0.25] * 3], math.sqrt(3) / 4, 1.638055),
}
SETTINGS = settings(max_examples=15, deadline=None)


def _energy(structure: Structure, **kwargs) -> float:
    q = torch.tensor([CHARGE[site.specie.symbol] for site in structure], dtype=F64)
    pos = torch.tensor(structure.cart_coords, dtype=F64)
    return ewald_energy(pos, torch.tensor(structure.lattice.matrix, dtype=F64), q, **kwargs).item()


def _madelung(structure: Structure, r_nn: float, **kwargs) -> float:
    return -_energy(structure, **kwargs) * r_nn / (COULOMB * len(structure) / 2)


def test_coulomb_constant_is_the_codata_value():
    assert COULOMB == pytest.approx(14.399645, abs=1e-6)
    assert COULOMB == pytest.approx(units.Hartree * units.Bohr, rel=1e-7)


@pytest.mark.parametrize("name", sorted(CRYSTALS))
def test_madelung_constants_for_any_alpha_and_any_cell(name):
    spacegroup, species, sites, r_over_a, reference = CRYSTALS[name]
    a = 5.0
    conventional = Structure.from_spacegroup(spacegroup, Lattice.cubic(a), species, sites)
    primitive = conventional.get_primitive_structure()
    unimodular = np.array([[1, 1, 0], [0, 1, 0], [1, 2, 1]])  # det = 1: same lattice, other basis
    skewed = Structure(
        Lattice(unimodular @ primitive.lattice.matrix), primitive.species, primitive.cart_coords,
        coords_are_cartesian=True,
    )
    assert abs(np.linalg.det(unimodular)) == pytest.approx(1.0)
    for structure in (conventional, primitive, skewed):
        for alpha in (None, 0.35, 0.7, 1.4):
            value = _madelung(structure, r_over_a * a, alpha=alpha)
            assert value == pytest.approx(reference, rel=1e-5), (name, len(structure), alpha)
    # The supercell holds 8 copies of the primitive cell's energy.
    e_prim = _energy(primitive)
    assert _energy(primitive * (2, 2, 2)) == pytest.approx(8 * e_prim, rel=1e-8)
    e_conv = _energy(conventional)
    assert e_conv / len(conventional) == pytest.approx(e_prim / len(primitive), rel=1e-8)


def test_agrees_with_pymatgen_for_fractional_and_net_charges():
    rng = np.random.default_rng(3)
    lattice = Lattice(np.diag([4.1, 4.6, 5.3]) + 0.4 * rng.uniform(-1, 1, (3, 3)))
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.4, 0.5], [0.2, 0.7, 0.1], [0.75, 0.1, 0.6]])
    for charges in ([0.7, -1.3, 0.9, -0.3], [1.0, -0.5, 0.8, 0.2]):  # neutral, then net +1.5 e
        s = Structure(lattice, ["O"] * 4, frac, site_properties={"charge": charges})
        reference = EwaldSummation(s, acc_factor=12).total_energy
        pos = torch.tensor(s.cart_coords)
        ours = ewald_energy(pos, torch.tensor(lattice.matrix), torch.tensor(charges))
        assert ours.item() == pytest.approx(reference, rel=1e-7, abs=1e-7)


def test_charged_cell_gets_alpha_independent_background_correction():
    cell = torch.tensor([[3.0, 0.2, 0.0], [0.0, 3.5, 0.3], [0.1, 0.0, 4.0]], dtype=F64)
    pos = torch.tensor([[0.1, 0.2, 0.3], [1.5, 1.7, 2.1]], dtype=F64)
    q = torch.tensor([1.0, 0.5], dtype=F64)
    energies = [ewald_energy(pos, cell, q, alpha=a).item() for a in (0.4, 0.8, 1.6)]
    assert max(energies) - min(energies) < 1e-7 * abs(energies[0])
    # A lone unit charge in a cubic box of side L in a neutralising background (simple-cubic
    # Wigner crystal): E = -2.8372975 · COULOMB / (2 L).
    box = 5.0 * torch.eye(3, dtype=F64)
    lone = ewald_energy(torch.zeros(1, 3, dtype=F64), box, torch.ones(1, dtype=F64))
    assert lone.item() == pytest.approx(-2.8372975 / 2 * COULOMB / 5.0, rel=1e-7)


# ---------------------------------------------------------------- random neutral bulk cells
def _random_bulk(seed: int, n: int):
    rng = np.random.default_rng(seed)
    length = rng.uniform(3.0, 5.0)
    cell = length * (np.eye(3) + 0.25 * rng.uniform(-1, 1, (3, 3)))
    pos = rng.uniform(0, 1, (n, 3)) @ cell
    q = rng.normal(size=n)
    q -= q.mean()
    return torch.tensor(pos), torch.tensor(cell), torch.tensor(q)


def _min_image_distance(pos, cell, periodic=(True, True, True)) -> float:
    shifts = np.array([s for s in np.ndindex(5, 5, 5)]) - 2
    shifts = shifts[np.all((shifts == 0) | np.array(periodic), axis=1)]
    p, images = pos.numpy(), shifts @ cell.numpy()
    d = p[None, :, None] - p[:, None, None] + images[None, None]  # [n, n, n_shifts, 3]
    r = np.linalg.norm(d, axis=-1)
    r[np.arange(len(pos)), np.arange(len(pos)), np.all(shifts == 0, axis=1).argmax()] = np.inf
    return float(r.min())


def _random_rotation(seed: int) -> torch.Tensor:
    rot = torch.as_tensor(Rotation.random(random_state=seed).as_matrix())
    return rot if seed % 2 else -rot  # improper half the time


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(2, 6))
def test_bulk_energy_invariances(seed, n):
    pos, cell, q = _random_bulk(seed, n)
    assume(_min_image_distance(pos, cell) > 0.8)
    energy = ewald_energy(pos, cell, q, accuracy=1e-10).item()
    tol = 1e-8 * COULOMB * float((q * q).sum()) / 0.8
    rng = np.random.default_rng(seed + 1)
    rot = _random_rotation(seed)
    perm = torch.as_tensor(rng.permutation(n))
    images = torch.as_tensor(rng.integers(-2, 3, (n, 3)), dtype=F64) @ cell
    basis = torch.tensor([[1, 0, 0], [2, 1, 0], [0, -1, 1]], dtype=F64)  # unimodular
    variants = {
        "rotation": (pos @ rot.T, cell @ rot.T, q),
        "translation": (pos + torch.as_tensor(rng.normal(size=3) * 7), cell, q),
        "permutation": (pos[perm], cell, q[perm]),
        "periodic images": (pos + images, cell, q),
        "lattice basis": (pos, basis @ cell, q),
    }
    for name, (p, c, charges) in variants.items():
        assert abs(ewald_energy(p, c, charges, accuracy=1e-10).item() - energy) < tol, name
    supercell = torch.cat([pos + torch.tensor(s, dtype=F64) @ cell for s in np.ndindex(2, 1, 1)])
    doubled = cell * torch.tensor([[2.0], [1.0], [1.0]], dtype=F64)
    e_super = ewald_energy(supercell, doubled, q.repeat(2), accuracy=1e-10)
    assert abs(e_super.item() - 2 * energy) < 2 * tol


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(2, 4))
def test_bulk_gradients_match_finite_differences(seed, n):
    pos, cell, q = _random_bulk(seed, n)
    assume(_min_image_distance(pos, cell) > 0.8)
    pos.requires_grad_(True)
    cell.requires_grad_(True)
    q.requires_grad_(True)
    # Fixed α: finite differences of the cell must not re-choose α between the two evaluations.
    def f(p, c, charges):
        return ewald_energy(p, c, charges, accuracy=1e-12, alpha=0.9)
    assert torch.autograd.gradcheck(f, (pos, cell, q))
    assert torch.autograd.gradgradcheck(lambda p: f(p, cell.detach(), q.detach()), (pos,))


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 6),
    mode=st.sampled_from(["bulk", "slab", "molecule"]),
)
def test_potential_is_the_charge_derivative(seed, n, mode):
    pos, cell, q = _random_bulk(seed, n)
    pbc = {"bulk": [True] * 3, "slab": [True, True, False], "molecule": [False] * 3}[mode]
    assume(_min_image_distance(pos, cell, pbc) > 0.8)
    q = q.clone().requires_grad_(True)
    batch = torch.zeros(n, dtype=torch.long)
    energy, phi = ewald_sum(pos, cell[None], q, batch, torch.tensor([pbc]), accuracy=1e-10)
    (grad,) = torch.autograd.grad(energy.sum(), q)
    assert torch.allclose(grad, phi, rtol=1e-9, atol=1e-9)
    assert energy.item() == pytest.approx(0.5 * float((q * phi).detach().sum()), rel=1e-12)


# ---------------------------------------------------------------- slabs, molecules, errors
def _random_slab(seed: int, n: int, thickness: float = 5.0):
    rng = np.random.default_rng(seed)
    plane = np.array([[4.0, 0.0, 0.0], [1.0, 3.5, 0.0]]) * rng.uniform(0.9, 1.3)
    in_plane = rng.uniform(0, 1, (n, 2)) @ plane[:, :2]
    pos = np.concatenate([in_plane, rng.uniform(0, thickness, (n, 1))], 1)
    pos[1, 2] = pos[0, 2]  # two atoms in one plane: z_ij = 0 must be smooth too
    q = rng.normal(size=n)
    q -= q.mean()
    return torch.tensor(pos), torch.tensor(plane), torch.tensor(q)


def _slab_cell(plane: torch.Tensor, c) -> torch.Tensor:
    return torch.cat([plane, torch.as_tensor(c, dtype=F64)[None]])


def _slab_structure(seed: int, n: int):
    pos, plane, q = _random_slab(seed, n)
    return pos, _slab_cell(plane, [0, 0, 8.0]), q


def test_slab_matches_3d_sum_with_dipole_correction_as_vacuum_grows():
    """Independent reference: 3-D Ewald with vacuum plus the Yeh-Berkowitz correction
    2π M_z²/V converges to the exact 2-D sum as the vacuum gap grows."""
    pos, plane, q = _random_slab(11, 6)
    cell = _slab_cell(plane, [0, 0, 6.0])
    slab = ewald_energy(pos, cell, q, pbc=[True, True, False], accuracy=1e-12)
    dipole = float((q * pos[:, 2]).sum())
    errors = []
    for height in (6.0, 8.0, 11.0, 16.0, 30.0):
        cell = _slab_cell(plane, [0.0, 0.0, height])
        volume = float(torch.linalg.det(cell))
        correction = COULOMB * 2 * math.pi * dipole**2 / volume  # Yeh-Berkowitz
        bulk = ewald_energy(pos, cell, q, accuracy=1e-12) + correction
        errors.append(abs(bulk.item() - slab.item()))
    assert all(later < earlier for earlier, later in zip(errors[:3], errors[1:4])), errors
    assert errors[0] > 1e-3 and errors[-1] < 1e-9 * abs(slab.item()), errors


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(2, 6))
def test_slab_is_independent_of_alpha_open_vector_and_frame(seed, n):
    pos, plane, q = _random_slab(seed, n)
    assume(_min_image_distance(pos, _slab_cell(plane, [0, 0, 50.0]), [True, True, False]) > 0.8)
    pbc = [True, True, False]
    energy = ewald_energy(pos, _slab_cell(plane, [0, 0, 7.0]), q, pbc=pbc, accuracy=1e-10).item()
    tol = 1e-8 * COULOMB * float((q * q).sum()) / 0.8
    rng = np.random.default_rng(seed)
    rot = _random_rotation(seed)
    shift = torch.as_tensor(rng.integers(-2, 3, (n, 2)), dtype=F64) @ plane
    perm = [2, 0, 1]  # open direction on the first axis instead of the third
    variants = {
        "alpha": (pos, _slab_cell(plane, [0, 0, 7.0]), q, pbc, 0.9),
        "open vector": (pos, _slab_cell(plane, [2.0, -1.0, 0.5]), q, pbc, None),
        "rotation": (pos @ rot.T, _slab_cell(plane, [0, 0, 7.0]) @ rot.T, q, pbc, None),
        "in-plane images": (pos + shift, _slab_cell(plane, [0, 0, 7.0]), q, pbc, None),
        "open axis": (pos, _slab_cell(plane, [0, 0, 7.0])[perm], q, [False, True, True], None),
    }
    for name, (p, c, charges, periodic, alpha) in variants.items():
        value = ewald_energy(p, c, charges, pbc=periodic, accuracy=1e-10, alpha=alpha).item()
        assert abs(value - energy) < tol, name


def test_slab_gradients_match_finite_differences():
    pos, plane, q = _random_slab(5, 4)
    cell = _slab_cell(plane, [0, 0, 9.0]).requires_grad_(True)
    pos.requires_grad_(True)
    def f(p, c):
        return ewald_energy(p, c, q, pbc=[True, True, False], accuracy=1e-12, alpha=0.5)

    assert torch.autograd.gradcheck(f, (pos, cell))
    assert torch.autograd.gradgradcheck(lambda p: f(p, cell.detach()), (pos,))


def test_molecule_is_a_direct_coulomb_sum_and_may_be_charged():
    rng = np.random.default_rng(2)
    pos, q = rng.uniform(0, 6, (5, 3)), rng.normal(size=5)  # net charge allowed
    r = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    off = ~np.eye(5, dtype=bool)
    reference = 0.5 * COULOMB * (q[:, None] * q[None] / np.where(off, r, 1))[off].sum()
    cell = torch.zeros(3, 3, dtype=F64)  # no cell at all
    value = ewald_energy(torch.tensor(pos), cell, torch.tensor(q), pbc=[False] * 3)
    assert value.item() == pytest.approx(reference, rel=1e-12)


def test_unsupported_or_ill_posed_inputs_raise():
    pos, plane, q = _random_slab(0, 3)
    cell = _slab_cell(plane, [0, 0, 7.0])
    with pytest.raises(ValueError, match="slab .* must be charge neutral"):
        ewald_energy(pos, cell, q + 0.1, pbc=[True, True, False])
    with pytest.raises(ValueError, match="1-D periodic"):
        ewald_energy(pos, cell, q, pbc=[True, False, False])
    with pytest.raises(ValueError, match="zero volume"):
        ewald_energy(pos, torch.zeros(3, 3, dtype=F64), q)
    with pytest.raises(ValueError, match="accuracy"):
        ewald_energy(pos, cell, q, accuracy=2.0)


def test_batch_of_mixed_structures_equals_one_by_one_and_float32_agrees():
    structures = [
        (*_random_bulk(1, 3), [True] * 3),
        (*_slab_structure(2, 4), [True, True, False]),
        (*_random_bulk(3, 2), [False] * 3),
        (*_random_bulk(4, 5), [True] * 3),
    ]
    pos = torch.cat([s[0] for s in structures])
    cell = torch.stack([s[1] for s in structures])
    q = torch.cat([s[2] for s in structures])
    pbc = torch.tensor([s[3] for s in structures])
    batch = torch.cat([torch.full((len(s[0]),), g) for g, s in enumerate(structures)])
    energy, phi = ewald_sum(pos, cell, q, batch, pbc)
    alone = torch.stack([ewald_energy(p, c, charges, pbc=b) for p, c, charges, b in structures])
    assert torch.allclose(energy, alone, rtol=1e-10, atol=1e-10)
    e32, phi32 = ewald_sum(pos.float(), cell.float(), q.float(), batch, pbc, accuracy=1e-6)
    assert e32.dtype == torch.float32 and phi32.dtype == torch.float32
    assert torch.allclose(e32.double(), energy, rtol=1e-4, atol=1e-4)
    assert torch.allclose(phi32.double(), phi, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- LatentEwald
IRREPS = o3.Irreps("4x0e + 2x1o + 1x2e + 2x0e")


def _latent_inputs(dtype=F64):
    structures = [
        (*_random_bulk(7, 3), [True] * 3),
        (*_slab_structure(8, 4), [True, True, False]),
        (*_random_bulk(9, 3), [False] * 3),
    ]
    pos = torch.cat([s[0] for s in structures]).to(dtype)
    cell = torch.stack([s[1] for s in structures]).to(dtype)
    pbc = torch.tensor([s[3] for s in structures])
    batch = torch.cat([torch.full((len(s[0]),), g) for g, s in enumerate(structures)])
    torch.manual_seed(0)
    feats = IRREPS.randn(len(pos), -1, dtype=dtype)
    return feats, pos, cell, pbc, batch, len(structures)


def _trained_block(dtype=F64) -> LatentEwald:
    torch.manual_seed(0)
    block = LatentEwald(IRREPS, n_hidden=8).to(dtype)
    torch.nn.init.normal_(block.feedback_mlp[-1].weight)  # away from the identity start
    return block


def test_latent_ewald_starts_as_identity_and_declares_irreps():
    block = LatentEwald(IRREPS).double()
    assert block.irreps_in == block.irreps_out == IRREPS
    feats, pos, cell, pbc, batch, n_graphs = _latent_inputs()
    out, energy = block(feats, pos, cell, pbc, batch, n_graphs)
    assert torch.equal(out, feats) and energy.shape == (n_graphs,)
    with pytest.raises(ValueError, match="0e channels"):
        LatentEwald(o3.Irreps("2x1o"))


def test_latent_ewald_is_equivariant_with_invariant_energy():
    block = _trained_block()
    feats, pos, cell, pbc, batch, n_graphs = _latent_inputs()

    def func(f, p, c):
        out, energy = block(f, p, c, pbc, batch, n_graphs)
        return out, energy[:, None]

    # e3nn builds its D matrices from Euler angles (~4e-7 off the rotation it applies to points),
    # which bounds what assert_equivariant can resolve; the exact check follows.
    assert_equivariant(
        func, args_in=[feats, pos, cell], irreps_in=[IRREPS, "cartesian_points", o3.Irreps("1o")],
        irreps_out=[IRREPS, o3.Irreps("0e")], tolerance=1e-5,
    )
    out, energy = func(feats, pos, cell)
    for seed in (1, 2):  # a proper and an improper rotation, plus a translation
        rot = _random_rotation(seed)
        d = IRREPS.D_from_matrix(rot)
        out_r, energy_r = func(feats @ d.T, pos @ rot.T + 3.0, cell @ rot.T)
        assert torch.allclose(out_r, out @ d.T, rtol=0, atol=1e-10)
        assert torch.allclose(energy_r, energy, rtol=0, atol=1e-10)
    not_scalar = torch.ones(IRREPS.dim, dtype=torch.bool)
    not_scalar[block.scalar_index] = False
    assert torch.equal(out[:, not_scalar], feats[:, not_scalar])  # vectors and tensors untouched
    assert not torch.allclose(out, feats)


def test_latent_charges_are_neutral_and_forces_flow_in_float32():
    block = _trained_block(torch.float32)
    feats, pos, cell, pbc, batch, n_graphs = _latent_inputs(torch.float32)
    q = block.latent_charges(feats, batch, n_graphs)
    totals = torch.zeros(n_graphs).index_add(0, batch, q)
    assert totals.abs().max() < 1e-5 and q.abs().max() > 1e-3
    pos.requires_grad_(True)
    out, energy = block(feats, pos, cell, pbc, batch, n_graphs)
    (energy.sum() + out.square().sum()).backward()
    assert torch.isfinite(pos.grad).all() and pos.grad.abs().max() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_latent_ewald_runs_in_bf16_with_float32_sums():
    """bf16 training (DeepSpeed) casts the block and its inputs; the sums run in float32."""
    block32 = _trained_block(torch.float32)
    block16 = _trained_block(torch.bfloat16)
    feats, pos, cell, pbc, batch, n_graphs = _latent_inputs(torch.float32)
    out32, energy32 = block32(feats, pos, cell, pbc, batch, n_graphs)
    pos16 = pos.to(torch.bfloat16).requires_grad_(True)
    out16, energy16 = block16(feats.to(torch.bfloat16), pos16, cell.to(torch.bfloat16), pbc, batch, n_graphs)
    assert out16.dtype == torch.bfloat16 and energy16.dtype == torch.float32
    scale = energy32.abs().max()
    assert (energy16.float() - energy32).abs().max() < 0.05 * scale  # bf16 inputs: ~1% each
    energy16.sum().backward()
    assert torch.isfinite(pos16.grad).all()
