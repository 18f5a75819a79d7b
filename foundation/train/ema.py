"""Exponential moving average of model weights, kept as a plain module (never wrapped by DeepSpeed).

The EMA copy is what evaluation and the export use. It lives in float32 (float64 if the model is
float64) whatever the training precision, so bf16/fp16 training does not round the average.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """`shadow = decay_t * shadow + (1 - decay_t) * param` after each optimiser step.

    decay_t = min(decay, (1 + n) / (10 + n)) with n the number of updates so far, so the
    average is not dominated by the random initial weights early in a short run. For its first
    `start` optimiser steps the EMA copies the weights instead (a fine-tune's new head makes large
    random first steps the average should not carry); `steps` counts optimiser steps seen, and the
    loop sets it on resume.
    """

    def __init__(self, model: nn.Module, decay: float, start: int = 0, device: torch.device | str | None = None):
        self.decay = float(decay)
        self.start, self.steps = int(start), 0
        self.updates = 0
        # the copy lives where the trained weights will (the engine moves the model after this):
        # evaluation feeds it batches on that device
        self.module = copy.deepcopy(model).to(device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        for t in list(self.module.parameters()) + list(self.module.buffers()):
            if t.is_floating_point() and t.dtype in (torch.float16, torch.bfloat16):
                t.data = t.data.float()
        self._names = [n for n, _ in self.module.named_parameters()]

    @torch.no_grad()
    def update(self, params: Iterable[tuple[str, torch.Tensor]], buffers: Iterable[tuple[str, torch.Tensor]] = ()) -> None:
        """Average in the named parameters of the trained model (same names as the EMA module);
        copy them during the first `start` steps."""
        self.steps += 1
        if self.steps <= self.start:
            self._copy(params, buffers)
            return
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        own = dict(self.module.named_parameters())
        seen = 0
        for name, p in params:
            target = own[name]
            target.lerp_(p.detach().to(device=target.device, dtype=target.dtype), 1.0 - d)
            seen += 1
        if seen != len(own):
            raise RuntimeError(f"EMA update saw {seen} parameters, the EMA module has {len(own)}")
        self._copy_buffers(buffers)
        self.updates += 1

    @torch.no_grad()
    def _copy(self, params, buffers) -> None:
        own = dict(self.module.named_parameters())
        for name, p in params:
            own[name].copy_(p.detach())
        self._copy_buffers(buffers)

    def _copy_buffers(self, buffers) -> None:
        """Buffers are copied, not averaged; one the trained model holds in a lower precision than
        the copy (a constant cast for bf16/fp16 compute, `engine.cast_constants`) is left exact."""
        own = dict(self.module.named_buffers())
        for name, b in buffers:
            target = own[name]
            if b.is_floating_point() and torch.finfo(b.dtype).bits < torch.finfo(target.dtype).bits:
                continue
            target.copy_(b.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors only (safetensors-ready); `updates` rides along as a 0-d tensor."""
        out = {k: v.detach().contiguous() for k, v in self.module.state_dict().items()}
        out["__ema_updates__"] = torch.tensor(self.updates, dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.updates = int(state.pop("__ema_updates__").item())
        self.module.load_state_dict(state, strict=True)
