"""Using a checkpoint: predictions (`load_model`, `predict`) and frozen encoder features
(`load_encoder`, `embed`); the `foundation predict` / `foundation embed` commands are in `cli/`.

    predictor = foundation.load_model("runs/sample")     # run dir, export dir, or a file inside it
    predictor.units                                      # {"band_gap": "eV", "is_metal": "probability", ...}
    out = predictor.predict([structure, atoms, crystal])
    # {"band_gap": [3] eV, "is_metal": [3] probability, "lips_forces": object [3] of [n_i, 3] eV/Å, ...}
    features = foundation.load_encoder("runs/sample").embed(structures)          # [n, F]
    per_atom = foundation.load_encoder("runs/sample").embed(structures, "atom")  # [Σ n_i, F]

Inputs are pymatgen `Structure`s, ASE `Atoms` or `Crystal`s, in any mix; every one is checked with
`foundation.data.validate` (atoms present, finite coordinates and cell, known elements, no two atoms
closer than 0.5 Å) and a bad one raises naming its position and id. Results keep the input order
and do not depend on `batch_size`: structures are disjoint graphs in a batch.

Encoder features are the encoder's per-atom invariants (`node_invariants`, the 0e channels after
the last block); the structure-level feature is their mean over the structure's atoms (the
encoder's `graph_features`), so it is invariant to rotation, translation, atom order and the
choice of periodic cell (a supercell gives the same features).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.crystal import Crystal
from .data.graph import Batch, collate, neighbor_graph
from .data.records import Reject
from .data.validate import validate
from .model import FoundationModel, TaskSpec, load_export
from .nn.pooling import mean_pool

from tqdm.auto import tqdm

__all__ = ["Predictor", "Embedder", "load_model", "load_encoder", "predict", "embed", "as_crystals", "model_input"]


# -- inputs ---------------------------------------------------------------------------------------
def as_crystals(items: Iterable[Any]) -> list[Crystal]:
    """Each item (pymatgen Structure/Molecule, ASE Atoms or Crystal) as a `Crystal`; items without an
    id of their own get their position, "#3". Raises TypeError naming the position of anything else."""
    crystals = []
    for index, item in enumerate(items):
        try:
            crystals.append(Crystal.from_any(item, id=f"#{index}"))
        except TypeError as exc:
            raise TypeError(f"structure {index}: {exc}") from None
    return crystals


def model_input(crystal: Crystal, max_atomic_number: int) -> Crystal | str:
    """The crystal as the model takes it (labels dropped; a left-handed periodic cell replaced by
    the same lattice with every vector negated, positions unchanged), or why it cannot be used."""
    crystal = crystal.replace(targets={})
    if crystal.pbc.all() and np.isfinite(crystal.cell).all() and np.linalg.det(crystal.cell) < 0:
        crystal = crystal.replace(cell=-crystal.cell)
    checked = validate(crystal, allowed_elements=range(1, max_atomic_number + 1))
    return checked.reason if isinstance(checked, Reject) else checked


def _ready(crystals: list[Crystal], max_atomic_number: int) -> list[Crystal]:
    """`model_input` of each crystal; raises ValueError naming the first one that fails."""
    ready = []
    for index, crystal in enumerate(crystals):
        checked = model_input(crystal, max_atomic_number)
        if isinstance(checked, str):
            name = "" if crystal.id == f"#{index}" else f" (id {crystal.id!r})"
            raise ValueError(f"structure {index}{name} cannot be processed: {checked}")
        ready.append(checked)
    return ready


def _batches(crystals: list[Crystal], cutoff: float, dtype: torch.dtype, device: torch.device,
             batch_size: int) -> Iterator[Batch]:
    """Consecutive batches of `batch_size` structures, in input order, on `device`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(crystals), batch_size):
        graphs = [neighbor_graph(c, cutoff) for c in crystals[start:start + batch_size]]
        yield collate(graphs, dtype=dtype).to(device)


def _np_dtype(dtype: torch.dtype) -> type:
    """The numpy dtype of `_numpy`'s results for a model in `dtype`."""
    return np.float64 if dtype == torch.float64 else np.float32


def _numpy(value: torch.Tensor) -> np.ndarray:
    value = value.detach().cpu()
    return (value.float() if value.dtype in (torch.bfloat16, torch.float16) else value).numpy()


def _object_array(parts: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(parts), dtype=object)
    for i, part in enumerate(parts):
        out[i] = part
    return out


