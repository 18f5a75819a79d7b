import pytest

from foundation.config import ConfigError, from_dict
from foundation.train.config import DistributedConfig, OptimizerConfig
from foundation.train.deepspeed_config import deepspeed_config


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_generated_from_typed_config(precision, stage):
    dist = DistributedConfig(zero_stage=stage, precision=precision, grad_accum=3, grad_clip=0.5)
    opt = OptimizerConfig(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    cfg = deepspeed_config(dist, opt)
    assert "train_batch_size" not in cfg and cfg["gradient_accumulation_steps"] == 3
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["optimizer"] == {"type": "AdamW", "params": {
        "lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.05, "torch_adam": True}}
    assert ("bf16" in cfg) == (precision == "bf16")
    assert ("fp16" in cfg) == (precision == "fp16")
    if precision == "fp16":
        assert cfg["fp16"]["loss_scale"] == 0  # dynamic loss scaling


def test_deepspeed_accepts_the_generated_config():
    from deepspeed.runtime.config import DeepSpeedConfig

    for precision in ("fp32", "bf16", "fp16"):
        cfg = deepspeed_config(DistributedConfig(zero_stage=2, precision=precision, grad_accum=2),
                               OptimizerConfig())
        parsed = DeepSpeedConfig(cfg)
        assert parsed.zero_optimization_stage == 2
        assert parsed.gradient_accumulation_steps == 2


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="zero_stage"):
        from_dict(DistributedConfig, {"zero_stage": 4}, "distributed")
    with pytest.raises(ConfigError, match="distributed.precision"):
        from_dict(DistributedConfig, {"precision": "fp8"}, "distributed")
    with pytest.raises(ConfigError, match="distributed.grad_accum: expected int"):
        from_dict(DistributedConfig, {"grad_accum": "two"}, "distributed")
