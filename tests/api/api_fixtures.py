"""Shared helpers for the checkpoint API tests: tiny random exports and real perovskites."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from foundation.config import from_dict, load_yaml
from foundation.data.crystal import Crystal
from foundation.data.readers import read
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats, save_export

ROOT = Path(__file__).resolve().parents[2]
PEROVSKITES = ROOT.parent / "shared" / "data" / "perovskites" / "perov5_val.csv"
TINY = from_dict(ModelConfig, load_yaml(ROOT / "configs" / "model" / "tiny.yaml"))
TASKS = [
    TaskSpec.for_target("energy"),
    TaskSpec.for_target("forces", forces_of="energy"),
    TaskSpec.for_target("formation_energy"),  # the perovskites' heat_all label (eV per cell)
    TaskSpec.for_target("band_gap"),
    TaskSpec.for_target("is_metal"),
]


def make_export(directory: Path, dtype: torch.dtype = torch.float64, tasks=TASKS, seed: int = 0) -> Path:
    """A randomly initialised tiny model with `tasks`, exported to `directory`."""
    torch.manual_seed(seed)
    energy = {"energy": TaskStats((-5.0,), (1.0,), {8: -4.9, 38: -1.7})} if any(t.name == "energy" for t in tasks) else {}
    model = FoundationModel(TINY, list(tasks), stats=energy, dtype=dtype)
    return save_export(model, directory)


def perovskites(n: int) -> list[Crystal]:
    """The first `n` perovskites of the shared sample, with their labels."""
    return [c for c in itertools.islice(read(PEROVSKITES), n) if isinstance(c, Crystal)]


def random_rotation(seed: int) -> np.ndarray:
    """A proper rotation matrix [3, 3] (det +1)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def rotated(crystal: Crystal, rotation: np.ndarray) -> Crystal:
    """Positions and cell rows rotated together (row vectors: x -> x R^T)."""
    return crystal.replace(positions=crystal.positions @ rotation.T, cell=crystal.cell @ rotation.T)


def translated(crystal: Crystal, shift) -> Crystal:
    return crystal.replace(positions=crystal.positions + np.asarray(shift, dtype=float))


def supercell(crystal: Crystal, reps=(2, 2, 2)) -> Crystal:
    """The crystal repeated reps times along its lattice vectors."""
    shifts = np.array(list(itertools.product(*(range(r) for r in reps))))
    positions = np.concatenate([crystal.positions + s @ crystal.cell for s in shifts])
    return crystal.replace(numbers=np.tile(crystal.numbers, len(shifts)), positions=positions,
                           cell=crystal.cell * np.array(reps)[:, None], targets={})
