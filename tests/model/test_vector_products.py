"""The invariants made from each block's aggregated l = 1 messages (`vector_products`): only
blocks whose messages have l = 1 channels take them, they start as a no-op and then act, they are
invariant under any orthogonal map of the vectors (reflections included), the prediction stays
invariant and intensive in float64, and bad settings are refused with the reason."""

import dataclasses

import pytest
import torch
from e3nn import o3
from model_fixtures import E_FORM, E_FORM_STATS, E_FORM_TASKS, SMALL, assert_invariant_and_intensive, batch_of, load_mp

from foundation.model import FoundationModel
from foundation.nn.interaction import VectorProducts

CONFIG = dataclasses.replace(SMALL, vector_products=8, vector_channels=0)  # the first block's 64 vector channels
CRYSTALS = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:3]


def _acting(seed: int) -> FoundationModel:
    torch.manual_seed(seed)
    model = FoundationModel(CONFIG, E_FORM_TASKS, E_FORM_STATS, dtype=torch.float64).eval()
    for block in model.encoder.blocks:
        if block.products is not None:
            torch.nn.init.normal_(block.products.out.weight, std=0.5)  # zero at start: make it act
    return model


def test_the_vector_block_takes_them_and_they_start_as_a_no_op():
    torch.manual_seed(1)
    model = FoundationModel(CONFIG, E_FORM_TASKS, E_FORM_STATS, dtype=torch.float64).eval()
    # small: the first block's messages carry 64x1o; the scalar-only last block's carry none.
    assert model.encoder.blocks[0].products is not None and model.encoder.blocks[0].products.n_vectors == 64
    assert model.encoder.blocks[-1].products is None
    plain = FoundationModel(dataclasses.replace(CONFIG, vector_products=0), E_FORM_TASKS, E_FORM_STATS, dtype=torch.float64).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".products." in k for k in missing)
    batch = batch_of(CRYSTALS, CONFIG.cutoff)
    assert torch.allclose(model(batch)[E_FORM], plain(batch)[E_FORM], atol=1e-12)
    acting = _acting(1)
    acting.load_state_dict({**plain.state_dict(), **{k: v for k, v in acting.state_dict().items() if ".products." in k}})
    assert not torch.allclose(acting(batch)[E_FORM], plain(batch)[E_FORM])


def test_invariant_under_rotations_and_reflections():
    torch.manual_seed(3)
    irreps = o3.Irreps("4x0e + 5x1o + 3x1o")
    products = VectorProducts(irreps, 6, 2).double()
    torch.nn.init.normal_(products.out.weight)
    x = irreps.randn(7, -1, dtype=torch.float64)
    for matrix in (o3.rand_matrix(dtype=torch.float64), -o3.rand_matrix(dtype=torch.float64)):
        y = x @ irreps.D_from_matrix(matrix).T
        assert torch.allclose(products(y), products(x), atol=1e-12)
    assert not torch.allclose(products(x), torch.zeros(7, 2, dtype=torch.float64))


def test_the_model_stays_invariant_and_intensive():
    assert_invariant_and_intensive(_acting(2), CRYSTALS[:2], E_FORM)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="vector_products"):
        dataclasses.replace(SMALL, vector_products=-1)
    with pytest.raises(ValueError, match="l = 1 channels"):
        VectorProducts(o3.Irreps("4x0e"), 2, 2)
    with pytest.raises(ValueError, match="one parity"):
        VectorProducts(o3.Irreps("2x1o + 2x1e"), 2, 2)
