"""The written-out l <= 1 tensor product equals e3nn's, values and gradients, in float64; every
other product is left to e3nn."""

import pytest
import torch
from e3nn import o3

from foundation.model.config import building_dtype
from foundation.nn.interaction import InteractionBlock, _tensor_product
from foundation.nn.products import L1Product, l1_product

SH1 = o3.Irreps("1x0e + 1x1o")


def assert_same_values_and_gradients(got, expected, inputs, gen):
    """got == expected, and so are their gradients with respect to every input (one random probe)."""
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    probe = torch.randn(expected.shape, generator=gen, dtype=expected.dtype)
    grads_e = torch.autograd.grad((expected * probe).sum(), inputs)
    grads_g = torch.autograd.grad((got * probe).sum(), inputs)
    for a, b in zip(grads_g, grads_e):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("irreps_in, wanted", [
    ("64x0e", "80x0e + 16x1o"),  # the first block: scalars in, vectors made from the edge direction
    ("64x0e + 16x1o", "80x0e + 16x1o"),  # every path: s·Y0, s·Y1, v·Y0, v·Y1
    ("64x0e + 16x1o", "64x0e"),  # a scalar-only last block: s·Y0 and v·Y1
    ("3x0e + 5x1o + 2x0e", "4x0e + 2x1o"),  # unmerged, unsorted input channels
])
@pytest.mark.parametrize("n", [37, 0])  # 0: a batch with no edges (an isolated atom)
def test_equals_e3nn_values_and_gradients(irreps_in, wanted, n):
    with building_dtype(torch.float64):
        tp, _ = _tensor_product(o3.Irreps(irreps_in), SH1, o3.Irreps(wanted))
        product = l1_product(tp)
        assert isinstance(product, L1Product)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, tp.irreps_in1.dim, generator=gen, requires_grad=True)
        sh = torch.randn(n, 4, generator=gen, requires_grad=True)
        w = torch.randn(n, tp.weight_numel, generator=gen, requires_grad=True)
        expected, got = tp(x, sh, w), product(x, sh, w)
        assert_same_values_and_gradients(got, expected, (x, sh, w), gen)


@pytest.mark.parametrize("irreps_in, wanted", [
    ("64x0e", "80x0e + 16x1o"),
    ("64x0e + 16x1o", "64x0e"),
    ("3x0e + 5x1o + 2x0e", "4x0e + 2x1o"),  # one x irrep feeding two paths, gathered once
])
@pytest.mark.parametrize("n_edges", [53, 0])
def test_aggregate_equals_index_add_of_e3nn(irreps_in, wanted, n_edges):
    """`aggregate` (per-path gathers and sums, joined per atom) gives e3nn's messages summed onto
    their receivers: values and the gradients of x, the harmonics and the weights."""
    n_atoms = 9
    with building_dtype(torch.float64):
        tp, _ = _tensor_product(o3.Irreps(irreps_in), SH1, o3.Irreps(wanted))
        product = l1_product(tp)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(n_atoms, tp.irreps_in1.dim, generator=gen, requires_grad=True)
        sh = torch.randn(n_edges, 4, generator=gen, requires_grad=True)
        w = torch.randn(n_edges, tp.weight_numel, generator=gen, requires_grad=True)
        sender = torch.randint(0, n_atoms, (n_edges,), generator=gen)
        receiver = torch.randint(0, n_atoms, (n_edges,), generator=gen)
        messages = tp(x.index_select(0, sender), sh, w)
        expected = messages.new_zeros(n_atoms, messages.shape[1]).index_add_(0, receiver, messages)
        got = product.aggregate(x, sh, w, sender, receiver)
        assert_same_values_and_gradients(got, expected, (x, sh, w), gen)


@pytest.mark.parametrize("irreps_in, sh, wanted", [
    ("8x0e + 4x1o", "1x0e + 1x1o + 1x2e", "8x0e + 4x1o"),  # l = 2 harmonics
    ("8x0e + 4x1o", "1x0e + 1x1o", "8x0e + 4x1o + 2x1e"),  # 1o x 1o -> 1e (a cross product)
    ("8x0e + 4x2e", "1x0e + 1x1o", "8x0e + 4x1o"),  # l = 2 features
])
def test_other_products_stay_with_e3nn(irreps_in, sh, wanted):
    tp, _ = _tensor_product(o3.Irreps(irreps_in), o3.Irreps(sh), o3.Irreps(wanted))
    assert l1_product(tp) is None
    block = InteractionBlock(irreps_in, wanted, sh, n_basis=4, radial_hidden=(4,))
    assert block.written_out is None
    assert not any(k.startswith("written_out") for k in block.state_dict())  # one copy of e3nn's buffers


def test_state_dict_keeps_e3nn_keys():
    """Checkpoints written before the written-out product load unchanged: same keys."""
    block = InteractionBlock("8x0e + 4x1o", "8x0e + 4x1o", "1x0e + 1x1o", n_basis=4, radial_hidden=(4,))
    assert isinstance(block.written_out, L1Product)
    assert {"tp.weight", "tp.output_mask"} <= set(block.state_dict())
    assert not any(k.startswith("written_out") for k in block.state_dict())
