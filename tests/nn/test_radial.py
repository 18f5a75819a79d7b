"""Radial Bessel basis and polynomial cutoff: values, smoothness at the cutoff, zero beyond."""

import numpy as np
import pytest
import torch
from scipy.special import spherical_jn

from foundation.nn.radial import BesselBasis, PolynomialCutoff, RadialEmbedding

CUTOFF = 4.5


def test_bessel_matches_spherical_bessel_j0():
    basis = BesselBasis(CUTOFF, n_basis=6).double()
    r = torch.linspace(0.1, CUTOFF, 50, dtype=torch.float64)
    n = np.arange(1, 7)
    k = n * np.pi / CUTOFF
    # sin(k r) / r = k · j0(k r)
    expected = np.sqrt(2 / CUTOFF) * k * spherical_jn(0, np.outer(r.numpy(), k))
    np.testing.assert_allclose(basis(r).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_bessel_orthonormal_on_the_interval():
    # ∫_0^rc e_m e_n r² dr = δ_mn (orthonormal with the radial measure)
    basis = BesselBasis(CUTOFF, n_basis=5).double()
    r = torch.linspace(1e-6, CUTOFF, 200001, dtype=torch.float64)
    e = basis(r) * r.unsqueeze(-1)
    gram = torch.trapezoid(e.unsqueeze(-1) * e.unsqueeze(-2), r, dim=0)
    np.testing.assert_allclose(gram.numpy(), np.eye(5), atol=1e-6)


@pytest.mark.parametrize("p", [2, 5, 6])
def test_cutoff_value_and_two_derivatives_vanish_at_cutoff(p):
    cut = PolynomialCutoff(CUTOFF, p)
    r = torch.tensor([0.0, CUTOFF], dtype=torch.float64, requires_grad=True)
    u = cut(r)
    (du,) = torch.autograd.grad(u.sum(), r, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), r)
    assert u[0].item() == pytest.approx(1.0, abs=1e-14)
    assert du[0].item() == pytest.approx(0.0, abs=1e-14)
    assert abs(u[1].item()) < 1e-12 and abs(du[1].item()) < 1e-10 and abs(d2u[1].item()) < 1e-9


def test_embedding_zero_at_and_beyond_cutoff_and_nonzero_inside():
    emb = RadialEmbedding(CUTOFF, 8).double()
    r = torch.tensor([0.5, 3.0, CUTOFF, CUTOFF + 0.1, 10.0], dtype=torch.float64)
    out = emb(r)
    assert out.shape == (5, 8)
    assert out[:2].abs().sum() > 0
    assert torch.all(out[3:] == 0) and out[2].abs().max() < 1e-12


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        BesselBasis(0.0, 4)
    with pytest.raises(ValueError):
        PolynomialCutoff(5.0, 1)
