"""The pair gate (`pair_hidden`): edge weights that depend on both atoms of the edge. A model with
the gate computes what the same model without it computes until training moves the gate (its last
map starts at zero), the gate then trains, and its weights vanish with the radial MLP's at the
cutoff. Invariances, supercells and forces with the gate on the weights acting: test_invariance.py's
l <= 2 model; with the gate on the radial layer: below."""

import dataclasses

import pytest
import torch
from model_fixtures import E_FORM, E_FORM_STATS, E_FORM_TASKS, SMALL, assert_invariant_and_intensive, batch_of, load_mp

from foundation.model import FoundationModel
from foundation.nn.interaction import InteractionBlock, PairGate

PLAIN = dataclasses.replace(SMALL, pair_hidden=0, pair_radial=False)
CRYSTALS = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:4]


def _models(radial):
    torch.manual_seed(3)
    plain = FoundationModel(PLAIN, E_FORM_TASKS, E_FORM_STATS, dtype=torch.float64)
    config = dataclasses.replace(PLAIN, pair_hidden=16, pair_radial=radial)
    gated = FoundationModel(config, E_FORM_TASKS, E_FORM_STATS, dtype=torch.float64)
    missing, unexpected = gated.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".pair." in k for k in missing)
    return plain, gated


@pytest.mark.parametrize("radial", [False, True], ids=["on the weights", "on the radial layer"])
def test_the_gate_starts_as_the_identity_and_then_trains(radial):
    plain, gated = _models(radial)
    batch = batch_of(CRYSTALS, PLAIN.cutoff)
    key = E_FORM
    torch.testing.assert_close(gated(batch)[key], plain(batch)[key], rtol=1e-12, atol=1e-12)
    gated(batch)[key].square().sum().backward()
    for block in gated.encoder.blocks:
        zero_map = block.pair.project if radial else block.pair.out
        assert zero_map.weight.grad.abs().sum() > 0  # the zero map gets a gradient
    optimizer = torch.optim.SGD(gated.parameters(), lr=0.1)
    optimizer.step()
    assert not torch.allclose(gated(batch)[key], plain(batch)[key])


@pytest.mark.parametrize("radial", [False, True], ids=["on the weights", "on the radial layer"])
def test_the_gated_weights_vanish_at_the_cutoff(radial):
    torch.manual_seed(0)
    block = InteractionBlock("8x0e", "8x0e + 2x1o", "1x0e + 1x1o", n_basis=6, radial_hidden=(8,), pair_hidden=4,
                             pair_radial=radial)
    torch.nn.init.normal_(block.pair.project.weight if radial else block.pair.out.weight)
    feats = torch.randn(3, 8)
    sh = torch.randn(2, 4)
    radial = torch.zeros(2, 6)  # the radial embedding at and beyond the cutoff
    edge_index = torch.tensor([[0, 1], [1, 2]])
    no_edges = torch.zeros(2, 0, dtype=torch.long)
    torch.testing.assert_close(block(feats, sh, radial, edge_index), block(feats, sh[:0], radial[:0], no_edges))
    assert not torch.allclose(block(feats, sh, torch.ones(2, 6), edge_index), block(feats, sh[:0], radial[:0], no_edges))


@pytest.mark.parametrize("n_out", [3, 0])
def test_the_gate_factor_reads_each_end_of_the_edge(n_out):
    torch.manual_seed(0)
    gate = PairGate(4, 5, n_out)
    torch.nn.init.normal_(gate.project.weight if n_out == 0 else gate.out.weight)
    scalars = torch.randn(3, 4)
    forward = gate(scalars, torch.tensor([0]), torch.tensor([1]))
    backward = gate(scalars, torch.tensor([1]), torch.tensor([0]))
    assert forward.shape == (1, n_out or 5) and not torch.allclose(forward, backward)  # not symmetric: receiver and sender differ


def test_a_bad_width_is_refused():
    with pytest.raises(ValueError, match="pair_hidden"):
        dataclasses.replace(SMALL, pair_hidden=-1)
    with pytest.raises(ValueError, match="pair_radial: true needs pair_hidden > 0"):
        dataclasses.replace(SMALL, pair_hidden=0, pair_radial=True)  # not silently no gate
    with pytest.raises(ValueError, match="0e channels first"):
        InteractionBlock("2x1o", "2x1o + 2x0e", "1x0e + 1x1o", n_basis=4, pair_hidden=4)


def test_the_radial_form_is_invariant_and_intensive():
    _, gated = _models(radial=True)
    for block in gated.encoder.blocks:
        torch.nn.init.normal_(block.pair.project.weight, std=0.3)
    assert_invariant_and_intensive(gated.eval(), CRYSTALS[:2], E_FORM)
