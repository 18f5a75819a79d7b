"""FoundationCalculator: rotation/translation invariant energy, forces = -dE/dx (finite
differences, float64), ASE optimisation, and the choice or refusal of the energy task."""

import numpy as np
import pytest
import torch
from api_fixtures import perovskites, random_rotation
from ase.optimize import BFGS

from foundation.api import Predictor, load_model
from foundation.calculator import FoundationCalculator
from foundation.model import TaskSpec, load_export


@pytest.fixture(scope="module")
def calculator(export64):
    return FoundationCalculator(export64)


def _rattled(seed=0, amplitude=0.08):
    atoms = perovskites(1)[0].to_ase()
    atoms.positions += np.random.default_rng(seed).normal(scale=amplitude, size=atoms.positions.shape)
    return atoms


def test_energy_invariant_forces_equivariant(calculator):
    atoms = _rattled()
    atoms.calc = calculator
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert calculator.energy_task == "energy" and forces.shape == (5, 3) and np.abs(forces).max() > 1e-4
    rotation = random_rotation(7)
    moved = atoms.copy()
    moved.set_cell(atoms.cell[:] @ rotation.T)
    moved.positions = atoms.positions @ rotation.T + np.array([0.7, -2.1, 3.3])
    moved.calc = calculator
    assert moved.get_potential_energy() == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(moved.get_forces(), forces @ rotation.T, atol=1e-10)
    assert atoms.get_potential_energy(force_consistent=True) == energy


def test_forces_are_minus_energy_gradient(calculator):
    atoms = _rattled(1)
    atoms.calc = calculator
    forces = atoms.get_forces()
    step = 1e-5
    numeric = np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                displaced = atoms.copy()
                displaced.positions[i, k] += sign * step
                displaced.calc = calculator
                energies.append(displaced.get_potential_energy())
            numeric[i, k] = -(energies[0] - energies[1]) / (2 * step)
    np.testing.assert_allclose(forces, numeric, atol=1e-7)


def test_matches_predictor(export64, calculator):  # the model's own force head: same forces
    atoms = _rattled(2)
    atoms.calc = calculator
    out = load_model(export64).predict([atoms])
    assert atoms.get_potential_energy() == pytest.approx(float(out["energy"][0]), abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), out["forces"][0], atol=1e-10)


def test_relaxes_with_ase_optimizer(calculator):
    atoms = _rattled(3, amplitude=0.15)
    atoms.calc = calculator
    start = atoms.get_potential_energy()
    fmax_start = np.linalg.norm(atoms.get_forces(), axis=1).max()
    BFGS(atoms, logfile=None).run(fmax=1e-3, steps=5)
    assert atoms.get_potential_energy() < start
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < fmax_start


def test_energy_task_choice_and_refusal(export64):
    model = load_export(export64)
    model.add_task(TaskSpec.for_target("energy_per_atom", name="b_energy"))  # eV/atom, no force task
    assert FoundationCalculator(model).energy_task == "energy"  # the one with a force task
    with pytest.raises(ValueError, match="'band_gap' is not an energy task"):
        FoundationCalculator(model, energy_task="band_gap")
    per_atom = FoundationCalculator(model, energy_task="b_energy")
    atoms = _rattled(4)
    atoms.calc = per_atom
    expected = Predictor(model, torch.device("cpu")).predict([atoms])["b_energy"][0] * len(atoms)  # eV per cell
    assert atoms.get_potential_energy() == pytest.approx(float(expected), abs=1e-10)

    model.remove_task("forces")
    several = r"several energy tasks \['energy', 'formation_energy', 'b_energy'\].*energy_task="
    with pytest.raises(ValueError, match=several):
        FoundationCalculator(model)
    for name in ("energy", "formation_energy", "b_energy"):
        model.remove_task(name)
    with pytest.raises(ValueError, match="no energy task .* its tasks: .*band_gap"):
        FoundationCalculator(model)
