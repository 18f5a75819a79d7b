"""Wrap a module in a DeepSpeed engine built from the typed config (the only place `initialize` runs).

DeepSpeed is imported when an engine is built, not with this module: importing it takes about
3 s and probes the accelerators, and a run's config errors must answer before that.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..model.heads import TaskHead
from .config import DistributedConfig, OptimizerConfig
from .deepspeed_config import deepspeed_config
from .distributed import DistInfo

__all__ = ["param_groups", "build_engine", "compute_dtype", "parameter_dtype", "gathered"]


def param_groups(module: nn.Module, weight_decay: float,
                 lr_scale: Callable[[str], float] | None = None) -> list[dict[str, Any]]:
    """AdamW groups: matrices decay; biases, norm scales and the loss's log-variances do not.
    Frozen parameters (requires_grad False) are left out.

    `lr_scale(name)`: a factor on the scheduled learning rate per parameter (layer-wise decay in
    fine-tuning); parameters are then grouped by (decay, factor) and each group carries its
    factor as "lr_scale", which the loop multiplies into the lr at every step."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decays = not (p.ndim <= 1 or name.startswith("loss."))
        scale = 1.0 if lr_scale is None else float(lr_scale(name))
        groups.setdefault((decays, scale), []).append(p)
    out = []
    for (decays, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1])):
        group = {"params": params, "weight_decay": weight_decay if decays else 0.0}
        if lr_scale is not None:
            group["lr_scale"] = scale
        out.append(group)
    return out


def build_engine(
    module: nn.Module,
    dist: DistributedConfig,
    optimizer: OptimizerConfig,
    info: DistInfo,
    load_universal: bool = False,
    lr_scale: Callable[[str], float] | None = None,
):
    """(engine, ds_config). The module is moved to `info.device`; DeepSpeed casts it for bf16/fp16.
    `lr_scale`: per-parameter learning-rate factors (see `param_groups`)."""
    import deepspeed  # see the module docstring

    ds_config = deepspeed_config(dist, optimizer, load_universal=load_universal)
    if not optimizer.torch_adam and info.device.type == "cuda":
        check_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST", ""))
    module = module.to(info.device)
    if dist.precision != "fp32":
        cast_constants(module, torch.bfloat16 if dist.precision == "bf16" else torch.float16)
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=param_groups(module, optimizer.weight_decay, lr_scale), config=ds_config
    )
    return engine, ds_config


def cast_constants(module: nn.Module, dtype: torch.dtype) -> None:
    """Floating buffers outside the task heads to `dtype`. DeepSpeed (0.19.8) casts parameters to
    bf16/fp16 but leaves buffers alone, and e3nn keeps its constants (Wigner 3j, normalisations) as
    buffers: left float32 they meet bf16 features and its products refuse the mix. The heads'
    buffers (normalisation, element references) stay float32, so outputs come out in float32."""
    heads = {id(b) for m in module.modules() if isinstance(m, TaskHead) for b in m.buffers()}
    for b in module.buffers():
        if b.is_floating_point() and id(b) not in heads:
            b.data = b.data.to(dtype)


_ARCH = re.compile(r"^\d+\.\d+(\+PTX)?$")


def check_arch_list(value: str) -> None:
    """DeepSpeed's JIT build of its fused Adam (0.19.8) parses TORCH_CUDA_ARCH_LIST entries as plain
    `major.minor[+PTX]` and fails with a bare ValueError on arch-specific ones such as `9.0a` (set by
    some CUDA images); say which variable and what to set instead."""
    bad = [cc for cc in value.replace(" ", ";").split(";") if cc.strip() and not _ARCH.match(cc.strip())]
    if bad:
        raise ValueError(f"TORCH_CUDA_ARCH_LIST={value!r}: DeepSpeed's fused Adam cannot build for {bad}; "
                         "set plain capabilities (for example TORCH_CUDA_ARCH_LIST=9.0 on H100/H200) "
                         "or optimizer.torch_adam=true")


def compute_dtype(engine) -> torch.dtype:
    """The dtype batches must be cast to: the engine's parameter dtype (bf16/fp16/fp32)."""
    return parameter_dtype(engine.module)


def parameter_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of `module`'s floating parameters (float32 if it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def gathered(engine, enabled: bool):
    """Collective when `enabled`: a context in which ZeRO-3's partitioned parameters of the
    engine's module are whole on every rank (to copy or export them); a no-op otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    import deepspeed  # see the module docstring

    return deepspeed.zero.GatheredParameters(list(engine.module.parameters()))
