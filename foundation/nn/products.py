"""The interaction block's l <= 1 tensor product, written out (the same numbers as e3nn's).

Why hand-written beside e3nn: e3nn's `TensorProduct` is general (any l, any connection mode) and
runs every path as an einsum against a Wigner 3j block. For the default CPU encoder (l <= 1
features, 1x0e + 1x1o edge harmonics, "uvu" paths) each path is one of four products whose
3j block is a Kronecker delta, so each is a broadcast multiply or a dot product. Measured on
the 2-core development machine: e3nn's form spent 29 % of a `small` training step in `aten::mul`
and 9 % in `aten::sum` over broadcast intermediates (torch profiler, one process); in the real
launcher (2 processes, mp2018, 4-minute runs) the written-out form trains the same model at 8,846
atoms/s against 6,983 (`bench/results/encoder_search*.json`). It is checked equal to
e3nn's output, values and gradients, in float64 (`tests/model/test_products.py`); any other
tensor product (l >= 2, parity-changing 1o x 1o -> 1e paths) stays with e3nn.

Layouts are e3nn's: x [n_edges, irreps_in1.dim] (mul-major: channel u of an l = 1 irrep is
x[:, start + 3u : start + 3u + 3]), sh [n_edges, 4] = (Y0, Y1 in e3nn's (y, z, x) order),
weights [n_edges, weight_numel] in instruction order, output [n_edges, irreps_out.dim].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from e3nn import o3

__all__ = ["L1Product", "l1_product"]

_KINDS = {(0, 0, 0): "ss", (0, 1, 1): "sv", (1, 0, 1): "vs", (1, 1, 0): "dot"}


@dataclass(frozen=True)
class _Path:
    kind: str  # ss: s·Y0 -> 0e; sv: s·Y1 -> 1o; vs: v·Y0 -> 1o; dot: v·Y1 -> 0e
    x: int  # which irrep of x (its piece in `split`)
    out: int  # which irrep of the output
    mul: int
    w: int  # which piece of the weights (instruction order)
    scale: float  # e3nn's path weight x the 3j entry (1 or 1/sqrt(3))


class L1Product:
    """Callable (x, sh, weights) -> messages; equal to `tp(x, sh, weights)` for the e3nn `tp`
    it was made from. Holds no tensors (the e3nn module keeps its place in the state dict)."""

    def __init__(self, tp: o3.TensorProduct):
        paths = []
        for index, ins in enumerate(tp.instructions):
            mul, ir1 = tp.irreps_in1[ins.i_in1]
            ir2, ir3 = tp.irreps_in2[ins.i_in2].ir, tp.irreps_out[ins.i_out].ir
            kind = _KINDS[(ir1.l, ir2.l, ir3.l)]
            scale = ins.path_weight * (1.0 if kind == "ss" else 1.0 / math.sqrt(3.0))
            paths.append(_Path(kind, ins.i_in1, ins.i_out, mul, index, scale))
        # x and the weights are cut into their pieces by one `split` each, not one slice per path:
        # a slice's backward fills a zero tensor of the whole [n_edges, dim] input and copies its
        # columns in, once per path, where split's backward is one concatenation (the per-edge
        # tensors are the step's largest; bench/README.md, "Fewer zero-filled gradients").
        self.x_sizes = [mul * ir.dim for mul, ir in tp.irreps_in1]
        self.w_sizes = [p.mul for p in paths]  # the weights' columns in instruction order
        # The output in column order: every irrep of irreps_out is written by exactly one path.
        self.paths = sorted(paths, key=lambda p: p.out)

    def __call__(self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Per-edge messages [n_edges, irreps_out.dim] from per-edge x [n_edges, irreps_in1.dim]."""
        xs = x.split(self.x_sizes, dim=1)
        return torch.cat(list(self._messages(lambda i: xs[i], sh, weights)), dim=1)

    def aggregate(self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor, sender: torch.Tensor,
                  receiver: torch.Tensor) -> torch.Tensor:
        """The messages summed onto their receivers, [n_atoms, irreps_out.dim], from node features
        x [n_atoms, irreps_in1.dim]; the same numbers as `index_add` of `self(x[sender], ...)`.

        Each path gathers its own piece of x and sums its own messages, and the pieces are joined
        at the atom level: no per-edge concatenation in forward or backward (an atom has ~17
        edges, so the joins cost 1/17 of the per-edge ones)."""
        xs, gathered = x.split(self.x_sizes, dim=1), {}

        def piece(i: int) -> torch.Tensor:  # [n_edges, dim of x's irrep i], gathered once per irrep
            if i not in gathered:
                gathered[i] = xs[i].index_select(0, sender)
            return gathered[i]

        summed = [m.new_zeros(x.shape[0], m.shape[1]).index_add_(0, receiver, m)
                  for m in self._messages(piece, sh, weights)]
        return torch.cat(summed, dim=1)

    def _messages(self, piece, sh: torch.Tensor, weights: torch.Tensor):
        """Each path's per-edge messages in output-column order; piece(i) is x's irrep i per edge."""
        n = sh.shape[0]
        y0, y1 = sh.split([1, 3], dim=1)  # [n, 1], [n, 3]
        ws = weights.split(self.w_sizes, dim=1)
        for p in self.paths:
            xp, w = piece(p.x), ws[p.w]  # [n, dim of x's irrep], [n, mul]
            if p.scale != 1.0:
                w = w * p.scale
            if p.kind == "ss":
                yield xp * w * y0  # [n, mul]
            elif p.kind == "sv":
                yield ((xp * w).unsqueeze(-1) * y1.unsqueeze(1)).reshape(n, 3 * p.mul)  # [n, mul*3]
            elif p.kind == "vs":
                yield (xp.reshape(n, p.mul, 3) * (w * y0).unsqueeze(-1)).reshape(n, 3 * p.mul)
            else:  # dot
                yield w * torch.bmm(xp.reshape(n, p.mul, 3), y1.unsqueeze(-1)).squeeze(-1)


def l1_product(tp: o3.TensorProduct) -> L1Product | None:
    """The written-out product for `tp`, or None when `tp` is not one (any l >= 2, a 1e output,
    edge harmonics other than 1x0e + 1x1o, a mode other than uvu, shared weights)."""
    if tp.irreps_in2 != o3.Irreps("1x0e + 1x1o") or tp.shared_weights or tp.internal_weights:
        return None
    for ins in tp.instructions:
        ls = (tp.irreps_in1[ins.i_in1].ir.l, tp.irreps_in2[ins.i_in2].ir.l, tp.irreps_out[ins.i_out].ir.l)
        if ins.connection_mode != "uvu" or not ins.has_weight or ls not in _KINDS:
            return None
        if tp.irreps_in1[ins.i_in1].ir.p * tp.irreps_in2[ins.i_in2].ir.p != tp.irreps_out[ins.i_out].ir.p:
            return None
    if sorted(ins.i_out for ins in tp.instructions) != list(range(len(tp.irreps_out))):
        return None  # an output irrep no path writes (or two paths summed into one): leave it to e3nn
    return L1Product(tp)
