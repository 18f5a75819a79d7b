"""Equivariant interaction block (NequIP/MACE style, our own code).

One block maps node features h (irreps_in) to new features (irreps_out):

    x_j      = Linear(h_j)                                          # [n_atoms, irreps_in]
    m_ij     = TP(x_j ⊗ Y(r̂_ij); w = MLP(radial(|r_ij|)))          # [n_edges, irreps_mid]
    a_i      = Σ_j m_ij / sqrt(avg_num_neighbors)                   # [n_atoms, irreps_mid]
    h'_i     = Gate(Linear(a_i)) + SelfConnection(h_i)              # [n_atoms, irreps_out]
    s'_i     = s_i + SiLU(W [s_i, mean_{k in graph(i)} s_k])         # optional structure context
    s''_i    = s'_i + W₂ SiLU(W₁ s'_i)                                # optional feed-forward update

The optional vector channels (`vector_channels=V > 0`) make the l > 0 messages of the input
scalars from V scalar mixtures of their own, appended to x, instead of from every scalar channel:

    x_j      = [Linear(h_j), Linear_V(s_j)]                          # the first part makes 0e paths only
    m_ij     = TP(...)                                               # 0e ⊗ Y1 -> 1o from the V part only

`small`'s first block then carries 64x0e + 16x1o per edge instead of 64x0e + 64x1o, which its
linear_out mixed down to 16x1o anyway (the same function class up to where the per-edge radial
weights sit); forward and backward are 1.3x faster on a 1,022-atom batch (bench/README.md).

The optional vector products (`vector_products=K > 0`) add, before the gate, K invariants made
from the aggregated l = 1 messages a_i (M channels of 1o or 1e) as MACE's product basis does at
correlation order 2 on l = 1:

    d_ik     = (Σ_u P_ku a_iu) · (Σ_u Q_ku a_iu)                     # [n_atoms, K], P, Q: [K, M]
    g_i     += W d_i                                                  # the gate input's 0e part, W zero at start

a_iu sums w(r_ij) x_ju r̂_ij over neighbours, so d_ik sums over pairs of neighbours j, k with
cos θ_jik: bond angles, which otherwise reach the scalars only through the next block's
1o ⊗ 1o → 0e path. It costs per-atom work only (no edge work), and dot products of two l = 1
vectors of equal parity are invariant, so equivariance is untouched.

The optional pair gate (`pair_hidden > 0`) makes the per-edge weights depend on both atoms of the
edge, as CGCNN's gated convolution does (its message is a nonlinear function of h_i, h_j and the
bond), where otherwise they depend on the distance alone:

    w_ij     = MLP(radial(|r_ij|)) ⊙ (1 + W₂ SiLU(A s_i + B s_j + b))   # s: the input's 0e channels
    w_ij     = W_last(φ(|r_ij|) ⊙ (1 + SiLU(A s_i + B s_j)))           # `pair_radial`: φ the MLP's hidden layer

The second form costs no per-edge matrix product beyond the radial MLP's own (bench/README.md, "The
pair gate": as fast as no gate, where the first costs 14 % of a step). W₂ (or, in the second form, A
and B) starts at zero, so a block with the gate computes what one without it computes until training
moves it; the weights still vanish at the cutoff (the radial MLP's do, and the gate multiplies
them), and the gate reads invariants only, so equivariance is untouched.

The optional structure context (`context=True`) mixes each atom's scalars s (the 0e channels of
h') with their mean over its structure, as the composition baseline does: a cheap, nonlinear
path from the whole composition to every atom that message passing within the cutoff would need
many blocks to build. The mean is over a structure's atoms, so it is the same for a supercell, and
it is invariant, so equivariance is untouched.

The optional feed-forward update (`ffn_hidden > 0`) is a transformer block's FFN on the scalars:
the only nonlinearities of a block are otherwise the gate and the context, and a per-atom MLP adds
depth at no per-edge cost. It reads and writes invariants, so equivariance is untouched.

The tensor product is "uvu" (each input channel keeps its own weight per path), its weights are
per edge from a radial MLP with no biases, so a zero radial embedding (r ≥ r_c) gives a zero
message. The gate applies SiLU to even scalars, tanh to odd scalars (odd activations keep parity),
and multiplies each l > 0 irrep by sigmoid of its own 0e gate scalar.
"""

