"""Radial basis of edge lengths: Bessel functions times a smooth polynomial cutoff envelope.

    e_n(r) = sqrt(2 / r_c) · sin(n π r / r_c) / r      n = 1 .. n_basis   (DimeNet, NequIP)
    u(x)   = 1 − (p+1)(p+2)/2 · x^p + p(p+2) · x^(p+1) − p(p+1)/2 · x^(p+2),   x = r / r_c < 1
    u(x)   = 0 for x ≥ 1

u(1) = u'(1) = u''(1) = 0, so energies and forces stay continuous when a neighbour crosses
the cutoff (an atom entering or leaving the sphere changes nothing); that is what makes the
model independent of which periodic images the neighbour list happens to include.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BesselBasis", "PolynomialCutoff", "RadialEmbedding"]


class BesselBasis(nn.Module):
    """Orthonormal radial Bessel functions on [0, r_c].

    forward(r [n_edges] Å) -> [n_edges, n_basis]. The frequencies start at n π / r_c and may be
    trained (`trainable=True`), as in DimeNet; fixed ones are not stored.
    """

    def __init__(self, cutoff: float, n_basis: int = 8, trainable: bool = False):
        super().__init__()
        if cutoff <= 0 or n_basis < 1:
            raise ValueError(f"BesselBasis needs cutoff > 0 and n_basis >= 1, got {cutoff}, {n_basis}")
        self.cutoff = float(cutoff)
        self.n_basis = int(n_basis)
        self.trainable = bool(trainable)
        if trainable:
            freq = torch.arange(1, n_basis + 1, dtype=torch.get_default_dtype()) * math.pi / cutoff
            self.freq = nn.Parameter(freq)  # [n_basis] 1/Å
        self.prefactor = math.sqrt(2.0 / cutoff)

    def frequencies(self, like: torch.Tensor) -> torch.Tensor:
        """[n_basis] 1/Å. Fixed ones are made in the input's dtype, exact in float64."""
        if self.trainable:
            return self.freq
        n = torch.arange(1, self.n_basis + 1, dtype=like.dtype, device=like.device)
        return n * (math.pi / self.cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        freq = self.frequencies(r)  # [n_basis] 1/Å
        r = r.unsqueeze(-1)  # [n_edges, 1] Å
        return self.prefactor * torch.sin(freq * r) / r  # [n_edges, n_basis]


class PolynomialCutoff(nn.Module):
    """Smooth envelope u(r / r_c) of degree p + 2, zero with two vanishing derivatives at r_c.

    forward(r [n_edges] Å) -> [n_edges], 1 at r = 0, exactly 0 for r >= r_c.
    """

    def __init__(self, cutoff: float, p: int = 6):
        super().__init__()
        if cutoff <= 0 or p < 2:
            raise ValueError(f"PolynomialCutoff needs cutoff > 0 and p >= 2, got {cutoff}, {p}")
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = float(self.p)
        x = r / self.cutoff  # [n_edges]
        out = (
            1.0
            - 0.5 * (p + 1.0) * (p + 2.0) * x.pow(p)
            + p * (p + 2.0) * x.pow(p + 1.0)
            - 0.5 * p * (p + 1.0) * x.pow(p + 2.0)
        )
        return out * (x < 1.0).to(out.dtype)  # [n_edges]


class RadialEmbedding(nn.Module):
    """Bessel basis times the polynomial envelope: the edge-length features of every layer.

    forward(r [n_edges] Å) -> [n_edges, n_basis]; every column is 0 at and beyond r_c.
    """

    def __init__(self, cutoff: float, n_basis: int = 8, p: int = 6, trainable: bool = False):
        super().__init__()
        self.bessel = BesselBasis(cutoff, n_basis, trainable)
        self.envelope = PolynomialCutoff(cutoff, p)
        self.n_basis = int(n_basis)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.bessel(r) * self.envelope(r).unsqueeze(-1)  # [n_edges, n_basis]
