"""`TaskSpec`: a prediction task as plain data (what to predict, from which label, with which loss).

A task names a label key of `Batch.targets` (see `foundation.data.targets`); several tasks may
read the same key from different datasets (one energy task per database, JMP style), which is
what `datasets` is for. A force task has no head of its own: its prediction is minus the
position gradient of the energy task it names in `forces_of`. That energy task may have a label of
its own (energy: one head for both, a conservative potential fitted to both), or none (target
`potential`: a force-only potential, so energy labels that a handful of frames fit cannot pull the
forces; JMP's separate force head, kept conservative).

Prediction conventions (physical units, `unit`):
    structure level, dim 1    [n_graphs]
    structure level, dim k    [n_graphs, k]
    atom level, forces_of     [n_atoms, 3]
    atom level, otherwise     [n_atoms] (dim 1) or [n_atoms, k]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..data.targets import LABEL_FREE, target_info

__all__ = ["TaskSpec", "TaskStats"]


@dataclass(frozen=True)
class TaskStats:
    """The normalisation of one regression task, computed once from its train split and used by
    its head, the loss, the metrics and early stopping alike (saved in the export's config.json).

    Every atom contributes σ·MLP(h) + μ + ref[Z] (heads.py), so μ and σ are per-atom statistics:
    of (y − Σ ref) / n for an extensive label, of y − mean ref for an intensive one; for a force
    task σ is its energy's (one scale for the energy per atom and its gradient)."""

    mean: tuple[float, ...] = (0.0,)  # [dim] task unit per atom
    std: tuple[float, ...] = (1.0,)  # [dim] task unit per atom, > 0
    element_refs: Mapping[int, float] = field(default_factory=dict)  # {Z: task unit (per atom if intensive)}

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in _as_tuple(self.mean)))
        object.__setattr__(self, "std", tuple(float(v) for v in _as_tuple(self.std)))
        object.__setattr__(self, "element_refs", {int(z): float(v) for z, v in dict(self.element_refs).items()})
        values = self.mean + self.std + tuple(self.element_refs.values())
        if not all(math.isfinite(v) for v in values) or min(self.std) <= 0:
            raise ValueError(f"task statistics need finite values and std > 0, got mean={self.mean}, std={self.std}")


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


@dataclass(frozen=True)
class TaskSpec:
    name: str  # unique within a model, e.g. "oc20_energy"
    target: str  # label key in Batch.targets, e.g. "energy"
    level: Literal["structure", "atom"] = "structure"
    kind: Literal["regression", "classification"] = "regression"
    unit: str = ""  # unit of the predictions and labels, for logs and exports
    loss: Literal["mae", "mse", "huber", "bce"] = "mae"
    datasets: tuple[str, ...] = ()  # records of these datasets carry the label; () = any dataset
    extensive: bool = False  # structure level: sum per-atom contributions (True) or average them
    forces_of: str | None = None  # force task: name of the energy task it differentiates
    weight: float = 1.0  # weight in MultiTaskLoss(mode="fixed")
    dim: int = 1  # output components per structure or atom (forces: 3)
    huber_delta: float = 1.0  # huber loss threshold, in normalised (÷ std) units
    # structure level, intensive: "contributions" averages the head's per-atom outputs (each atom
    # contributes, as an energy does); "features" averages the encoder's per-atom features and
    # applies the head to the mean (CGCNN's and ALIGNN's readout), so the head sees the whole
    # structure and can combine its atoms nonlinearly (a modulus, a band gap)
    pool: Literal["contributions", "features"] = "contributions"

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if not self.name or not self.target:
            raise ValueError(f"{where}: name and target must be non-empty")
        if self.level not in ("structure", "atom"):
            raise ValueError(f"{where}: level must be 'structure' or 'atom', got {self.level!r}")
        if self.kind not in ("regression", "classification"):
            raise ValueError(f"{where}: kind must be 'regression' or 'classification', got {self.kind!r}")
        if self.loss not in ("mae", "mse", "huber", "bce"):
            raise ValueError(f"{where}: loss must be mae, mse, huber or bce, got {self.loss!r}")
        if (self.kind == "classification") != (self.loss == "bce"):
            raise ValueError(f"{where}: loss 'bce' goes with kind 'classification' and only with it")
        if self.kind == "classification" and (self.dim != 1 or self.level != "structure"):
            raise ValueError(f"{where}: classification tasks are binary, structure level, dim 1")
        if self.dim < 1 or self.weight < 0 or self.huber_delta <= 0:
            raise ValueError(f"{where}: needs dim >= 1, weight >= 0, huber_delta > 0")
        if self.forces_of is not None:
            if self.level != "atom" or self.kind != "regression" or self.dim != 3:
                raise ValueError(f"{where}: a force task (forces_of) is atom level regression, dim 3")
            if self.forces_of == self.name:
                raise ValueError(f"{where}: forces_of names the task itself")
        if not self.labelled and not self.is_energy:
            raise ValueError(f"{where}: target {self.target!r} has no labels; it is an energy (unit eV, "
                             "extensive) that a force task's forces_of trains")
        if self.level == "atom" and self.extensive:
            raise ValueError(f"{where}: 'extensive' applies to structure-level tasks only")
        if self.pool not in ("contributions", "features"):
            raise ValueError(f"{where}: pool must be 'contributions' or 'features', got {self.pool!r}")
        if self.pool == "features" and (self.level != "structure" or self.extensive):
            raise ValueError(f"{where}: pool 'features' (the head on the mean of the atoms' features) is for "
                             "intensive structure-level tasks; a sum of per-atom contributions stays extensive")
        object.__setattr__(self, "datasets", tuple(self.datasets))

    @property
    def is_energy(self) -> bool:
        """A scalar energy of the cell (eV, extensive) or per atom (eV/atom, intensive): the
        tasks that receive the Ewald energy and can be differentiated into forces."""
        scalar = self.level == "structure" and self.kind == "regression" and self.dim == 1
        per_cell = self.unit == "eV" and self.extensive
        per_atom = self.unit == "eV/atom" and not self.extensive
        return scalar and (per_cell or per_atom)

    @property
    def labelled(self) -> bool:
        """Whether records carry this task's label (False for a force-only `potential`)."""
        return self.target not in LABEL_FREE

    def uses(self, dataset: str) -> bool:
        """Whether records of `dataset` may carry this task's label."""
        return not self.datasets or dataset in self.datasets

    @classmethod
    def for_target(cls, target: str, name: str | None = None, **overrides) -> "TaskSpec":
        """A task for a canonical label, with level, kind, unit, extensivity and loss filled
        from `foundation.data.targets.TARGETS` (forces: `forces_of` must be given)."""
        info = target_info(target)
        fields = dict(
            name=name or target, target=target, level=info.level, kind=info.kind, unit=info.unit,
            loss="bce" if info.kind == "classification" else "mae", extensive=info.extensive,
            dim=3 if info.level == "atom" else 1,
        )
        fields.update(overrides)
        if target == "forces" and fields.get("forces_of") is None:
            raise ValueError("target 'forces' needs forces_of=<name of its energy task>")
        return cls(**fields)