from __future__ import annotations

import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn

from .pooling import mean_pool
from .products import l1_product

__all__ = ["InteractionBlock", "PairGate", "VectorProducts", "gate_for", "check_irreps", "normalize_irreps", "reachable_irreps"]


def normalize_irreps(irreps) -> o3.Irreps:
    """Sorted by (l, parity) and merged: the one order every block and the gate agree on."""
    return o3.Irreps(irreps).sort().irreps.simplify()


def check_irreps(expected, got, where: str) -> None:
    """Raise ValueError naming `where` when two irreps differ (chaining blocks top to bottom)."""
    if o3.Irreps(expected) != o3.Irreps(got):
        raise ValueError(f"{where}: irreps mismatch, expected {o3.Irreps(expected)}, got {o3.Irreps(got)}")


def reachable_irreps(irreps_in, irreps_sh, wanted) -> o3.Irreps:
    """The channels of `wanted` that one tensor product with the edge harmonics can produce
    (the first block, fed only scalars, cannot make 1e or 0o from 0e ⊗ Y)."""
    made = {ir_out for _, ir_in in o3.Irreps(irreps_in) for _, ir_sh in o3.Irreps(irreps_sh)
            for ir_out in ir_in * ir_sh}
    return normalize_irreps(o3.Irreps([(mul, ir) for mul, ir in o3.Irreps(wanted) if ir in made]))


def gate_for(irreps_out: o3.Irreps) -> enn.Gate:
    """The gated nonlinearity whose output is exactly `irreps_out` (normalised order)."""
    irreps_out = normalize_irreps(irreps_out)
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
    if gated.num_irreps > 0 and scalars.num_irreps == 0:
        raise ValueError(f"irreps {irreps_out} have l > 0 channels but no scalar channel")
    acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps([(mul, "0e") for mul, _ in gated])
    gate = enn.Gate(scalars, acts, gates, [torch.sigmoid] * len(gates), gated)
    check_irreps(irreps_out, gate.irreps_out, "gate output")
    return gate


def _tensor_product(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, targets: o3.Irreps, scalars_only: int = -1,
                    vectors_only: int = -1):
    """uvu tensor product keeping only paths whose output irrep is one the block needs; the input
    piece `scalars_only` makes only l = 0 outputs and the piece `vectors_only` only l > 0 ones."""
    wanted = {ir for _, ir in targets}
    mid, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_edge) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_edge:
                if ir_out in wanted and not (i == scalars_only and ir_out.l > 0) and not (i == vectors_only and ir_out.l == 0):
                    instructions.append((i, j, len(mid), "uvu", True))
                    mid.append((mul, ir_out))
    mid = o3.Irreps(mid)
    missing = [str(ir) for ir in wanted if ir not in {ir for _, ir in mid}]
    if missing:
        raise ValueError(
            f"irreps {', '.join(sorted(missing))} cannot be reached from {irreps_in} ⊗ {irreps_sh}"
        )
    mid_sorted, perm, _ = mid.sort()
    instructions = [(i, j, perm[k], mode, train) for i, j, k, mode, train in instructions]
    tp = o3.TensorProduct(
        irreps_in, irreps_sh, mid_sorted, instructions, shared_weights=False, internal_weights=False
    )
    return tp, mid_sorted


