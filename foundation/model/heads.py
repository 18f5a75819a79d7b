"""Task heads: an MLP on the encoder's per-atom invariants, pooled per structure when needed.

For a regression task with normalisation (mean μ, std σ) and element references ref[Z]
(eV for extensive energies, eV/atom for intensive ones), every atom contributes

    c_i = σ · MLP(h_i) + μ + ref[Z_i]                    (physical units)

and a structure-level prediction is Σ_i c_i (extensive) or mean_i c_i (intensive). So μ and σ are
per-atom statistics: of (y − Σ ref) / n_atoms for an extensive label, of y − mean ref for an
intensive one (the shard manifest provides them). An intensive task with `pool="features"` applies
the MLP to the mean of the atoms' invariants instead: σ · MLP(mean_i h_i) + μ + mean_i ref[Z_i]. An energy task (`TaskSpec.is_energy`) also gets
the encoder's Ewald energy (per cell, or divided by n_atoms for eV/atom). Classification heads
return logits, averaged over atoms. Force tasks have no head: `forces_from_energy`.
All normalisation and references are buffers, saved with the model. They stay float32 or
wider when the model is cast to bf16/fp16, and a head pools in float32 there: a cell's energy of
hundreds of eV would otherwise be resolved to whole eV (bf16 keeps 8 significant bits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..data.graph import Batch
from .tasks import TaskSpec, TaskStats

__all__ = ["TaskHead", "forces_from_energy"]


_EXACT_BUFFERS = ("mean", "std", "element_ref")
_LOW_PRECISION = (torch.bfloat16, torch.float16)


class TaskHead(nn.Module):
    """One task's head.

    forward(encoded: Encoder output dict, batch) -> [n_graphs] / [n_graphs, dim] (structure level)
    or [n_atoms] / [n_atoms, dim] (atom level), in the task's unit (logits for classification).
    """

    def __init__(self, spec: TaskSpec, n_in: int, hidden: int, n_species: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout  # on the invariants the head reads, in training only
        if spec.forces_of is not None:
            raise ValueError(f"task {spec.name!r} is a force task: it has no head of its own")
        self.spec = spec
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, spec.dim))
        self.register_buffer("mean", torch.zeros(spec.dim))  # [dim] per-atom contribution offset
        self.register_buffer("std", torch.ones(spec.dim))  # [dim] per-atom contribution scale
        self.register_buffer("element_ref", torch.zeros(n_species))  # [n_species] task unit

    def _apply(self, fn, recurse=True):
        exact = {name: self._buffers[name] for name in _EXACT_BUFFERS}
        super()._apply(fn, recurse)
        for name, before in exact.items():
            after = self._buffers[name]
            if after.dtype in _LOW_PRECISION:  # keep the values, follow the device
                self._buffers[name] = before.to(device=after.device, dtype=torch.float32)
        return self

    def set_normalization(self, mean, std) -> None:
        """Set μ and σ (scalars or length-dim sequences, task unit); σ must be > 0."""
        if self.spec.kind == "classification":
            raise ValueError(f"task {self.spec.name!r}: classification logits take no normalisation")
        mean_t = torch.as_tensor(mean, dtype=self.mean.dtype).reshape(-1).expand(self.spec.dim)
        std_t = torch.as_tensor(std, dtype=self.std.dtype).reshape(-1).expand(self.spec.dim)
        if not torch.isfinite(mean_t).all() or not (std_t > 0).all():
            raise ValueError(f"task {self.spec.name!r}: normalisation needs finite mean and std > 0, "
                             f"got mean={mean}, std={std}")
        self.mean.copy_(mean_t)
        self.std.copy_(std_t)

    def set_stats(self, stats: TaskStats) -> None:
        """μ, σ and the element references of `stats` (element references only for a scalar
        structure-level regression task)."""
        self.set_normalization(stats.mean, stats.std)
        if stats.element_refs:
            self.set_element_refs(stats.element_refs)

    def stats(self) -> TaskStats:
        """The head's TaskStats (the buffers it predicts with)."""
        refs = {z: v for z, v in enumerate(self.element_ref.tolist()) if v != 0.0}
        return TaskStats(tuple(self.mean.tolist()), tuple(self.std.tolist()), refs)

    def set_element_refs(self, refs: Mapping[int, float] | Sequence[float]) -> None:
        """Per-element references {Z: value} (task unit); elements not given stay 0."""
        if self.spec.kind != "regression" or self.spec.dim != 1 or self.spec.level != "structure":
            raise ValueError(f"task {self.spec.name!r}: element references need a scalar "
                             "structure-level regression task")
        items = refs.items() if isinstance(refs, Mapping) else enumerate(refs)
        table = torch.zeros_like(self.element_ref)
        for z, value in items:
            if not 0 <= int(z) < table.shape[0]:
                raise ValueError(f"task {self.spec.name!r}: element reference for Z={z} outside "
                                 f"0..{table.shape[0] - 1}")
            table[int(z)] = float(value)
        self.element_ref.copy_(table)

    def forward(self, encoded: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        spec = self.spec
        h = encoded["node_invariants"]  # [n_atoms, F]
        if self.dropout:
            h = nn.functional.dropout(h, self.dropout, self.training)
        if spec.pool == "features":
            return self._pooled_features(h, encoded, batch)
        out = self.mlp(h)  # [n_atoms, dim] normalised
        if out.dtype in _LOW_PRECISION:
            out = out.float()
        if spec.kind == "regression":
            out = out * self.std + self.mean  # [n_atoms, dim] task unit
            if spec.dim == 1 and spec.level == "structure":
                ref = self.element_ref.index_select(0, batch.numbers).unsqueeze(-1)  # [n_atoms, 1]
                out = out + ref.to(out.dtype)
        if spec.level == "structure":
            total = out.new_zeros(batch.n_graphs, spec.dim).index_add_(0, batch.batch, out)
            n_atoms = batch.n_atoms.to(out.dtype).clamp(min=1).unsqueeze(-1)  # [n_graphs, 1]
            out = total if spec.extensive else total / n_atoms  # [n_graphs, dim]
            if spec.is_energy and "ewald_energy" in encoded:
                ewald = encoded["ewald_energy"].unsqueeze(-1).to(out.dtype)  # [n_graphs, 1] eV
                out = out + (ewald if spec.extensive else ewald / n_atoms)
        return out.squeeze(-1) if spec.dim == 1 else out

    def _pooled_features(self, h: torch.Tensor, encoded: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """pool="features": σ·MLP(mean_i h_i) + μ + mean_i ref[Z_i] (+ Ewald / n for an eV/atom
        energy): the same μ, σ and references as the per-atom form, the head on the structure."""
        spec = self.spec
        n_atoms = batch.n_atoms.to(h.dtype).clamp(min=1).unsqueeze(-1)  # [n_graphs, 1]
        pooled = h.new_zeros(batch.n_graphs, h.shape[-1]).index_add_(0, batch.batch, h) / n_atoms
        out = self.mlp(pooled)  # [n_graphs, dim] normalised (logits for classification)
        if out.dtype in _LOW_PRECISION:
            out = out.float()
        if spec.kind == "regression":
            out = out * self.std + self.mean  # [n_graphs, dim] task unit
            if spec.dim == 1:
                ref = self.element_ref.index_select(0, batch.numbers).unsqueeze(-1).to(out.dtype)  # [n_atoms, 1]
                ref_sum = out.new_zeros(batch.n_graphs, 1).index_add_(0, batch.batch, ref)
                out = out + ref_sum / n_atoms.to(out.dtype)
            if spec.is_energy and "ewald_energy" in encoded:
                out = out + encoded["ewald_energy"].unsqueeze(-1).to(out.dtype) / n_atoms.to(out.dtype)
        return out.squeeze(-1) if spec.dim == 1 else out


def forces_from_energy(energy: torch.Tensor, positions: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """F = −∂(Σ_g E_g)/∂positions: [n_graphs] eV, [n_atoms, 3] Å -> [n_atoms, 3] eV/Å.

    Structures are disconnected graphs, so the gradient of the sum gives each structure's own
    forces. `create_graph=True` in training, so the force loss can be back-propagated.
    """
    if not energy.requires_grad:  # frozen model on a structure without edges: E is constant
        return torch.zeros_like(positions)
    (grad,) = torch.autograd.grad(
        energy.sum(), positions, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    if grad is None:  # an energy that does not depend on positions (no edges): zero forces
        return torch.zeros_like(positions)
    return -grad
