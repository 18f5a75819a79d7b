"""The DeepSpeed JSON, generated from the typed config (never kept by hand as a second truth).

The run writes the generated dict to `<run_dir>/deepspeed_config.json` for the record.
"""

from __future__ import annotations

from typing import Any

from .config import DistributedConfig, OptimizerConfig

__all__ = ["deepspeed_config"]


def _precision_section(dist: DistributedConfig) -> dict[str, Any]:
    match dist.precision:
        case "fp32":
            return {}
        case "bf16":
            return {"bf16": {"enabled": True}}
        case "fp16":
            # loss_scale 0 = dynamic: the scale halves on overflow (that step is skipped by
            # DeepSpeed) and doubles after `loss_scale_window` clean steps.
            return {
                "fp16": {
                    "enabled": True,
                    "loss_scale": 0,
                    "initial_scale_power": dist.fp16_initial_scale_power,
                    "loss_scale_window": dist.fp16_loss_scale_window,
                    "hysteresis": 2,
                    "min_loss_scale": 1,
                }
            }
        case _:
            raise ValueError(f"unknown precision {dist.precision!r} (fp32, bf16, fp16)")


def _zero_section(stage: int) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": stage}
    if stage in (1, 2):
        zero.update(overlap_comm=False, contiguous_gradients=True, reduce_scatter=True)
    if stage == 3:
        # Consolidate the partitioned weights into the saved module state as well, so a
        # checkpoint's `mp_rank_00_model_states.pt` holds the whole model.
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    return zero


def deepspeed_config(
    dist: DistributedConfig,
    optimizer: OptimizerConfig,
    load_universal: bool = False,
) -> dict[str, Any]:
    """DeepSpeed's config dict for `deepspeed.initialize(config=...)`.

    Batches are packed to an atom budget by the loader, so DeepSpeed sees one "sample" per
    micro-batch: its batch-size fields only do the accumulation bookkeeping (DeepSpeed derives
    `train_batch_size` = grad_accum x world size itself, so the JSON does not depend on the world).
    The learning rate here is the peak; the loop sets the scheduled value every step.
    """
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": dist.grad_accum,
        "gradient_clipping": dist.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optimizer.lr,
                "betas": list(optimizer.betas),
                "eps": optimizer.eps,
                "weight_decay": optimizer.weight_decay,
                "torch_adam": optimizer.torch_adam,
            },
        },
        "zero_optimization": _zero_section(dist.zero_stage),
        "steps_per_print": 2**31 - 1,  # our own logging; silence DeepSpeed's
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }
    cfg.update(_precision_section(dist))
    return cfg
