"""bf16 training as DeepSpeed sets it up (parameters cast, buffers not): e3nn's constant buffers must
follow the parameters, the heads' stay float32, the float32 EMA copy keeps its constants exact, and a
TORCH_CUDA_ARCH_LIST DeepSpeed's fused-Adam build cannot parse is refused by name. Found on an H200:
`tests/gpu` failed on all three before these."""

import pytest
import torch
from model_fixtures import batch_of, load_mp

from foundation.model import FoundationModel, ModelConfig, TaskSpec
from foundation.model.heads import TaskHead
from foundation.train.ema import EMA
from foundation.train.engine import cast_constants, check_arch_list

CONFIG = ModelConfig(cutoff=4.0, n_basis=6, hidden_irreps="8x0e + 4x1o + 2x2e", n_layers=2,
                     radial_hidden=(8,), head_hidden=8)


def _model() -> FoundationModel:
    torch.manual_seed(0)
    return FoundationModel(CONFIG, [TaskSpec.for_target("energy"), TaskSpec.for_target("band_gap")])


def _as_deepspeed_bf16(model: FoundationModel) -> FoundationModel:
    """What DeepSpeed 0.19.8's engine does for bf16: parameters cast, buffers left alone."""
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    return model


@pytest.fixture(scope="module")
def batch():
    return batch_of(load_mp(max_atoms=6, limit=30)[:4], CONFIG.cutoff, dtype=torch.bfloat16)


def test_bf16_forward_needs_the_constants_cast(batch):
    model = _as_deepspeed_bf16(_model())
    with pytest.raises(RuntimeError, match="dtype"):
        model(batch)
    cast_constants(model, torch.bfloat16)
    out = model(batch)
    assert all(torch.isfinite(v.float()).all() for v in out.values())
    heads = [m for m in model.modules() if isinstance(m, TaskHead)]
    assert heads and all(b.dtype == torch.float32 for h in heads for b in h.buffers() if b.is_floating_point())
    others = [b for b in model.encoder.buffers() if b.is_floating_point()]
    assert others and all(b.dtype == torch.bfloat16 for b in others)


def test_the_float32_ema_keeps_exact_constants(batch):
    reference = _model()
    trained = _model()
    ema = EMA(trained, decay=0.9, device="cpu")
    cast_constants(_as_deepspeed_bf16(trained), torch.bfloat16)
    ema.update(trained.named_parameters(), trained.named_buffers())
    for (name, mine), (_, exact) in zip(ema.module.named_buffers(), reference.named_buffers()):
        assert mine.dtype == exact.dtype and torch.equal(mine, exact), name
    out = ema.module(batch_of(load_mp(max_atoms=6, limit=30)[:4], CONFIG.cutoff, dtype=torch.float32))
    assert all(v.dtype == torch.float32 for v in out.values())


def test_arch_lists_deepspeed_cannot_build_for_are_named():
    check_arch_list("")
    check_arch_list("8.0;9.0+PTX")
    check_arch_list("7.5 8.6")
    with pytest.raises(ValueError, match=r"TORCH_CUDA_ARCH_LIST='9\.0a'.*\['9\.0a'\].*9\.0"):
        check_arch_list("9.0a")
