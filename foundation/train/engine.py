"""Wrap a module in a DeepSpeed engine built from the typed config (the only place `initialize` runs)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import DistributedConfig, OptimizerConfig
from .deepspeed_config import deepspeed_config
from .distributed import DistInfo

__all__ = ["param_groups", "build_engine", "compute_dtype"]


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: matrices decay; biases, norm scales and the loss's log-variances do not."""
    decay, keep = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.startswith("loss."):
            keep.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_engine(
    module: nn.Module,
    dist: DistributedConfig,
    optimizer: OptimizerConfig,
    info: DistInfo,
    load_universal: bool = False,
):
    """(engine, ds_config). The module is moved to `info.device`; DeepSpeed casts it for bf16/fp16."""
    import deepspeed

    ds_config = deepspeed_config(dist, optimizer, load_universal=load_universal)
    module = module.to(info.device)
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=param_groups(module, optimizer.weight_decay), config=ds_config
    )
    return engine, ds_config


def compute_dtype(engine) -> torch.dtype:
    """The dtype batches must be cast to: the engine's parameter dtype (bf16/fp16/fp32)."""
    for p in engine.module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