def progress_bar(total: int | None, enabled: bool | None, desc: str):
    """A tqdm bar of structures (`enabled` None: shown on a terminal only)."""
    return tqdm(total=total, disable=not enabled if enabled is not None else None, unit="structure",
                desc=desc, dynamic_ncols=True)


# -- prediction -----------------------------------------------------------------------------------
@dataclass
class Predictor:
    """A loaded checkpoint in eval mode. `predict` returns every task, in physical units."""

    model: FoundationModel
    device: torch.device

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return dict(self.model.tasks)

    @property
    def units(self) -> dict[str, str]:
        """{task: unit of its predictions}; classification tasks give a "probability"."""
        return {name: "probability" if spec.kind == "classification" else spec.unit
                for name, spec in self.model.tasks.items()}

    def predict(self, structures: Iterable[Any], batch_size: int = 64, progress: bool = False,
                tasks: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """{task: predictions} for `structures`, in input order.

        Structure-level tasks give `[n]` (dim 1) or `[n, dim]`; atom-level tasks (forces, eV/Å)
        an object array of n arrays `[n_i, 3]` (`[n_i]` / `[n_i, dim]` for other atom tasks);
        classification tasks the probability of class 1 in [0, 1]. Arrays are in the model's dtype.
        `tasks` limits the output to those tasks (all by default); without force tasks no
        gradient is computed, which makes structure-level predictions several times faster.
        """
        crystals = _ready(as_crystals(structures), self.model.config.max_atomic_number)
        return self.run(crystals, batch_size, progress, self.selected(tasks))

    def selected(self, tasks: Iterable[str] | None) -> list[str]:
        names = list(self.model.tasks) if tasks is None else list(tasks)
        unknown = [name for name in names if name not in self.model.tasks]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; this checkpoint has {list(self.model.tasks)}")
        return names

    def _forward(self, batch: Batch, names: list[str]) -> dict[str, torch.Tensor]:
        """Predictions of `names`; the whole model (forces need gradients) only when one is a force task."""
        if any(self.model.tasks[name].forces_of is not None for name in names):
            return self.model(batch)
        encoded = self.model.encoder(batch)
        return {name: self.model.heads[name](encoded, batch) for name in names}

    def run(self, crystals: list[Crystal], batch_size: int, progress: bool | None,
             names: list[str]) -> dict[str, np.ndarray]:
        """`predict` of tasks `names` on crystals already through `model_input` (the CLI's path)."""
        self.model.eval()
        dtype = next(self.model.parameters()).dtype
        specs = {name: self.model.tasks[name] for name in names}
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        with torch.no_grad(), progress_bar(len(crystals), progress, "predict") as bar:
            for batch in _batches(crystals, self.model.config.cutoff, dtype, self.device, batch_size):
                preds = self._forward(batch, names)
                splits = np.cumsum(_numpy(batch.n_atoms))[:-1]
                for name, spec in specs.items():
                    value = torch.sigmoid(preds[name]) if spec.kind == "classification" else preds[name]
                    value = _numpy(value)
                    parts[name].extend(np.split(value, splits) if spec.level == "atom" else [value])
                bar.update(batch.n_graphs)
        return {name: self._stack(parts[name], spec, dtype) for name, spec in specs.items()}

    @staticmethod
    def _stack(parts: list[np.ndarray], spec: TaskSpec, dtype: torch.dtype) -> np.ndarray:
        if spec.level == "atom":
            return _object_array(parts)
        if parts:
            return np.concatenate(parts)
        return np.zeros((0,) if spec.dim == 1 else (0, spec.dim), dtype=_np_dtype(dtype))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """A `Predictor` for the export at `path`: an export directory, a run directory holding
    `export/`, or the `config.json` / `model.safetensors` inside an export. Anything else raises
    `ExportError` naming it; pickled checkpoints (`.pt`, `.ckpt`) are refused unopened."""
    device = torch.device(device)
    return Predictor(load_export(path, map_location=device), device)


# -- features -------------------------------------------------------------------------------------
LEVELS = ("structure", "blocks", "readout", "atom")


def _readouts(model) -> dict[str, torch.nn.Module]:
    """{task: its head's hidden layer (the first Linear and its SiLU)} for every structure-level
    head of a pretrained model: per-atom features that pretraining shaped for one property."""
    return {name: head.mlp[:2] for name, head in model.heads.items() if head.spec.level == "structure"}


@dataclass
class Embedder:
    """A checkpoint's encoder alone, in eval mode, for frozen features (and the hidden layers of
    its structure-level heads, for level="readout")."""

    encoder: torch.nn.Module  # any encoder of foundation.model (ours or a baseline)
    device: torch.device
    readouts: dict[str, torch.nn.Module] = field(default_factory=dict)  # task -> hidden layer
    pooled: frozenset[str] = frozenset()  # tasks whose head reads the mean of the features (pool="features")

    @property
    def n_features(self) -> int:
        """F: features per atom and per structure."""
        return self.encoder.n_invariants

    def width(self, level: str = "structure") -> int:
        """Features per row at `level`: F, F_all for "blocks", F_all + Σ hidden for "readout"."""
        if level == "readout":
            return self.encoder.n_block_features + sum(r[0].out_features for r in self.readouts.values())
        return self.encoder.n_block_features if level == "blocks" else self.n_features

    def embed(self, structures: Iterable[Any], level: str = "structure", batch_size: int = 64,
              progress: bool = False) -> np.ndarray:
        """Encoder features of `structures`, in input order, in the model's dtype.

        level="structure": `[n, F]`, the mean of each structure's per-atom invariants;
        level="blocks": `[n, F_all]`, the mean invariants of the embedding and of every block,
        concatenated (the equivariant encoder only; the richer frozen features);
        level="readout": `[n, F_all + Σ hidden]`, "blocks" and the mean over atoms of the hidden
        layer of every structure-level head the checkpoint holds, in head order (the hidden layer
        of the mean features for a head with pool="features"; the richest: what pretraining
        learned to predict each property from, as JMP and MACE users read the penultimate layer);
        level="atom": `[Σ n_i, F]`, every structure's atoms in input order, one after another
        (rows of structure i start at the sum of the earlier structures' atom counts).
        """
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        if level in ("blocks", "readout") and not hasattr(self.encoder, "n_block_features"):
            raise ValueError(f"level={level!r} needs the equivariant encoder; this checkpoint's is "
                             f"{type(self.encoder).__name__}")
        if level == "readout" and not self.readouts:
            raise ValueError("level='readout' needs a checkpoint with structure-level heads; this one has none")
        crystals = _ready(as_crystals(structures), self.encoder.config.max_atomic_number)
        return self.run(crystals, level, batch_size, progress)

    def _features(self, batch: Batch, level: str) -> torch.Tensor:
        encoded = self.encoder(batch)
        if level != "readout":
            key = {"structure": "graph_features", "blocks": "block_features", "atom": "node_invariants"}[level]
            return encoded[key]  # [n_graphs or n_atoms, F]
        h = encoded["node_invariants"]  # [n_atoms, F]
        mean_h = mean_pool(h, batch.batch, batch.n_graphs)  # [n_graphs, F]
        hidden = [r(mean_h) if name in self.pooled else mean_pool(r(h), batch.batch, batch.n_graphs)
                  for name, r in self.readouts.items()]  # [n_graphs, H] each, as the head computes it
        return torch.cat([encoded["block_features"], *hidden], dim=1)  # [n_graphs, width]

    def run(self, crystals: list[Crystal], level: str, batch_size: int, progress: bool | None) -> np.ndarray:
        """`embed` on crystals already through `model_input` (the CLI's path)."""
        self.encoder.eval()
        dtype = next(self.encoder.parameters()).dtype
        parts = []
        with torch.no_grad(), progress_bar(len(crystals), progress, "embed") as bar:
            for batch in _batches(crystals, self.encoder.config.cutoff, dtype, self.device, batch_size):
                parts.append(_numpy(self._features(batch, level)))  # [n_graphs or n_atoms, width]
                bar.update(batch.n_graphs)
        if not parts:
            return np.zeros((0, self.width(level)), dtype=_np_dtype(dtype))
        return np.concatenate(parts)


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Embedder:
    """An `Embedder` for the encoder of the export at `path` (the path forms of `load_model`)."""
    device = torch.device(device)
    model = load_export(path, map_location=device).eval()
    pooled = frozenset(name for name, spec in model.tasks.items() if spec.pool == "features")
    return Embedder(model.encoder, device, _readouts(model), pooled)


def predict(path: str | Path, structures: Iterable[Any], device: str | torch.device = "cpu",
            **options) -> dict[str, np.ndarray]:
    """`load_model(path, device).predict(structures, **options)` in one call."""
    return load_model(path, device).predict(structures, **options)


def embed(path: str | Path, structures: Iterable[Any], level: str = "structure", device: str | torch.device = "cpu",
          **options) -> np.ndarray:
    """`load_encoder(path, device).embed(structures, level, **options)` in one call."""
    return load_encoder(path, device).embed(structures, level, **options)
