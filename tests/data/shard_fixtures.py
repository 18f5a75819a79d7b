"""Synthetic crystals with known labels, for the shard and stream tests."""

from __future__ import annotations

import numpy as np

from foundation.data import Crystal

REFS = {1: -3.4, 8: -7.2, 14: -5.4, 26: -8.3, 29: -3.7}  # eV per atom of each element (made up)


def synthetic_crystal(i: int, rng: np.random.Generator, source: str = "synth", noise: float = 0.0,
                      id_prefix: str = "s") -> Crystal:
    """A periodic cell of 1-12 atoms on a jittered grid (no pair closer than ~1.4 Å), with
    energy = Σ ref_Z + noise (eV), formation_energy_per_atom = Σ ref_Z / n + noise, forces and
    a 3x3 stress."""
    n = int(rng.integers(1, 13))
    grid = np.array(np.meshgrid(range(3), range(3), range(2), indexing="ij")).reshape(3, -1).T[:n]
    a = 2.4 + rng.uniform(0, 0.3)
    positions = (grid + rng.uniform(-0.1, 0.1, grid.shape)) * a
    cell = np.diag([3 * a, 3 * a, 2 * a]) + rng.uniform(-0.2, 0.2, (3, 3))
    numbers = rng.choice(list(REFS), size=n)
    ref = float(sum(REFS[int(z)] for z in numbers))
    targets = {
        "energy": ref + noise * float(rng.normal()),
        "formation_energy_per_atom": ref / n + noise * float(rng.normal()),
        "band_gap": float(rng.uniform(0, 3)),
        "forces": rng.normal(size=(n, 3)),
        "stress": rng.normal(size=(3, 3)),
    }
    return Crystal(numbers, positions, cell, True, targets, id=f"{id_prefix}{i}", source=source,
                   arrays={"tags": rng.integers(0, 3, n)})


def synthetic(n: int, seed: int = 0, **kwargs) -> list[Crystal]:
    rng = np.random.default_rng(seed)
    return [synthetic_crystal(i, rng, **kwargs) for i in range(n)]
