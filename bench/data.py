"""Data pipeline throughput: reading, sharding, streaming with graphs, beside pymatgen's and ASE's
neighbour lists on the very same structures (an mp2018 subset and OC20 slab frames).

    python bench/data.py                      # writes bench/results/data.json
    python bench/data.py --mp 2000 --no-full  # quicker: skip sharding all of mp2018
    python bench/data.py --mp 100 --pool 1000 --oc20-every 50 --no-full --repeat 1  # the quick slice

Structures per second, single process (the loader with num_workers=0), best of `--repeat` runs
for the neighbour lists. The neighbour-list peers: `Structure.get_neighbor_list(r)` (pymatgen,
its Cython cell list) and `ase.neighborlist.neighbor_list("ijS", atoms, r)` (ASE, numpy);
ours is `foundation.data.graph.neighbor_graph` (vesin). Edge counts are checked to agree, so
the three do the same work. Ratios are ours / peer (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from foundation.data import readers  # noqa: E402
from foundation.data.graph import neighbor_graph  # noqa: E402
from foundation.data.shards import write_shards  # noqa: E402
from foundation.data.shards.stream import LoaderConfig, build_loader  # noqa: E402

MP2018 = DATA / "mp2018" / "mp2018.json.gz"
OC20 = DATA / "oc20" / "trajectories"


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores (shared with other jobs), {platform.system()} {platform.release()}"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def read_sets(args) -> tuple[dict[str, list], dict[str, float]]:
    """The two structure sets and reading speed (structures/s) of each reader."""
    # the whole file by default (the reader parses it once); --pool: its first records only
    mp, t_mp = timed(lambda: list(itertools.islice(readers.read(MP2018), args.pool)))
    oc20, t_oc20 = timed(lambda: list(readers.read(OC20, format="ase")))
    speed = {"mp2018 (matbench json.gz)": len(mp) / t_mp, "oc20 (ase .traj frames)": len(oc20) / t_oc20}
    rng = np.random.default_rng(0)
    subset = [mp[i] for i in sorted(rng.choice(len(mp), args.mp, replace=False))]
    frames = oc20[:: args.oc20_every]
    return {"mp2018": subset, "oc20": frames, "_mp_all": mp}, speed


def neighbour_lists(structures, cutoff: float, repeat: int) -> dict:
    """structures/s of vesin (ours), pymatgen and ASE on the same structures; edge totals."""
    from ase.neighborlist import neighbor_list

    pmg = [c.to_pymatgen() for c in structures]
    ase_atoms = [c.to_ase() for c in structures]

    def ours():
        return sum(neighbor_graph(c, cutoff).n_edges for c in structures)

    def pymatgen():
        return sum(len(s.get_neighbor_list(cutoff)[0]) for s in pmg)

    def ase():
        return sum(len(neighbor_list("i", a, cutoff)) for a in ase_atoms)

    out = {}
    for name, fn in (("ours (vesin)", ours), ("pymatgen", pymatgen), ("ase", ase)):
        best, edges = float("inf"), None
        for _ in range(repeat):
            edges, t = timed(fn)
            best = min(best, t)
        out[name] = {"structures_per_s": len(structures) / best, "edges": int(edges)}
    mine = out["ours (vesin)"]
    for peer in ("pymatgen", "ase"):
        out[f"ratio ours/{peer}"] = mine["structures_per_s"] / out[peer]["structures_per_s"]
        out[f"edges agree with {peer}"] = out[peer]["edges"] == mine["edges"]
    return out


def shard_and_stream(name: str, structures, cutoff: float, workdir: Path) -> dict:
    out = workdir / name
    manifest, t_shard = timed(lambda: write_shards(structures, out, shard_size=500, progress=False,
                                                   fractions=(1.0, 0.0, 0.0)))
    config = LoaderConfig(cutoff=cutoff, max_atoms=512, shuffle_buffer=1000)
    loader = build_loader({name: str(out)}, "train", config)
    n, t_stream = timed(lambda: sum(b.n_graphs for b in loader))
    assert n == manifest["counts"]["written"], (n, manifest["counts"])
    # The same loader keeping records and graphs in memory (cache_mib): epoch 0 fills it, epoch 1
    # reads nothing from the shards and builds no neighbour list.
    cached = build_loader({name: str(out)}, "train", dataclasses.replace(config, cache_mib=8192))
    _, t_fill = timed(lambda: sum(b.n_graphs for b in cached.batches(0)))
    m, t_cached = timed(lambda: sum(b.n_graphs for b in cached.batches(1)))
    assert m == n and cached.cache.hits == n, (m, n, cached.cache.hits)
    atoms = manifest["counts"]["splits"]["train"]["atoms"]
    return {"structures": len(structures), "atoms_per_structure": atoms / max(n, 1),
            "shard_structures_per_s": len(structures) / t_shard,
            "stream_structures_per_s (graphs + collate)": n / t_stream, "batches": len(loader),
            "stream_structures_per_s, cache_mib: epoch 0 (filling)": n / t_fill,
            "stream_structures_per_s, cache_mib: epoch 1 (from memory)": m / t_cached,
            "cache_mib_used": cached.cache.bytes / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mp", type=int, default=3000, help="mp2018 structures in the subset")
    p.add_argument("--pool", type=int, default=None, help="read only the first POOL mp2018 records (default: all)")
    p.add_argument("--oc20-every", type=int, default=5, help="every k-th OC20 trajectory frame")
    p.add_argument("--cutoff", type=float, default=5.0, help="neighbour cutoff, Å")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--no-full", action="store_true", help="skip sharding the whole of mp2018")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "data.json"))
    args = p.parse_args(argv)

    sets, read_speed = read_sets(args)
    result = {"machine": machine(), "cutoff_A": args.cutoff, "reading_structures_per_s": read_speed,
              "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mp2018", "oc20"):
            structures = sets[name]
            entry = shard_and_stream(name, structures, args.cutoff, Path(tmp))
            entry["neighbour_lists"] = neighbour_lists(structures, args.cutoff, args.repeat)
            result["sets"][name] = entry
            print(name, json.dumps(entry, indent=1), flush=True)
        if not args.no_full:
            everything = sets["_mp_all"]
            manifest, t = timed(lambda: write_shards(everything, Path(tmp) / "full", progress=False))
            result["mp2018_full_shard"] = {
                "structures": len(everything), "seconds": t, "structures_per_s": len(everything) / t,
                "workers": 1, "note": f"validation, edge counts at {manifest['sizes']['edge_cutoffs']} Å, fingerprints, "
                                      "tar + sha256, statistics; reading not included (reading_structures_per_s)",
                "written": manifest["counts"]["written"]}
            print("full mp2018:", result["mp2018_full_shard"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
