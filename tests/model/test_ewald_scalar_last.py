"""The latent Ewald block after a scalar-only last block (`scalar_last` with `ewald_every` = n_layers):
the block reads and writes 0e channels only, so the default encoder takes it without keeping the
last block's vectors. The model builds, its Ewald energy reaches the formation-energy head, and in
float64 its prediction is invariant under rotation and permutation and intensive on a supercell,
with the Ewald feedback acting."""

import dataclasses

import torch
from e3nn import o3
from model_fixtures import E_FORM, E_FORM_STATS, E_FORM_TASKS, SMALL, assert_invariant_and_intensive, batch_of, load_mp

from foundation.model import FoundationModel

CONFIG = dataclasses.replace(SMALL, ewald_every=SMALL.n_layers, ewald_accuracy=1e-12)
CRYSTALS = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:3]


def _model():
    torch.manual_seed(5)
    model = FoundationModel(CONFIG, E_FORM_TASKS, E_FORM_STATS, dtype=torch.float64)
    for ewald in model.encoder.ewald.values():  # the feedback starts at zero: make it act
        torch.nn.init.normal_(ewald.feedback_mlp[-1].weight, std=0.3)
    return model.eval()


def test_the_block_sits_after_the_scalar_only_last_block():
    assert SMALL.scalar_last and CONFIG.scalar_last
    model = _model()
    assert list(model.encoder.ewald) == [str(SMALL.n_layers - 1)]
    scalars = o3.Irreps(SMALL.hidden_irreps).count("0e")
    assert model.encoder.ewald[str(SMALL.n_layers - 1)].irreps_in == o3.Irreps(f"{scalars}x0e")
    encoded = model.encoder(batch_of(CRYSTALS, CONFIG.cutoff))
    assert encoded["ewald_energy"].shape == (len(CRYSTALS),) and encoded["ewald_energy"].abs().max() > 0


def test_invariant_and_intensive_with_the_block_acting():
    model = _model()
    assert_invariant_and_intensive(model, CRYSTALS[:2], E_FORM)
