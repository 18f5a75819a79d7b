"""Model cost against cell size: forward + backward (energy, forces with create_graph, and the
backward of a loss on both: one training step's compute) and peak memory, for supercells of a
real crystal from 8 to 2,048 atoms, with and without the latent Ewald block, beside a peer e3nn
model of matched width (NequIP, `pip install nequip`) run on the very same batch and edges.

    python bench/model.py                      # CPU, writes bench/results/model.json
    python bench/model.py --device cuda        # GPU: peak = torch.cuda.max_memory_allocated

CPU peak memory: the process's resident-set high-water mark, reset before each measured step
through /proc/self/clear_refs, minus the resident set before it (Linux, glibc: allocations over
64 KiB are mmapped so freed tensors leave the resident set; small ones are below resolution).
Growth exponent: slope of log(time) and log(memory) against log(atoms), fitted from 64 atoms up.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from foundation.data.crystal import Crystal  # noqa: E402
from foundation.data.graph import collate, neighbor_graph  # noqa: E402
from foundation.model import FoundationModel, ModelConfig, TaskSpec  # noqa: E402
from foundation.model.config import building_dtype  # noqa: E402

# (reps) of the 8-atom cell: 8, 64, 216, 512, 1000, 2048 atoms
REPS = [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4), (5, 5, 5), (8, 8, 4)]
WIDTH = dict(cutoff=5.0, n_basis=8, cutoff_p=6, lmax=2, hidden_irreps="32x0e + 16x1o + 8x2e",
             n_layers=3, radial_hidden=(64,), avg_num_neighbors=30.0, head_hidden=32)
TASKS = [TaskSpec.for_target("energy"), TaskSpec.for_target("forces", forces_of="energy")]


def real_cell() -> Crystal:
    """AcCl3 (P6_3/m, 8 atoms, an ionic insulator) from the Materials Project sample."""
    from pymatgen.core import Structure

    with gzip.open(DATA / "materials_project" / "summary.jsonl.gz", "rt") as fh:
        for line in fh:
            row = json.loads(line)
            if row["formula_pretty"] == "AcCl3":
                s = Structure.from_dict(row["structure"])
                return Crystal.from_pymatgen(s, id="AcCl3", source="materials_project")
    raise SystemExit(f"AcCl3 not found in {DATA}/materials_project/summary.jsonl.gz")


def supercell(cell: Crystal, reps) -> Crystal:
    s = cell.to_pymatgen()
    s.make_supercell(list(reps))
    return Crystal.from_pymatgen(s, id=f"{cell.id}x{reps}", source=cell.source)


class Memory:
    """Peak extra memory (MiB) of one call: CUDA allocator peak, or the CPU RSS high-water mark."""

    def __init__(self, device: torch.device):
        """On CPU this changes glibc's allocation policy for the rest of the process (mmap
        and page faults on every large tensor): build it after the timings."""
        self.device = device
        self.libc = None
        if device.type == "cpu":
            import ctypes

            self.libc = ctypes.CDLL("libc.so.6")
            # Tensors above 64 KiB get their own mmap and go back to the OS when freed, so the
            # resident set follows the live tensors instead of glibc's cached heap.
            self.libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixes it: no dynamic growth)

    @staticmethod
    def _status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024.0  # kB -> MiB
        raise RuntimeError(f"{key} not in /proc/self/status")

    def measure(self, fn) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        self.libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = self._status("VmRSS")
        fn()
        return self._status("VmHWM") - base


def ours_step(model, batch):
    def step():
        model.zero_grad(set_to_none=True)
        p = model(batch)
        (p["energy"].sum() + p["forces"].square().sum()).backward()
    return step


def build_peer(numbers: list[int], dtype: torch.dtype, n_layers: int):
    """NequIP GNN of the same width: l_max 2 without odd-parity copies (32x0e, 16x1o, 8x2e),
    8 Bessels, p = 6, radial MLP 1 x 64, same cutoff and neighbour normalisation. NequIP's last
    layer keeps scalars only (a cheaper tensor product), ours keeps every irrep: with
    n_layers = 3 the layer counts match, with 4 the counts of full-irreps layers match."""
    from ase.data import chemical_symbols
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    with building_dtype(torch.get_default_dtype()), warnings.catch_warnings():
        set_global_state()  # it sets torch's default dtype to float64: restored on exit
        warnings.simplefilter("ignore")
        return NequIPGNNModel(
            seed=0, model_dtype=str(dtype).removeprefix("torch."),
            type_names=[chemical_symbols[z] for z in numbers], r_max=WIDTH["cutoff"], num_layers=n_layers,
            l_max=2, parity=False, num_features=[32, 16, 8], radial_mlp_depth=1, radial_mlp_width=64,
            num_bessels=8, polynomial_cutoff_p=6, avg_num_neighbors=WIDTH["avg_num_neighbors"],
            per_type_energy_scales=1.0, per_type_energy_shifts=0.0,
        )


def peer_step(model, batch, species: list[int]):
    from nequip.data import AtomicDataDict as K

    lookup = torch.full((119,), -1, dtype=torch.long, device=batch.numbers.device)
    lookup[torch.tensor(species, device=lookup.device)] = torch.arange(len(species), device=lookup.device)
    # nequip's edge convention is ours: edge_index[0] centre, r = pos[j] - pos[i] + shift @ cell.
    fixed = {K.EDGE_INDEX_KEY: batch.edge_index, K.EDGE_CELL_SHIFT_KEY: batch.edge_shift,
             K.CELL_KEY: batch.cell, K.PBC_KEY: batch.pbc, K.BATCH_KEY: batch.batch,
             K.NUM_NODES_KEY: batch.n_atoms, K.ATOM_TYPE_KEY: lookup[batch.numbers]}

    def step():
        model.zero_grad(set_to_none=True)
        out = model({**fixed, K.POSITIONS_KEY: batch.positions.clone()})
        (out[K.TOTAL_ENERGY_KEY].sum() + out[K.FORCE_KEY].square().sum()).backward()
    return step


def timed(steps: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds per step of each variant; variants interleaved within every repeat, so
    load from other processes on a shared machine falls on all of them alike."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for step in steps.values():
        step()  # warm-up (codegen, allocator)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def fit_exponent(atoms, values) -> float:
    x = np.log([a for a in atoms if a >= 64])
    y = np.log([v for a, v in zip(atoms, values) if a >= 64])
    return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 else float("nan")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    cores = len(os.sched_getaffinity(0))
    return f"{platform.processor() or platform.machine()} CPU, {cores} cores, {torch.get_num_threads()} torch threads"


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    cell = real_cell()
    species = sorted(set(cell.numbers.tolist()))
    variants = {
        "ours": FoundationModel(ModelConfig(**WIDTH), TASKS, dtype=dtype),
        "ours_ewald": FoundationModel(ModelConfig(**WIDTH, ewald_every=2), TASKS, dtype=dtype),
    }
    if not args.no_peer:
        variants["nequip3"] = build_peer(species, dtype, 3)
        variants["nequip4"] = build_peer(species, dtype, 4)
    for model in variants.values():
        model.to(device).train()
    batches = {}
    for reps in REPS:
        crystal = supercell(cell, reps)
        if crystal.n_atoms > args.max_atoms:
            break
        batches[crystal.n_atoms] = collate([neighbor_graph(crystal, WIDTH["cutoff"])], dtype=dtype).to(device)

    def step_of(name, batch):
        model = variants[name]
        return peer_step(model, batch, species) if name.startswith("nequip") else ours_step(model, batch)

    rows = []
    for n_atoms, batch in batches.items():  # timings first, with the default allocator
        repeats = args.repeats if n_atoms <= 512 else max(1, args.repeats - 1)
        row = {"atoms": n_atoms, "edges": batch.n_edges}
        seconds = timed({name: step_of(name, batch) for name in variants}, device, repeats)
        row.update({f"{name}_s": value for name, value in seconds.items()})
        print(json.dumps(row), flush=True)
        rows.append(row)
    memory = Memory(device)
    for row, batch in zip(rows, batches.values()):
        row.update({f"{name}_mib": memory.measure(step_of(name, batch)) for name in variants})
    atoms = [r["atoms"] for r in rows]
    result = {
        "benchmark": "forward + backward of energy and forces (create_graph) on one supercell",
        "machine": machine(device), "device": str(device), "dtype": args.dtype,
        "torch": torch.__version__, "structure": f"{cell.id} ({cell.source}), {cell.n_atoms} atoms",
        "config": {**WIDTH, "radial_hidden": list(WIDTH["radial_hidden"])},
        "ewald": "LatentEwald after block 2 (ewald_every=2), accuracy 1e-4",
        "rows": rows,
        "exponent": {f"{name}_{kind}": fit_exponent(atoms, [r[f"{name}_{unit}"] for r in rows])
                     for name in variants for kind, unit in (("time", "s"), ("memory", "mib"))},
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in variants.items()},
    }
    if not args.no_peer:
        import nequip

        result["peer"] = (f"nequip {nequip.__version__} NequIPGNNModel(num_layers=3 or 4, l_max=2, parity=False, "
                          "num_features=[32, 16, 8], radial_mlp_width=64), on the same batch and edges; "
                          "its last layer is scalars-only, so nequip4 has as many full-irreps layers as ours")
        result["ratio_ours_over_peer"] = [
            {"atoms": r["atoms"], **{f"{kind}_vs_{peer}": r[f"{ours}_{unit}"] / r[f"{peer}_{unit}"]
                                     for peer in ("nequip3", "nequip4")
                                     for ours, kind, unit in (("ours", "time", "s"), ("ours", "memory", "mib"),
                                                              ("ours_ewald", "time_ewald", "s"))}}
            for r in rows
        ]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--max-atoms", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="skip NequIP (not installed)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "model.json")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
