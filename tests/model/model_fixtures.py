"""Shared helpers for model tests: real Materials Project crystals and float64 predictions."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure

from foundation.data.crystal import Crystal
from foundation.data.graph import collate, neighbor_graph
from foundation.config import from_dict, load_yaml
from foundation.model import ModelConfig, TaskSpec, TaskStats

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MP_SUMMARY = DATA / "materials_project" / "summary.jsonl.gz"
# The default CPU encoder's config, as the README's runs build it.
SMALL = from_dict(ModelConfig, load_yaml(Path(__file__).resolve().parents[2] / "configs/model/small.yaml"))
# One formation-energy head with a non-trivial normalisation and reference, for single-task model tests.
E_FORM = "formation_energy_per_atom"
E_FORM_TASKS = [TaskSpec.for_target(E_FORM)]
E_FORM_STATS = {E_FORM: TaskStats((-1.0,), (1.0,), {8: -2.0})}


def load_mp(max_atoms: int = 8, limit: int = 200) -> list[Crystal]:
    """Real crystals from the Materials Project sample, with their labels (canonical keys)."""
    out = []
    with gzip.open(MP_SUMMARY, "rt") as fh:
        for i, line in enumerate(fh):
            if i >= limit:
                break
            row = json.loads(line)
            structure = Structure.from_dict(row["structure"])
            if len(structure) > max_atoms:
                continue
            targets = {
                "energy": row["energy_per_atom"] * len(structure),
                "energy_per_atom": row["energy_per_atom"],
                "formation_energy_per_atom": row["formation_energy_per_atom"],
                "band_gap": row["band_gap"],
                "is_metal": float(row["is_metal"]),
            }
            out.append(Crystal.from_pymatgen(structure, targets=targets, id=f"mp{i}",
                                             source="materials_project"))
    return out


def batch_of(crystals, cutoff: float, dtype=torch.float64, datasets=None):
    graphs = [neighbor_graph(c, cutoff, dataset=(datasets[i] if datasets else ""))
              for i, c in enumerate(crystals)]
    return collate(graphs, dtype=dtype)


def transformed(crystal: Crystal, positions=None, cell=None, pbc=None, numbers=None) -> Crystal:
    return Crystal(
        numbers=crystal.numbers if numbers is None else numbers,
        positions=crystal.positions if positions is None else positions,
        cell=crystal.cell if cell is None else cell,
        pbc=crystal.pbc if pbc is None else pbc,
        targets=dict(crystal.targets), id=crystal.id, source=crystal.source,
    )


def rotated_permuted(crystal: Crystal, seed: int = 0) -> Crystal:
    """The same crystal under a random orthogonal map of space and a random order of its atoms."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    perm = rng.permutation(crystal.n_atoms)
    return transformed(crystal, positions=crystal.positions[perm] @ q.T, cell=crystal.cell @ q.T,
                       numbers=crystal.numbers[perm])


def supercell(crystal: Crystal, reps=(2, 2, 2)) -> Crystal:
    """Supercell with atoms ordered image-major: atom k of image m is index m·n + k."""
    shifts = np.array([(a, b, c) for a in range(reps[0]) for b in range(reps[1]) for c in range(reps[2])])
    positions = np.concatenate([crystal.positions + s @ crystal.cell for s in shifts])
    return Crystal(np.tile(crystal.numbers, len(shifts)), positions,
                   crystal.cell * np.array(reps)[:, None], crystal.pbc, id=crystal.id + "x", source=crystal.source)


def assert_invariant_and_intensive(model, crystals, key: str, tol: float = 1e-10) -> None:
    """The structure-level output `key` of `model` (float64, eval mode) is unchanged by a rotation
    with a permutation of the atoms and by a 2x2x2 supercell, for every crystal."""
    with torch.no_grad():
        for c in crystals:
            p = model(batch_of([c], model.config.cutoff))[key]
            for moved in (rotated_permuted(c), supercell(c)):
                torch.testing.assert_close(model(batch_of([moved], model.config.cutoff))[key], p, rtol=tol, atol=tol)