class PairGate(nn.Module):
    """Per-edge factors from both atoms' scalars: 1 + W₂ SiLU(A s_receiver + B s_sender + b), or
    with `n_out=0` (no W₂) 1 + SiLU(A s_receiver + B s_sender), A and B starting at zero.

    forward(scalars [n_atoms, n_scalars], receiver [n_edges], sender [n_edges]) -> [n_edges, n_out
    or hidden]. A and B act on atoms (n_atoms rows), not edges; the factor starts at 1.
    """

    def __init__(self, n_scalars: int, hidden: int, n_out: int):
        super().__init__()
        self.hidden = int(hidden)
        self.project = nn.Linear(n_scalars, 2 * self.hidden, bias=n_out > 0)  # [A; B] (and b)
        self.out = nn.Linear(self.hidden, n_out, bias=False) if n_out else None
        nn.init.zeros_(self.project.weight if self.out is None else self.out.weight)

    def forward(self, scalars: torch.Tensor, receiver: torch.Tensor, sender: torch.Tensor) -> torch.Tensor:
        projected = self.project(scalars)  # [n_atoms, 2 hidden]
        pair = projected[:, : self.hidden].index_select(0, receiver) + projected[:, self.hidden :].index_select(0, sender)
        pair = torch.nn.functional.silu(pair)  # [n_edges, hidden]
        return 1.0 + (pair if self.out is None else self.out(pair))


