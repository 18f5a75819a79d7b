"""InteractionBlock: O(3) equivariance on random inputs, irreps declared and checked when built."""

import pytest
import torch
from e3nn import o3
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation.model.config import building_dtype
from foundation.nn.interaction import InteractionBlock, check_irreps, gate_for
from foundation.nn.radial import RadialEmbedding

IRREPS_SH = o3.Irreps.spherical_harmonics(2)


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    with building_dtype(torch.float64):
        return InteractionBlock("4x0e + 2x1o + 1x2e + 1x1e", "6x0e + 3x1o + 2x2e + 1x0o", IRREPS_SH,
                                n_basis=5, radial_hidden=(8,), avg_num_neighbors=4.0)


with building_dtype(torch.float64):
    SH = o3.SphericalHarmonics(IRREPS_SH, normalize=True, normalization="component")
    RADIAL = RadialEmbedding(3.0, 5)


def _run(block, feats, vec, edge_index):
    return block(feats, SH(vec), RADIAL(vec.norm(dim=-1)), edge_index)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), improper=st.booleans())
def test_block_is_o3_equivariant(block, seed, improper):
    g = torch.Generator().manual_seed(seed)
    n_atoms, n_edges = 7, 20
    feats = torch.randn(n_atoms, block.irreps_in.dim, generator=g, dtype=torch.float64)
    vec = torch.randn(n_edges, 3, generator=g, dtype=torch.float64)
    edge_index = torch.randint(0, n_atoms, (2, n_edges), generator=g)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    rot = q * (torch.det(q).sign() * (-1.0 if improper else 1.0))  # det = -1 when improper
    with building_dtype(torch.float64):  # e3nn's Wigner-D generators are made in the default dtype too
        d_in = block.irreps_in.D_from_matrix(rot)
        d_out = block.irreps_out.D_from_matrix(rot)
    out = _run(block, feats, vec, edge_index)
    out_rot = _run(block, feats @ d_in.T, vec @ rot.T, edge_index)
    torch.testing.assert_close(out_rot, out @ d_out.T, rtol=0, atol=1e-10)
    assert out.abs().max() > 1e-3  # not trivially zero


def test_irreps_declared_and_normalised(block):
    assert block.irreps_in == o3.Irreps("4x0e + 2x1o + 1x2e + 1x1e")
    assert block.irreps_out == o3.Irreps("1x0o + 6x0e + 3x1o + 2x2e")  # sorted by (l, parity)


def test_unreachable_output_irreps_raise_at_construction():
    # 0e ⊗ (0e + 1o) can only give 0e and 1o: a 1e output cannot be produced
    with pytest.raises(ValueError, match="1e"):
        InteractionBlock("4x0e", "4x0e + 2x1e", o3.Irreps.spherical_harmonics(1), n_basis=4)


def test_gated_irreps_without_scalars_raise():
    with pytest.raises(ValueError, match="no scalar"):
        InteractionBlock("4x0e", "4x1o", o3.Irreps.spherical_harmonics(1), n_basis=4)
    with pytest.raises(ValueError, match="no scalar"):
        gate_for(o3.Irreps("2x2e"))


def test_check_irreps_names_the_mismatch():
    with pytest.raises(ValueError, match="block 3 input.*8x0e"):
        check_irreps("8x0e", "4x0e", "block 3 input")
    check_irreps("2x0e+1x1o", o3.Irreps("2x0e + 1x1o"), "same")


def test_wrong_feature_width_raises_in_forward(block):
    with pytest.raises(ValueError, match="irreps_in.dim"):
        _run(block, torch.zeros(3, block.irreps_in.dim + 1, dtype=torch.float64),
             torch.randn(2, 3, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.long))


def test_messages_vanish_beyond_cutoff(block):
    # Only the self-connection remains when every edge is longer than the radial cutoff (3 Å).
    feats = torch.randn(3, block.irreps_in.dim, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1], [1, 2]])
    far = torch.tensor([[3.5, 0.0, 0.0], [0.0, 4.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(_run(block, feats, far, edge_index), block.self_connection(feats))
