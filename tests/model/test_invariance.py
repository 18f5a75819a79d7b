"""Physics of the whole model in float64: structure-level outputs invariant to rotation (and
inversion), translation, permutation, periodic images and the choice of lattice basis; intensive
outputs equal and extensive ones 8x for a 2x2x2 supercell; forces rotate with the structure,
follow permutations and equal finite differences of the energy. Real Materials Project cells,
also cut into a slab (pbc T,T,F) and a cluster (no pbc). Two models: l <= 2 with latent Ewald blocks,
the structure-context update and the pair gate on the edge weights (e3nn's tensor products), and the default CPU encoder
(`configs/model/small.yaml`: l <= 1 with the written-out product, a scalar-only last block)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from model_fixtures import SMALL, batch_of, load_mp, supercell, transformed

from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats
from foundation.model.config import building_dtype
from foundation.nn.products import L1Product


CONFIG = ModelConfig(
    cutoff=4.0, n_basis=6, lmax=2, hidden_irreps="8x0e + 2x0o + 4x1o + 2x1e + 2x2e", n_layers=2,
    radial_hidden=(8,), avg_num_neighbors=20.0, ewald_every=1, ewald_hidden=8,
    ewald_accuracy=1e-12, head_hidden=8, context=True, pair_hidden=8,
)
TASKS = [
    TaskSpec.for_target("energy"),
    TaskSpec.for_target("forces", forces_of="energy"),
    TaskSpec.for_target("energy_per_atom"),
    TaskSpec.for_target("band_gap"),
    TaskSpec.for_target("is_metal"),
]
STRUCTURE_TASKS = ["energy", "energy_per_atom", "band_gap", "is_metal"]
BULK = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:4]  # Ewald acts
SLAB = transformed(BULK[1], pbc=[True, True, False])
CLUSTER = transformed(BULK[2], pbc=[False, False, False])
ALL = BULK + [SLAB, CLUSTER]
TOL = dict(rtol=1e-10, atol=1e-10)  # passes at 1e-11 too


@pytest.fixture(scope="module", params=["lmax2_ewald", "small"])
def model(request):
    config = CONFIG if request.param == "lmax2_ewald" else SMALL
    torch.manual_seed(0)
    refs = {"energy": {z: -1.0 - 0.1 * z for z in range(119)}, "energy_per_atom": {8: -4.0, 89: -2.5}}
    norm = {"energy": (0.3, 1.7), "energy_per_atom": (-0.2, 0.9), "band_gap": (1.1, 2.0)}
    stats = {k: TaskStats((mean,), (std,), refs.get(k, {})) for k, (mean, std) in norm.items()}
    m = FoundationModel(config, TASKS, stats, dtype=torch.float64)
    for ewald in m.encoder.ewald.values():  # the feedback starts at zero: make it act
        torch.nn.init.normal_(ewald.feedback_mlp[-1].weight, std=0.3)
    for block in m.encoder.blocks:  # so does the pair gate
        if block.pair is not None:
            zero_map = block.pair.project if block.pair.out is None else block.pair.out
            torch.nn.init.normal_(zero_map.weight, std=0.3)
    return m.eval()


def predict(model, crystals):
    return model(batch_of(crystals, model.config.cutoff))


def rotation(seed: int, improper: bool) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q)) * (-1.0 if improper else 1.0)


def assert_same_structure_outputs(a, b, scale=None):
    for name in STRUCTURE_TASKS:
        factor = scale if (scale is not None and name == "energy") else 1.0
        torch.testing.assert_close(a[name] * factor, b[name], **TOL)


def test_outputs_are_not_trivial(model):
    p = predict(model, ALL)
    assert p["energy"].shape == (len(ALL),) and p["forces"].shape == (sum(c.n_atoms for c in ALL), 3)
    assert p["forces"].abs().max() > 1e-3 and p["energy"].std() > 1e-3
    if model.config is SMALL:  # the written-out l <= 1 product runs; the last block makes scalars only
        assert all(isinstance(block.written_out, L1Product) for block in model.encoder.blocks)
        assert str(model.encoder.irreps_out) == "64x0e" and str(model.encoder.blocks[0].irreps_out) == "64x0e+16x1o"
        return
    with torch.no_grad():
        encoded = model.encoder(batch_of(ALL, model.config.cutoff))
    assert len(model.encoder.ewald) == 2 and encoded["ewald_energy"].abs().min() > 1e-6
    assert str(model.encoder.irreps_out) == "8x0e+4x1o+2x1e+2x2e"  # 0o is out of reach in 2 layers


@settings(max_examples=12, deadline=None)
@given(index=st.integers(0, len(ALL) - 1), seed=st.integers(0, 2**32 - 1), improper=st.booleans())
def test_rotation_invariance_and_force_equivariance(model, index, seed, improper):
    c = ALL[index]
    rot = rotation(seed, improper)
    rotated = transformed(c, positions=c.positions @ rot.T, cell=c.cell @ rot.T)
    p, q = predict(model, [c]), predict(model, [rotated])
    assert_same_structure_outputs(p, q)
    torch.testing.assert_close(p["forces"] @ torch.as_tensor(rot).T, q["forces"], **TOL)


@settings(max_examples=12, deadline=None)
@given(index=st.integers(0, len(ALL) - 1), seed=st.integers(0, 2**32 - 1))
def test_translation_and_permutation(model, index, seed):
    c = ALL[index]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(c.n_atoms)
    moved = transformed(c, positions=c.positions[perm] + rng.normal(scale=3.0, size=3),
                        numbers=c.numbers[perm])
    p, q = predict(model, [c]), predict(model, [moved])
    assert_same_structure_outputs(p, q)
    torch.testing.assert_close(p["forces"][perm], q["forces"], **TOL)


@settings(max_examples=12, deadline=None)
@given(index=st.integers(0, len(ALL) - 1), seed=st.integers(0, 2**32 - 1))
def test_choice_of_periodic_image(model, index, seed):
    c = ALL[index]
    n = np.random.default_rng(seed).integers(-2, 3, size=(c.n_atoms, 3)) * c.pbc  # periodic axes only
    wrapped = transformed(c, positions=c.positions + n @ c.cell)
    p, q = predict(model, [c]), predict(model, [wrapped])
    assert_same_structure_outputs(p, q)
    torch.testing.assert_close(p["forces"], q["forces"], **TOL)


def unimodular(seed: int) -> np.ndarray:
    """A random integer matrix with determinant 1 (product of elementary shears)."""
    rng = np.random.default_rng(seed)
    m = np.eye(3, dtype=np.int64)
    for _ in range(3):
        i, j = rng.choice(3, size=2, replace=False)
        e = np.eye(3, dtype=np.int64)
        e[i, j] = rng.choice([-1, 1])
        m = e @ m
    return m


@settings(max_examples=12, deadline=None)
@given(index=st.integers(0, len(BULK) - 1), seed=st.integers(0, 2**32 - 1))
def test_change_of_lattice_basis(model, index, seed):
    c = BULK[index]
    m = unimodular(seed)
    assert round(np.linalg.det(m)) == 1
    rebased = transformed(c, cell=m @ c.cell)
    p, q = predict(model, [c]), predict(model, [rebased])
    assert_same_structure_outputs(p, q)
    torch.testing.assert_close(p["forces"], q["forces"], **TOL)


@pytest.mark.parametrize("index", range(len(BULK)))
def test_supercell_intensive_equal_extensive_eightfold(model, index):
    c = BULK[index]
    p, q = predict(model, [c]), predict(model, [supercell(c)])
    assert_same_structure_outputs(p, q, scale=8.0)
    torch.testing.assert_close(p["forces"].repeat(8, 1), q["forces"], **TOL)


@pytest.mark.parametrize("index", [0, 3, 4, 5])  # bulk, bulk, slab, cluster
def test_forces_equal_finite_differences(model, index):
    c = ALL[index]
    batch = batch_of([c], model.config.cutoff)
    forces = model(batch)["forces"]

    def energy(pos):
        # Same edges and shifts: the envelope makes pairs beyond the cutoff contribute 0.
        with torch.no_grad():
            return model.heads["energy"](model.encoder(batch, pos), batch)[0]

    h = 1e-3
    rng = np.random.default_rng(index)
    for atom, axis in zip(rng.integers(0, c.n_atoms, 3), rng.integers(0, 3, 3)):
        def shifted(k):
            pos = batch.positions.clone()
            pos[atom, axis] += k * h
            return energy(pos)
        # Fourth-order central difference: truncation error O(h⁴).
        fd = -(-shifted(2) + 8 * shifted(1) - 8 * shifted(-1) + shifted(-2)) / (12 * h)
        assert abs(fd.item() - forces[atom, axis].item()) < 1e-8, (atom, axis, fd.item(), forces[atom, axis].item())


def test_wigner_d_in_float64_matches_rotated_features(model):
    """Node features (all irreps) rotate with D(R): the encoder itself is equivariant."""
    c = BULK[0]
    rot = rotation(7, improper=True)
    with building_dtype(torch.float64):
        d = model.encoder.irreps_out.D_from_matrix(torch.as_tensor(rot))
    rotated = transformed(c, positions=c.positions @ rot.T, cell=c.cell @ rot.T)
    with torch.no_grad():
        a = model.encoder(batch_of([c], model.config.cutoff))["node_features"]
        b = model.encoder(batch_of([rotated], model.config.cutoff))["node_features"]
    torch.testing.assert_close(a @ d.T, b, **TOL)
