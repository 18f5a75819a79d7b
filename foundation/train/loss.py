"""`MultiTaskLoss`: masked per-task losses on normalised errors, weighted by learned
uncertainties (Kendall, Gal and Cipolla 2018) or by fixed weights.

Per task t with a learned log-variance s_t (a parameter, starts at 0):
    regression      0.5 · exp(−s_t) · L_t + 0.5 · s_t     (Gaussian likelihood, σ_t² = exp(s_t))
    classification        exp(−s_t) · L_t + 0.5 · s_t     (Kendall et al. eq. 10, softmax with
                                                            temperature σ_t², L_t = BCE)
    mode="fixed"    TaskSpec.weight · L_t
With `max_weight` (uncertainty mode) s_t is clamped below at −log(max_weight): no task's weight
exp(−s_t) exceeds it, and s_t gets no gradient while it sits at the floor.
L_t on normalised errors e = (pred − label) / std_t (÷ n_atoms too for an extensive label, so
std_t is a per-atom scale, as in the heads), averaged over labelled records:
    structure level: elementwise loss of e averaged over components, then over labelled records;
    atom level (forces): averaged over labelled atoms of each structure first, then over
    structures with labels (JMP), so a 200-atom slab weighs as much as a 2-atom cell.
A record is labelled for t when `batch.masks[t.target]` is set and its dataset is in
`t.datasets` (any dataset if empty); with `free_atoms_only`, atoms fixed in the DFT relaxation
(`batch.fixed`, OC20) carry no force label. A task with no labels in the batch adds exactly 0 to
the loss, and its s_t and head get zero gradients; it never raises. The selection is done with
`torch.where`, without host synchronisation (a label key absent from the whole batch leaves
that task's head and s_t without a gradient at all: None, so torch optimisers skip them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..data.graph import Batch
from ..model.tasks import TaskSpec, TaskStats

__all__ = ["MultiTaskLoss"]


class MultiTaskLoss(nn.Module):
    """forward(predictions {task: tensor}, batch) -> (loss scalar, logs).

    Args:
        tasks: the model's task specs (order fixes the index of s_t in `log_vars`). A label-free
            `potential` is dropped here: it has no loss of its own, no s_t and no logs; its force
            task carries it (with the potential's statistics as its scale).
        mode: "uncertainty" (learned s_t) or "fixed" (TaskSpec.weight).
        stats: {task: TaskStats}, only std is used (per component); a force task without its
            own entry uses its energy task's std (one scale for energy per atom and forces, as
            MACE does); 1 otherwise.
        free_atoms_only: drop atoms flagged in `batch.fixed` from atom-level losses.
        max_weight: uncertainty mode: the largest weight exp(−s_t) a task may earn (None: no cap).
    logs: "{task}/loss" (L_t, only when the batch has labels), "{task}/count" (labelled
    structures), "{task}/weight" (exp(−s_t) or the fixed weight).
    """

    def __init__(
        self,
        tasks: list[TaskSpec],
        mode: str = "uncertainty",
        stats: Mapping[str, TaskStats] | None = None,
        free_atoms_only: bool = True,
        max_weight: float | None = None,
    ):
        super().__init__()
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names in {names}")
        if mode not in ("uncertainty", "fixed"):
            raise ValueError(f"mode must be 'uncertainty' or 'fixed', got {mode!r}")
        self.tasks = [t for t in tasks if t.labelled]
        self.mode = mode
        self.free_atoms_only = bool(free_atoms_only)
        if max_weight is not None and not max_weight > 0:
            raise ValueError(f"max_weight must be > 0, got {max_weight}")
        self.min_log_var = None if max_weight is None else -math.log(max_weight)
        stats = dict(stats or {})
        unknown = sorted(set(stats) - set(names))
        if unknown:
            raise ValueError(f"statistics given for unknown task(s) {unknown}")
        stds = torch.ones(len(self.tasks), max((t.dim for t in self.tasks), default=1))
        for index, spec in enumerate(self.tasks):
            entry = stats.get(spec.name)
            if entry is None and spec.forces_of is not None:
                entry = stats.get(spec.forces_of)
            if entry is not None and spec.kind == "regression":
                stds[index, :spec.dim] = torch.as_tensor(entry.std, dtype=stds.dtype).reshape(-1).expand(spec.dim)
        self.register_buffer("stds", stds)  # [n_tasks, max dim] task unit (per atom if extensive)
        if mode == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))  # [n_tasks] s_t = log σ_t²

    def std(self, name: str) -> torch.Tensor:
        """[dim] the scale of task `name`'s normalised errors (task unit, per atom if extensive)."""
        index = next(i for i, t in enumerate(self.tasks) if t.name == name)
        return self.stds[index, :self.tasks[index].dim]

    def _log_vars(self) -> torch.Tensor:
        """[n_tasks] s_t, clamped at the floor −log(max_weight) when there is one."""
        if self.min_log_var is None:
            return self.log_vars
        return self.log_vars.clamp(min=self.min_log_var)

    def weights(self) -> torch.Tensor:
        """[n_tasks] exp(−s_t) (uncertainty) or the fixed weights."""
        if self.mode == "uncertainty":
            return torch.exp(-self._log_vars().detach())
        return torch.tensor([t.weight for t in self.tasks])

    def forward(
        self, predictions: dict[str, torch.Tensor], batch: Batch
    ) -> tuple[torch.Tensor, dict[str, float]]:
        missing = [t.name for t in self.tasks if t.name not in predictions]
        if missing:
            raise KeyError(f"predictions lack task(s) {missing}; have {sorted(predictions)}")
        ref = next(iter(predictions.values()))
        total = ref.new_zeros(())
        stats = []  # per task: L_t, labelled count
        log_vars = self._log_vars() if self.mode == "uncertainty" else None
        for index, spec in enumerate(self.tasks):
            value, count = self._task_loss(spec, predictions[spec.name], batch)
            has = count > 0
            if self.mode == "uncertainty":
                s = log_vars[index].to(value.dtype)
                scale = 0.5 if spec.kind == "regression" else 1.0
                term = scale * torch.exp(-s) * value + 0.5 * s
            else:
                term = spec.weight * value
            total = total + torch.where(has, term, torch.zeros_like(term))
            stats.append(torch.stack([value.detach().to(ref.dtype), count.to(ref.dtype)]))
        # One host synchronisation for all the logs.
        values = torch.stack(stats).tolist() if stats else []
        weights = self.weights().tolist()
        logs: dict[str, float] = {}
        for spec, (value, count), weight in zip(self.tasks, values, weights):
            if count > 0:
                logs[f"{spec.name}/loss"] = value
            logs[f"{spec.name}/count"] = count
            logs[f"{spec.name}/weight"] = weight
        return total, logs

    def _record_mask(self, spec: TaskSpec, batch: Batch, device) -> torch.Tensor:
        """[n_graphs] bool: records whose dataset may carry the label."""
        if not spec.datasets:
            return torch.ones(batch.n_graphs, dtype=torch.bool, device=device)
        allowed = [spec.uses(d) for d in batch.datasets]
        if len(allowed) != batch.n_graphs:
            raise ValueError(f"task {spec.name!r} filters by dataset but the batch names "
                             f"{len(allowed)} datasets for {batch.n_graphs} records")
        return torch.tensor(allowed, dtype=torch.bool, device=device)

    def _elementwise(self, spec: TaskSpec, pred, target, std, n_atoms) -> torch.Tensor:
        """Loss per row (record or atom), averaged over components: [rows]."""
        if spec.loss == "bce":
            return F.binary_cross_entropy_with_logits(pred, target, reduction="none").mean(-1)
        err = (pred - target) / std  # [rows, dim] normalised
        if n_atoms is not None:
            err = err / n_atoms.unsqueeze(-1)
        match spec.loss:
            case "mae":
                out = err.abs()
            case "mse":
                out = err.square()
            case "huber":
                out = F.huber_loss(err, torch.zeros_like(err), reduction="none", delta=spec.huber_delta)
            case _:
                raise ValueError(f"task {spec.name!r}: unknown loss {spec.loss!r}")
        return out.mean(-1)

    def _task_loss(
        self, spec: TaskSpec, pred: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_t scalar, labelled structures as a 0-d int tensor); L_t = 0 without labels."""
        device = pred.device
        if spec.target not in batch.targets:
            return pred.new_zeros(()), torch.zeros((), dtype=torch.long, device=device)
        rows = batch.n_graphs if spec.level == "structure" else batch.positions.shape[0]
        pred = pred.reshape(rows, -1)
        target = batch.targets[spec.target].to(device=device, dtype=pred.dtype).reshape(rows, -1)
        if target.shape != pred.shape:
            raise ValueError(f"task {spec.name!r}: prediction {tuple(pred.shape)} but label "
                             f"{spec.target!r} {tuple(target.shape)}")
        std = self.std(spec.name).to(pred.dtype)
        records = self._record_mask(spec, batch, device)  # [n_graphs]
        mask = batch.masks[spec.target].to(device)
        if spec.level == "structure":
            mask = mask & records  # [n_graphs]
            n_atoms = batch.n_atoms.to(pred.dtype) if spec.extensive else None
            per_row = self._elementwise(spec, pred, _fill(target, pred, mask), std, n_atoms)
            per_row = torch.where(mask, per_row, torch.zeros_like(per_row))
            count = mask.sum()
            return per_row.sum() / count.clamp(min=1), count
        mask = mask & records.index_select(0, batch.batch)  # [n_atoms]
        if self.free_atoms_only and batch.fixed is not None:
            mask = mask & ~batch.fixed.to(device)
        per_atom = self._elementwise(spec, pred, _fill(target, pred, mask), std, None)
        per_atom = torch.where(mask, per_atom, torch.zeros_like(per_atom))  # [n_atoms]
        zeros = pred.new_zeros(batch.n_graphs)
        summed = zeros.index_add(0, batch.batch, per_atom)  # [n_graphs]
        labelled = zeros.index_add(0, batch.batch, mask.to(pred.dtype))  # [n_graphs] labelled atoms
        has = labelled > 0
        per_structure = torch.where(has, summed / labelled.clamp(min=1), zeros)
        count = has.sum()
        return per_structure.sum() / count.clamp(min=1), count


def _fill(target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels where `mask`, the (detached) prediction elsewhere: an unlabelled row has zero error
    even if its stored placeholder is not finite."""
    return torch.where(mask.unsqueeze(-1), target, pred.detach())
