"""The model a run trains and the one it exports.

`build_objective`: a fresh model (from the model config) or the checkpoint's encoder with the
run's heads, their statistics from the train split, frozen wholly or up to a depth; the loss
beside it. `export_model`: the weights to export (the best evaluated ones with early stopping,
else the evaluated ones at the end), float32 on CPU, with the kept pretrained heads put back.

Depth of an encoder parameter: 0 the species embedding and radial basis, k + 1 interaction block k
(and the Ewald block after it). `freeze first:K` freezes depths 0..K; layer-wise decay D gives
depth d the learning rate lr·D^(L + 1 − d): heads lr, last block lr·D, ..., embedding lr·D^(L+1).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping

import torch

from ..config import ConfigError
from ..model import FoundationModel
from ..model.tasks import TaskStats
from .loop import Objective
from .loss import MultiTaskLoss
from .rng import seed_everything

__all__ = ["encoder_depth", "freeze_encoder", "lr_scales", "build_objective", "check_position_noise", "check_compile",
           "export_model"]

log = logging.getLogger("foundation.train")


def encoder_depth(name: str) -> int | None:
    """Depth of a parameter named as in FoundationModel (or "model."-prefixed, as in Objective):
    0 the species embedding and radial basis, k + 1 interaction block k and the Ewald block after
    it; None outside the encoder (heads, loss)."""
    rest = name.removeprefix("model.")
    if not rest.startswith("encoder."):
        return None
    parts = rest.split(".")
    return int(parts[2]) + 1 if parts[1] in ("blocks", "ewald") else 0


def freeze_encoder(model, frozen_depth: int) -> list[str]:
    """Set requires_grad False on encoder parameters of depth <= `frozen_depth`; returns their names."""
    frozen = []
    for name, p in model.named_parameters():
        depth = encoder_depth(name)
        if depth is not None and depth <= frozen_depth:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def lr_scales(decay: float, n_layers: int) -> Callable[[str], float]:
    """name -> learning-rate factor: 1 for heads and loss, decay^(L + 1 − depth) in the encoder
    (last block `decay`, first block decay^L, embedding decay^(L+1))."""

    def scale(name: str) -> float:
        depth = encoder_depth(name)
        return 1.0 if depth is None else decay ** (n_layers + 1 - depth)

    return scale


def check_position_noise(noise: float, tasks) -> None:
    """Refuse position noise (Å) with atom-level tasks: forces and the like belong to the true
    positions, and a displaced atom's label would be wrong."""
    atom_level = [t.name for t in tasks if t.level == "atom"]
    if noise and atom_level:
        raise ConfigError(f"position_noise {noise} Å: tasks {atom_level} are atom level (their labels belong "
                          "to the true positions); use it with structure-level tasks only")


def check_compile(compile: bool, tasks) -> None:
    """Refuse `compile` with force tasks: their loss differentiates the gradient of the energy
    (create_graph), and a graph compiled by torch.compile has no double backward."""
    forces = [t.name for t in tasks if t.forces_of is not None]
    if compile and forces:
        raise ConfigError(f"compile: tasks {forces} are forces (gradients of an energy), whose training needs a "
                          "double backward that torch.compile does not provide; set compile: false")


def build_objective(res, stats: Mapping[str, TaskStats]) -> Objective:
    """Model + loss, seeded (every rank starts from the same weights)."""
    cfg = res.config
    seed_everything(cfg.seed)
    model = FoundationModel(res.model, res.tasks, stats)
    if res.pretrained is not None and not cfg.from_scratch:
        state = res.pretrained.encoder.state_dict()
        if res.model.element_features and not res.pretrained.config.element_features:
            # add_element_features: the new input keeps its zero map and pymatgen's table.
            state.update({f"element_features.{k}": v for k, v in model.encoder.element_features.state_dict().items()})
        if res.model.cell_features and not res.pretrained.config.cell_features:
            # add_cell_features: likewise, a zero map and pymatgen's volumes.
            state.update({f"cell_features.{k}": v for k, v in model.encoder.cell_features.state_dict().items()})
        try:
            model.encoder.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"checkpoint: the encoder of {res.checkpoint} does not load into the model its "
                              f"config describes: {exc}") from exc
    # Predictions only feed the loss and the per-dataset metrics, which read each force task on
    # its own datasets: one backward pass for all force tasks instead of one per task.
    model.forces_on_own_datasets = True
    for name in res.replaced:
        log.info("replacing the checkpoint's head %r with a new head", name)
    frozen = freeze_encoder(model, res.frozen_depth)
    source = (f"from {res.checkpoint}" if res.pretrained is not None and not cfg.from_scratch
              else "random (from scratch)" if res.pretrained is not None else "random (a fresh model)")
    log.info("encoder: %s, %d of %d parameter tensors frozen (%s), lr decay %g; heads: %s; kept %s", source,
             len(frozen), sum(1 for n, _ in model.named_parameters() if encoder_depth(n) is not None), cfg.freeze,
             cfg.lr_decay, [t.name for t in res.tasks], res.kept or "none")
    loss = MultiTaskLoss(res.tasks, mode=cfg.loss, stats=stats, max_weight=cfg.max_task_weight)
    check_position_noise(cfg.position_noise, res.tasks)
    check_compile(cfg.compile, res.tasks)
    return Objective(model, loss, touch_all_parameters=cfg.distributed.zero_stage in (1, 2),
                     position_noise=cfg.position_noise, compile=cfg.compile)


def export_model(res, evaluated: torch.nn.Module, best_state: dict[str, torch.Tensor] | None) -> FoundationModel:
    """The evaluated model (with `best_state` loaded when given), float32 on CPU, eval mode, with
    the kept pretrained heads put back."""
    model = copy.deepcopy(evaluated).float().cpu().eval()
    if best_state is not None:
        model.load_state_dict(best_state)
    pretrained = res.pretrained
    for name in sorted(res.kept, key=lambda n: pretrained.tasks[n].forces_of is not None):
        model.add_task(pretrained.tasks[name])
        if name in pretrained.heads:
            model.heads[name].load_state_dict(pretrained.heads[name].state_dict())
    return model
