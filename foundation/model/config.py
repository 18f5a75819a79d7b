"""`ModelConfig`: every architecture choice of the encoder and heads, as one frozen dataclass.

Load from YAML with `foundation.config.from_dict(ModelConfig, load_yaml("configs/model/small.yaml"))`.
The config carries no dtype or device: a model is built in the `dtype` its constructor is given
(torch's default otherwise) and moved with `.to(device, dtype)`, so the same config serves
float64 tests and bf16 GPU training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from e3nn import o3

__all__ = ["ModelConfig", "building_dtype"]


@contextmanager
def building_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Build modules with `dtype` as torch's default dtype (None: leave it).

    e3nn computes its constant tables (Clebsch-Gordan coefficients, spherical-harmonic
    normalisation) in the default dtype when a module is built; a model built in float32 and
    cast with `.double()` keeps float32-rounded constants (errors ~1e-7). Build in float64 for
    exact float64 work."""
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@dataclass(frozen=True)
class ModelConfig:
    # "equivariant": ours (e3nn tensor-product blocks, below); the baselines, sharing data, heads,
    # loss, loop and exports: "cgcnn" (Xie and Grossman 2018), "schnet" (Schütt et al. 2018),
    # "composition" (element fractions only, no structure). They use cutoff, n_basis (Gaussians),
    # n_layers, width, max_neighbors, head_hidden, dropout and max_atomic_number.
    encoder: Literal["equivariant", "cgcnn", "schnet", "composition"] = "equivariant"
    width: int = 64  # atom feature width of the baseline encoders
    # The nearest k neighbours within the cutoff (CGCNN: 12); 0 = all. Every encoder; on the
    # equivariant one a cap makes the energy discontinuous (neighbours swap): property tasks only.
    max_neighbors: int = 0
    cutoff: float = 5.0  # Å, neighbour-list radius; build graphs with the same value
    n_basis: int = 8  # radial Bessel functions
    cutoff_p: int = 6  # polynomial envelope exponent (u, u', u'' vanish at the cutoff)
    lmax: int = 2  # highest spherical-harmonic degree of the edge directions
    hidden_irreps: str = "32x0e + 16x1o + 8x2e"  # node features after every block
    n_layers: int = 3  # interaction blocks
    radial_hidden: tuple[int, ...] = (64,)  # hidden widths of each block's radial MLP
    avg_num_neighbors: float = 20.0  # neighbour sums are divided by its square root
    # Width of each block's pair gate: the edge weights depend on both atoms' scalars, not only on
    # the distance (CGCNN's gated convolution; foundation/nn/interaction.py). 0 = none. Measured on
    # `small` and not adopted: faster early, level or worse at 10 minutes (bench/README.md, "The pair gate").
    pair_hidden: int = 0
    pair_radial: bool = False  # the gate (no W₂) on the radial MLP's last hidden layer instead: cheaper
    # Width of a per-atom feed-forward update of every block's output scalars, s + W₂ SiLU(W₁ s)
    # (a transformer block's FFN; interaction.py); 0 = none. Per atom, so no edge work.
    ffn_hidden: int = 0
    # Invariants made from each block's aggregated l = 1 messages before its gate: K dot products of
    # linear mixtures (MACE's correlation-2 product on l = 1: bond angles in the block that makes
    # them; interaction.py). 0 = none; only blocks whose messages have l = 1 channels take them.
    vector_products: int = 0
    # The l > 0 messages that a block makes from its input scalars come from this many scalar
    # mixtures of their own instead of from every scalar channel (0 = every channel): per-edge
    # work of `small`'s first block falls from 64x0e + 64x1o to 64x0e + Vx1o (interaction.py).
    vector_channels: int = 0
    context: bool = False  # every block mixes each atom's scalars with its structure's mean (interaction.py)
    # The last block makes only its 0e channels (as MACE's last layer): nothing after it reads
    # vectors (heads read invariants; forces and stress are gradients), so its l > 0 messages
    # would be computed and discarded. A LatentEwald block after it is fine: it reads and writes 0e only.
    scalar_last: bool = False
    ewald_every: int = 0  # a LatentEwald block after every k-th interaction block; 0 = none
    ewald_hidden: int = 16  # width of the LatentEwald charge and feedback MLPs
    ewald_accuracy: float = 1e-4  # relative truncation error of the Ewald sums
    # Every encoder: the periodic table's descriptors of each species (foundation/data/elements.py),
    # mapped linearly and added to the learned embedding (CGCNN's element features; zero at init).
    element_features: bool = False
    # Every encoder: the structure's packing (volume per atom, packing fraction, volume against the
    # elemental solids'; foundation/nn/cell.py), mapped linearly onto every atom (zero at init).
    cell_features: bool = False
    head_hidden: int = 64  # hidden width of every task head's MLP
    # Dropout on the invariant features every head reads (training only; 0 = none): a regulariser
    # for the small, data-bound sets (on the moduli's 2,560 structures `small` overfits after its
    # best step, ~2,000-2,700 of a 10-minute run; measured there without gain, bench/README.md).
    dropout: float = 0.0
    max_atomic_number: int = 118  # species embedding and element references cover Z = 0 .. this

    def __post_init__(self) -> None:
        positive = {
            "cutoff": self.cutoff, "n_basis": self.n_basis, "n_layers": self.n_layers,
            "avg_num_neighbors": self.avg_num_neighbors, "ewald_hidden": self.ewald_hidden,
            "ewald_accuracy": self.ewald_accuracy, "head_hidden": self.head_hidden,
            "max_atomic_number": self.max_atomic_number, "width": self.width,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pair_hidden < 0:
            raise ValueError(f"pair_hidden must be >= 0 (0 disables), got {self.pair_hidden}")
        if self.ffn_hidden < 0:
            raise ValueError(f"ffn_hidden must be >= 0 (0 disables), got {self.ffn_hidden}")
        if self.vector_channels < 0:
            raise ValueError(f"vector_channels must be >= 0 (0: every scalar channel), got {self.vector_channels}")
        if self.vector_products < 0:
            raise ValueError(f"vector_products must be >= 0 (0 disables), got {self.vector_products}")
        if self.pair_radial and not self.pair_hidden:
            # Otherwise `pair_radial: true` alone would silently build no gate at all.
            raise ValueError("pair_radial: true needs pair_hidden > 0, which switches the gate on "
                             "(the radial form's width is the radial MLP's last hidden width)")
        if self.max_neighbors < 0:
            raise ValueError(f"max_neighbors must be >= 0 (0 keeps all), got {self.max_neighbors}")
        if self.cutoff_p < 2:
            raise ValueError(f"cutoff_p must be >= 2, got {self.cutoff_p}")
        if self.lmax < 0:
            raise ValueError(f"lmax must be >= 0, got {self.lmax}")
        if self.ewald_every < 0:
            raise ValueError(f"ewald_every must be >= 0 (0 disables), got {self.ewald_every}")
        if not 0 < self.ewald_accuracy < 1:
            raise ValueError(f"ewald_accuracy must be in (0, 1), got {self.ewald_accuracy}")
        if any(w < 1 for w in self.radial_hidden):
            raise ValueError(f"radial_hidden widths must be >= 1, got {self.radial_hidden}")
        try:
            irreps = o3.Irreps(self.hidden_irreps)
        except (ValueError, AssertionError) as exc:
            raise ValueError(f"hidden_irreps {self.hidden_irreps!r} is not an irreps string: {exc}") from exc
        if self.n_scalars == 0:
            raise ValueError(f"hidden_irreps {self.hidden_irreps!r} needs 0e channels (invariants)")
        if irreps.lmax > 2 * self.lmax:
            raise ValueError(
                f"hidden_irreps {self.hidden_irreps!r} has l = {irreps.lmax} > 2·lmax = {2 * self.lmax}"
            )

    @property
    def n_scalars(self) -> int:
        """Number of 0e channels of the hidden features: the invariant feature width F."""
        return sum(mul for mul, ir in o3.Irreps(self.hidden_irreps) if ir == o3.Irrep("0e"))

    @property
    def n_features(self) -> int:
        """F: the per-atom invariant features the heads read (n_scalars, or width for a baseline)."""
        return self.n_scalars if self.encoder == "equivariant" else self.width

    @property
    def n_species(self) -> int:
        return self.max_atomic_number + 1