class VectorProducts(nn.Module):
    """Invariant dot products of linear mixtures of the l = 1 channels of `irreps` (module doc).

    forward(features [n, irreps.dim]) -> [n, n_out]: W d with d_k = (P a)_k · (Q a)_k, W zero at start.
    Raises ValueError when `irreps` has no l = 1 channel (nothing to multiply).
    """

    def __init__(self, irreps, n_products: int, n_out: int):
        super().__init__()
        columns = []  # per l = 1 channel u: its 3 columns in `irreps`' layout (mul-major)
        for (mul, ir), piece in zip(o3.Irreps(irreps), o3.Irreps(irreps).slices()):
            if ir.l == 1:
                columns += [list(range(piece.start + 3 * u, piece.start + 3 * u + 3)) for u in range(mul)]
        if not columns:
            raise ValueError(f"vector products need l = 1 channels in the aggregated messages {irreps}")
        # Mixing 1o with 1e channels in one product would make a pseudo-scalar: refuse it.
        parities = {ir.p for _, ir in o3.Irreps(irreps) if ir.l == 1}
        if len(parities) > 1:
            raise ValueError(f"vector products need one parity of l = 1 channels, got {irreps}")
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long).T.reshape(-1), persistent=False)
        self.n_vectors = len(columns)
        self.left = nn.Linear(self.n_vectors, n_products, bias=False)
        self.right = nn.Linear(self.n_vectors, n_products, bias=False)
        self.out = nn.Linear(n_products, n_out, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        vectors = features.index_select(1, self.columns).view(-1, 3, self.n_vectors)  # [n, xyz, M]
        dots = (self.left(vectors) * self.right(vectors)).sum(dim=1)  # [n, K]
        return self.out(dots)


class InteractionBlock(nn.Module):
    """Tensor-product convolution + gate + self-connection.

    Args:
        irreps_in: node feature irreps entering the block.
        irreps_out: node feature irreps leaving it (normalised order; needs 0e channels if it
            has l > 0 ones, since those become the gated scalars).
        irreps_sh: spherical-harmonic irreps of the edge directions.
        n_basis: width of the radial embedding.
        radial_hidden: hidden widths of the radial MLP.
        avg_num_neighbors: the sum over neighbours is divided by its square root.
        context: add the structure-context update of the output scalars (needs `graph`).
        pair_hidden: width of the pair gate on the edge weights (0: none; needs 0e input channels).
        pair_radial: the gate on the radial MLP's last hidden layer (its width) instead of the weights.
        ffn_hidden: width of the per-atom feed-forward update of the output scalars (0: none).
        vector_products: K invariants from the aggregated l = 1 messages before the gate (0: none;
            a block whose messages have no l = 1 channel takes none).
        vector_channels: V scalar mixtures that alone make the l > 0 messages of the input scalars
            (0: every input scalar makes them).

    forward(node_feats [n_atoms, irreps_in.dim], edge_sh [n_edges, irreps_sh.dim],
    edge_radial [n_edges, n_basis], edge_index [2, n_edges]) -> [n_atoms, irreps_out.dim].
    Raises ValueError at construction when irreps_out cannot be produced from the inputs.
    """

    def __init__(
        self,
        irreps_in,
        irreps_out,
        irreps_sh,
        n_basis: int,
        radial_hidden: tuple[int, ...] = (64,),
        avg_num_neighbors: float = 1.0,
        context: bool = False,
        pair_hidden: int = 0,
        pair_radial: bool = False,
        ffn_hidden: int = 0,
        vector_products: int = 0,
        vector_channels: int = 0,
    ):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = normalize_irreps(irreps_out)
        self.irreps_sh = o3.Irreps(irreps_sh)
        if self.irreps_in.dim == 0 or self.irreps_out.dim == 0:
            raise ValueError(f"empty irreps: in {self.irreps_in}, out {self.irreps_out}")
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be > 0, got {avg_num_neighbors}")
        self.n_basis = int(n_basis)
        self.norm = float(avg_num_neighbors) ** -0.5
        # The input width as a plain int: torch.compile guards on what forward reads, and its
        # guard on an e3nn Irreps calls len(), which Irreps refuses.
        self.dim_in = int(self.irreps_in.dim)

        self.gate = gate_for(self.irreps_out)
        # vector_channels: the l > 0 messages of the input scalars come from V scalar mixtures of
        # their own (appended to the product's input) instead of from all of them: the widest
        # per-edge pieces of a block fed scalars (64x0e ⊗ 1o -> 64x1o in `small`'s first block)
        # shrink to V channels, which the block's linear_out would otherwise mix down to.
        tp_in, scalars_only, vectors_only = self.irreps_in, -1, -1
        makes_vectors = any(ir.l > 0 for _, ir in self.gate.irreps_in)
        if vector_channels and makes_vectors and self.irreps_in[0].ir == o3.Irrep("0e"):
            tp_in = self.irreps_in + o3.Irreps(f"{int(vector_channels)}x0e")
            scalars_only, vectors_only = 0, len(self.irreps_in)
        self.linear_in = o3.Linear(self.irreps_in, tp_in)
        self.tp, self.irreps_mid = _tensor_product(tp_in, self.irreps_sh, self.gate.irreps_in, scalars_only,
                                                   vectors_only)
        # The same product written out where it is l <= 1 (foundation/nn/products.py says why);
        # `self.tp` stays, holding its place in the state dict, and runs every other case (None here).
        self.written_out = l1_product(self.tp)
        self.radial_mlp = enn.FullyConnectedNet(
            [self.n_basis, *radial_hidden, self.tp.weight_numel], torch.nn.functional.silu
        )
        self.linear_out = o3.Linear(self.irreps_mid, self.gate.irreps_in)
        self.self_connection = o3.Linear(self.irreps_in, self.irreps_out)
        check_irreps(self.linear_out.irreps_out, self.gate.irreps_in, "InteractionBlock gate input")
        check_irreps(self.self_connection.irreps_out, self.irreps_out, "InteractionBlock self-connection")
        self.n_scalars = self.irreps_out.count("0e")  # the 0e channels lead the normalised order
        self.pair = None
        if pair_hidden:
            if self.irreps_in[0].ir != o3.Irrep("0e"):
                raise ValueError(f"the pair gate needs 0e channels first in {self.irreps_in}")
            self.n_scalars_in = self.irreps_in.count("0e")
            if pair_radial:  # the factor multiplies the radial MLP's last hidden layer (PairGate without W₂)
                self.pair = PairGate(self.n_scalars_in, radial_hidden[-1], 0)
            else:
                self.pair = PairGate(self.n_scalars_in, pair_hidden, self.tp.weight_numel)
        for wanted, name in ((context, "structure context"), (ffn_hidden, "the feed-forward update")):
            if wanted and self.irreps_out[0].ir != o3.Irrep("0e"):
                raise ValueError(f"{name} needs 0e channels first in {self.irreps_out}")
        self.products = None
        if vector_products and any(ir.l == 1 for _, ir in self.irreps_mid):  # a scalar-only block has none
            self.products = VectorProducts(self.irreps_mid, vector_products, self.gate.irreps_in.count("0e"))
        self.context = None
        if context:
            self.context = nn.Sequential(nn.Linear(2 * self.n_scalars, self.n_scalars), nn.SiLU())
        self.ffn = None
        if ffn_hidden:
            self.ffn = nn.Sequential(nn.Linear(self.n_scalars, ffn_hidden), nn.SiLU(),
                                     nn.Linear(ffn_hidden, self.n_scalars))

    def forward(self, node_feats, edge_sh, edge_radial, edge_index, graph=None, n_graphs: int = 0) -> torch.Tensor:
        """`graph` [n_atoms] (each atom's structure) and `n_graphs`: needed with the structure context."""
        if node_feats.shape[-1] != self.dim_in:
            raise ValueError(
                f"node_feats last dim {node_feats.shape[-1]} != irreps_in.dim {self.dim_in} "
                f"({self.irreps_in})"
            )
        receiver, sender = edge_index[0], edge_index[1]
        x = self.linear_in(node_feats)  # [n_atoms, irreps_in (+ vector_channels x 0e)]
        if self.pair is None:
            weights = self.radial_mlp(edge_radial)  # [n_edges, tp.weight_numel]
        else:
            factor = self.pair(node_feats[:, : self.n_scalars_in], receiver, sender)
            if self.pair.out is None:  # the radial form
                *layers, last = self.radial_mlp  # (slicing e3nn's FullyConnectedNet does not work)
                hidden = edge_radial
                for layer in layers:
                    hidden = layer(hidden)  # [n_edges, radial_hidden[i]]
                weights = last(hidden * factor)
            else:
                weights = self.radial_mlp(edge_radial) * factor
        if self.written_out is None:
            messages = self.tp(x.index_select(0, sender), edge_sh, weights)  # [n_edges, irreps_mid]
            agg = messages.new_zeros(node_feats.shape[0], messages.shape[1]).index_add_(0, receiver, messages)
        else:
            agg = self.written_out.aggregate(x, edge_sh, weights, sender, receiver)  # [n_atoms, irreps_mid]
        agg = agg * self.norm
        gate_in = self.linear_out(agg)  # [n_atoms, gate.irreps_in]
        if self.products is not None:
            invariants = self.products(agg)  # [n_atoms, n 0e of the gate input]
            gate_in = torch.cat([gate_in[:, : invariants.shape[1]] + invariants,
                                 gate_in[:, invariants.shape[1]:]], dim=-1)
        out = self.gate(gate_in) + self.self_connection(node_feats)  # [n_atoms, irreps_out]
        if self.context is None and self.ffn is None:
            return out
        scalars = out[:, : self.n_scalars]  # [n_atoms, F] 0e
        if self.context is not None:
            if graph is None:
                raise ValueError("InteractionBlock with context=True needs graph and n_graphs")
            mean = mean_pool(scalars, graph, n_graphs).index_select(0, graph)  # [n_atoms, F]
            scalars = scalars + self.context(torch.cat([scalars, mean], dim=-1))
        if self.ffn is not None:
            scalars = scalars + self.ffn(scalars)  # per atom: no edge work
        return torch.cat([scalars, out[:, self.n_scalars:]], dim=-1)
