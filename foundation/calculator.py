"""`FoundationCalculator`: an ASE calculator for checkpoints with an energy head.

    from foundation.calculator import FoundationCalculator
    atoms.calc = FoundationCalculator("runs/sample", energy_task="lips_energy")
    atoms.get_potential_energy()    # eV, the whole cell
    atoms.get_forces()              # [n_atoms, 3] eV/Å, -dE/dx of that energy
    ase.optimize.BFGS(atoms).run(fmax=0.05)

The energy is the chosen energy task's prediction for the cell (an eV/atom task times n_atoms);
forces are always minus its position gradient, so they are conservative and consistent with the
energy (for a task trained with forces, exactly the model's force head). Stress is not provided.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from ase.calculators.calculator import Calculator, all_changes

from .api import Predictor, model_input
from .data.crystal import Crystal
from .data.graph import collate, neighbor_graph
from .model import FoundationModel, forces_from_energy, load_export

__all__ = ["FoundationCalculator", "energy_task_of"]


def energy_task_of(model: FoundationModel, energy_task: str | None = None) -> str:
    """The energy task a calculator uses: `energy_task` if given (it must be an energy task),
    else the model's only energy task that has a force task (or its only energy task).
    Raises ValueError saying what the checkpoint has when there is none or the choice is ambiguous."""
    energies = [name for name, spec in model.tasks.items() if spec.is_energy]
    if energy_task is not None:
        if energy_task not in energies:
            raise ValueError(f"energy_task={energy_task!r} is not an energy task of this checkpoint (a scalar "
                             f"structure-level regression in eV, extensive, or eV/atom); energy tasks: {energies}")
        return energy_task
    if not energies:
        tasks = {name: spec.unit or spec.kind for name, spec in model.tasks.items()}
        raise ValueError(f"this checkpoint has no energy task (eV per cell or eV/atom), so it cannot be an ASE "
                         f"calculator; its tasks: {tasks}. Fine-tune one on energies first "
                         f"(foundation finetune --target energy).")
    with_forces = [e for e in energies if any(s.forces_of == e for s in model.tasks.values())]
    candidates = with_forces or energies
    if len(candidates) > 1:
        raise ValueError(f"this checkpoint has several energy tasks {candidates}: choose one with "
                         f"FoundationCalculator(..., energy_task=NAME)")
    return candidates[0]


class FoundationCalculator(Calculator):
    """ASE calculator: energy and free_energy (eV, the cell) and forces ([n_atoms, 3] eV/Å).

    Args:
        model: an export path (any form `foundation.load_model` takes), a `FoundationModel` or a
            `Predictor`.
        energy_task: which energy task to use (see `energy_task_of`); None picks the only one.
        device: torch device to run on.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model: str | Path | FoundationModel | Predictor, energy_task: str | None = None,
                 device: str | torch.device = "cpu", **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, Predictor):
            model = model.model
        elif not isinstance(model, FoundationModel):
            model = load_export(model, map_location=device)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.energy_task = energy_task_of(self.model, energy_task)
        self.dtype = next(self.model.parameters()).dtype

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        crystal = model_input(Crystal.from_ase(self.atoms, id="atoms"), self.model.config.max_atomic_number)
        if isinstance(crystal, str):
            raise ValueError(f"{self.atoms.get_chemical_formula()}: cannot be computed: {crystal}")
        batch = collate([neighbor_graph(crystal, self.model.config.cutoff)], dtype=self.dtype).to(self.device)
        spec = self.model.tasks[self.energy_task]
        with torch.enable_grad():
            positions = batch.positions.detach().requires_grad_(True)  # [n_atoms, 3] Å
            batch = dataclasses.replace(batch, positions=positions)
            encoded = self.model.encoder(batch, positions)
            energy = self.model.heads[self.energy_task](encoded, batch)  # [1] eV or eV/atom
            if not spec.extensive:
                energy = energy * crystal.n_atoms  # [1] eV
            forces = forces_from_energy(energy, positions, create_graph=False)  # [n_atoms, 3] eV/Å
        value = float(energy.detach().double().sum())
        self.results = {"energy": value, "free_energy": value,
                        "forces": forces.detach().cpu().double().numpy()}
