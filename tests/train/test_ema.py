import torch
from torch import nn

from foundation.train.ema import EMA


def test_ema_follows_the_closed_form():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    ema = EMA(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(20):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model.named_parameters())
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-12)


def test_ema_is_fp32_for_half_models_and_round_trips():
    model = nn.Linear(3, 2).to(torch.bfloat16)
    ema = EMA(model, decay=0.5)
    assert all(p.dtype == torch.float32 for p in ema.module.parameters())
    ema.update(model.named_parameters())
    state = ema.state_dict()
    other = EMA(nn.Linear(3, 2), decay=0.5)
    other.load_state_dict(state)
    assert other.updates == 1
    for a, b in zip(other.module.parameters(), ema.module.parameters()):
        assert torch.equal(a, b)


def test_ema_refuses_a_partial_update():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    ema = EMA(model, decay=0.9)
    try:
        ema.update(list(model.named_parameters())[:1])
    except RuntimeError as exc:
        assert "EMA update saw 1" in str(exc)
    else:
        raise AssertionError("a partial update was accepted")
