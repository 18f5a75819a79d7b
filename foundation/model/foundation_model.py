"""`FoundationModel`: one `Encoder` shared by every task, one head per task.

    model = FoundationModel(config, [TaskSpec.for_target("energy", name="oc20_energy",
                                                          datasets=("oc20",)),
                                     TaskSpec.for_target("forces", name="oc20_forces",
                                                          forces_of="oc20_energy",
                                                          datasets=("oc20",))],
                            stats={"oc20_energy": TaskStats(mean=(m,), std=(s,),
                                                            element_refs={1: -3.4, 8: -7.2})})
    preds = model(batch)        # {"oc20_energy": [n_graphs] eV, "oc20_forces": [n_atoms, 3] eV/Å}

Every task is predicted for every record: which records carry labels is the loss's business.
Head swaps for fine-tuning are explicit: `add_task` refuses a name already present,
`remove_task` refuses an unknown name or an energy task that a force task still needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from ..data.graph import Batch
from .config import ModelConfig
from .cgcnn import CGCNNEncoder
from .composition import CompositionEncoder
from .encoder import Encoder
from .heads import TaskHead, forces_from_energy
from .schnet import SchNetEncoder
from .tasks import TaskSpec, TaskStats

__all__ = ["FoundationModel", "build_encoder"]


def build_encoder(config: ModelConfig, dtype: torch.dtype | None = None) -> nn.Module:
    """The encoder `config.encoder` names. Every one returns {"node_invariants": [n_atoms, F],
    "graph_features": [n_graphs, F], ...} with F = `n_invariants`, takes (batch, positions=None)
    and names its layers `embedding` and `blocks.k` (freezing and layer-wise lr read them)."""
    match config.encoder:
        case "equivariant":
            return Encoder(config, dtype)
        case "cgcnn":
            return CGCNNEncoder(config, dtype)
        case "schnet":
            return SchNetEncoder(config, dtype)
        case "composition":
            return CompositionEncoder(config, dtype)
    raise ValueError(f"unknown encoder {config.encoder!r} (equivariant, cgcnn, schnet, composition)")


class FoundationModel(nn.Module):
    """Shared encoder + task heads. forward(batch) -> {task name: prediction, physical units}.

    Args:
        config: architecture.
        tasks: task specs, names unique; a force task's `forces_of` must name an energy task
            (`TaskSpec.is_energy`) of the list.
        stats: {task: TaskStats} normalisation and per-element references of regression tasks
            (per-atom contribution statistics, see heads.py); a task without an entry gets μ = 0,
            σ = 1 and no references.
        dtype: parameter dtype to build in (torch's default if None; float64 for exact tests).
    """

    # Training opt-in (set by foundation.train): predict each force task only on records of its
    # own `datasets`, all force tasks in ONE backward pass through the encoder (the gradient of
    # Σ_k E_k summed over task k's records; structures are disjoint graphs, so every atom gets its
    # own dataset's forces). Other records get zero forces, which the loss and metrics ignore.
    # Needs every force task to name datasets, no dataset shared by two; else the per-task path.
    forces_on_own_datasets: bool = False

    def __init__(
        self,
        config: ModelConfig,
        tasks: list[TaskSpec],
        stats: Mapping[str, TaskStats] | None = None,
        *,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config, dtype)
        self.heads = nn.ModuleDict()
        self.tasks: dict[str, TaskSpec] = {}
        stats = dict(stats or {})
        unknown = sorted(set(stats) - {t.name for t in tasks})
        if unknown:
            raise ValueError(f"statistics for unknown task(s): {unknown}")
        # Energy tasks first, so a force task may be listed before the energy it differentiates.
        for spec in sorted(tasks, key=lambda t: t.forces_of is not None):
            self.add_task(spec, stats.get(spec.name))
        self.tasks = {t.name: self.tasks[t.name] for t in tasks}  # keep the caller's order

    # -- head management -------------------------------------------------------------------------
    def add_task(self, spec: TaskSpec, stats: TaskStats | None = None) -> None:
        """Add a task (and its head, on the encoder's device and dtype). Raises on a name clash."""
        if spec.name in self.tasks:
            raise ValueError(f"task {spec.name!r} already exists; remove_task it first to replace it")
        if spec.forces_of is not None:
            energy = self.tasks.get(spec.forces_of)
            if energy is None or not energy.is_energy:
                raise ValueError(
                    f"force task {spec.name!r}: forces_of={spec.forces_of!r} must name an energy task "
                    f"(scalar, eV extensive or eV/atom intensive) of this model; have {list(self.tasks)}"
                )
            if stats is not None:
                raise ValueError(f"force task {spec.name!r} takes its scale from {spec.forces_of!r}")
        else:
            head = TaskHead(spec, self.encoder.n_invariants, self.config.head_hidden, self.config.n_species,
                            dropout=self.config.dropout)
            ref = next(self.encoder.parameters())
            head = head.to(device=ref.device, dtype=ref.dtype)
            if stats is not None:
                head.set_stats(stats)
            self.heads[spec.name] = head
        self.tasks[spec.name] = spec

    def task_stats(self) -> dict[str, TaskStats]:
        """{task: TaskStats} of the regression heads, as the model holds them (its heads' buffers)."""
        return {name: head.stats() for name, head in self.heads.items() if head.spec.kind == "regression"}

    def remove_task(self, name: str) -> TaskSpec:
        """Remove a task and its head; returns its spec."""
        if name not in self.tasks:
            raise KeyError(f"no task {name!r}; tasks are {list(self.tasks)}")
        users = [t.name for t in self.tasks.values() if t.forces_of == name]
        if users:
            raise ValueError(f"task {name!r} is the energy of force task(s) {users}: remove those first")
        if name in self.heads:
            del self.heads[name]
        return self.tasks.pop(name)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        force_tasks = [t for t in self.tasks.values() if t.forces_of is not None]
        if not force_tasks:
            encoded = self.encoder(batch)
            return {name: head(encoded, batch) for name, head in self.heads.items()}
        grad_was_enabled = torch.is_grad_enabled()
        # Forces need the graph from positions to energies even under no_grad (evaluation).
        with torch.enable_grad():
            positions = batch.positions
            if not positions.requires_grad:
                positions = positions.detach().requires_grad_(True)
            batch = dataclasses.replace(batch, positions=positions)
            encoded = self.encoder(batch, positions)
            preds = {name: head(encoded, batch) for name, head in self.heads.items()}
            create_graph = self.training and grad_was_enabled
            if self.forces_on_own_datasets and _disjoint_datasets(force_tasks, batch):
                cell = {t.forces_of: _cell_energy(preds[t.forces_of], self.tasks[t.forces_of], batch)
                        for t in force_tasks}
                preds.update(_own_dataset_forces(cell, force_tasks, batch, positions, create_graph))
            else:
                for spec in force_tasks:
                    energy = _cell_energy(preds[spec.forces_of], self.tasks[spec.forces_of], batch)
                    preds[spec.name] = forces_from_energy(energy, positions, create_graph)
        if not grad_was_enabled:
            preds = {name: value.detach() for name, value in preds.items()}
        return {name: preds[name] for name in self.tasks}

    def extra_repr(self) -> str:
        return "tasks=" + ", ".join(f"{t.name}({t.level}, {t.unit or '-'})" for t in self.tasks.values())


def _cell_energy(energy: torch.Tensor, spec: TaskSpec, batch: Batch) -> torch.Tensor:
    """[n_graphs] eV of the whole cell: an eV/atom energy task times its atom count, so that
    F = -dE_cell/dx whichever way the energy is labelled."""
    if spec.extensive:
        return energy
    return energy * batch.n_atoms.to(energy.dtype)


def _disjoint_datasets(force_tasks: list[TaskSpec], batch: Batch) -> bool:
    """Every force task names datasets, none shared, and the batch names each record's dataset."""
    seen: set[str] = set()
    for spec in force_tasks:
        if not spec.datasets or seen & set(spec.datasets):
            return False
        seen |= set(spec.datasets)
    return len(batch.datasets) == batch.n_graphs


def _own_dataset_forces(preds: dict[str, torch.Tensor], force_tasks: list[TaskSpec], batch: Batch,
                        positions: torch.Tensor, create_graph: bool) -> dict[str, torch.Tensor]:
    """{force task: [n_atoms, 3] eV/Å}, each nonzero only on atoms of its datasets' records;
    `preds` holds each energy task's cell energy [n_graphs] eV."""
    total = positions.new_zeros(1)
    atom_masks = {}
    for spec in force_tasks:
        records = torch.tensor([d in spec.datasets for d in batch.datasets], dtype=torch.bool,
                               device=positions.device)  # [n_graphs]
        energy = preds[spec.forces_of]  # [n_graphs] eV per cell, as the per-task path differentiates it
        total = total + torch.where(records, energy, torch.zeros_like(energy)).sum()
        atom_masks[spec.name] = records.index_select(0, batch.batch).unsqueeze(-1)  # [n_atoms, 1]
    forces = forces_from_energy(total, positions, create_graph)  # [n_atoms, 3]
    return {name: torch.where(mask, forces, torch.zeros_like(forces)) for name, mask in atom_masks.items()}
