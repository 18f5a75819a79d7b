"""A corpus of a million structures from the sample, and what the data path does with it.

    python bench/corpus.py --n 1000000 --processes 2      # writes bench/results/corpus.json
    python bench/corpus.py --n 20000 --processes 2        # a quick run

1. Generate and shard: `--processes` processes, each owning every p-th block of indices, build
   strained and substituted copies of mp2018 structures (a random symmetric strain of up to 3 %,
   and with probability 1/2 one element swapped for its neighbour in the same group, formation energy
   shifted by a made-up amount so labels vary) and write them as shards into their own directory
   (`write_shards`, no duplicate search: the copies are near-duplicates on purpose). Structures/s per
   process and in all.
2. Statistics: the sums every shard directory's manifest carries are combined (`statistics.combine`)
   into the corpus's label moments and element references: one pass, memory independent of size.
3. The loader's resident memory: a fresh process builds the training loader over the first 10,000
   records and, separately, over all of them, and draws the same 200 batches; RSS after each.
4. Equal batches: the plan of one epoch over every shard for 2 ranks x 2 workers: batches per rank,
   every record exactly once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.data import MP2018, machine  # noqa: E402

BLOCK = 1000  # records per generation block (and per shard)
# a same-group neighbour for substitutions (Z -> Z'), both ways
_GROUPS = [(3, 11), (11, 19), (12, 20), (20, 38), (13, 31), (14, 32), (15, 33), (16, 34), (9, 17), (17, 35),
           (22, 40), (23, 41), (24, 42), (25, 43), (26, 44), (27, 45), (28, 46), (29, 47), (30, 48), (38, 56)]
SWAP = {a: b for a, b in _GROUPS} | {b: a for a, b in _GROUPS}


def _pool(n: int):
    from foundation.data import readers

    out = []
    for c in readers.read(str(MP2018)):
        if c.n_atoms <= 40 and "formation_energy_per_atom" in c.targets:
            out.append(c)
        if len(out) >= n:
            break
    return out


def _copies(pool, start: int, stop: int):
    from foundation.data import Crystal

    for i in range(start, stop):
        base = pool[i % len(pool)]
        rng = np.random.default_rng(i)
        e = rng.uniform(-0.03, 0.03, (3, 3))
        strain = np.eye(3) + (e + e.T) / 2
        numbers = np.array(base.numbers)
        shift = 0.0
        if rng.random() < 0.5:
            swappable = [k for k, z in enumerate(numbers) if int(z) in SWAP]
            if swappable:
                z = int(numbers[rng.choice(swappable)])
                numbers = np.where(numbers == z, SWAP[z], numbers)
                shift = float(rng.normal(0, 0.2))
        targets = {"formation_energy_per_atom": float(base.targets["formation_energy_per_atom"]) + shift}
        yield Crystal(numbers, np.asarray(base.positions) @ strain, np.asarray(base.cell) @ strain, True, targets,
                      id=f"c{i}", source="corpus")


def _shard_part(args) -> dict:
    part, n_parts, n, out, pool_size = args
    from foundation.data.shards import write_shards

    pool = _pool(pool_size)
    blocks = [b for b in range(0, n, BLOCK) if (b // BLOCK) % n_parts == part]

    def records():
        for b in blocks:
            yield from _copies(pool, b, min(b + BLOCK, n))

    start = time.perf_counter()
    manifest = write_shards(records(), Path(out) / f"part{part}", shard_size=BLOCK, dedup=False, progress=False,
                            fractions=(0.98, 0.01, 0.01), edge_cutoffs=(5.0,), write_shuffle=1, overwrite=True)
    seconds = time.perf_counter() - start
    return {"part": part, "records": manifest["counts"]["written"], "rejected": manifest["counts"]["rejected"],
            "seconds": seconds, "structures_per_s": manifest["counts"]["read"] / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def generate(n: int, out: Path, processes: int, pool_size: int) -> dict:
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_shard_part, [(p, processes, n, str(out), pool_size) for p in range(processes)])
    wall = time.perf_counter() - start
    return {"structures": n, "processes": processes, "wall_seconds": wall, "structures_per_s": n / wall,
            "structures_per_s_per_process": float(np.mean([p["structures_per_s"] for p in parts])), "parts": parts}


def statistics(out: Path) -> dict:
    from foundation.data.shards.format import read_manifest
    from foundation.data.shards.statistics import combine, summarize

    start = time.perf_counter()
    manifests = [read_manifest(str(d)) for d in sorted(out.glob("part*"))]
    state = combine([m["label_sums"] for m in manifests])
    summary = summarize(state)
    moments = state["moments"]["formation_energy_per_atom"]
    return {"seconds": time.perf_counter() - start, "records": int(moments[0]),
            "mean": moments[1] / moments[0], "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "element_references": len(summary["element_references"].get("formation_energy_per_atom", {}))}


_RSS_PROBE = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from foundation.data.shards.stream import LoaderConfig, build_loader
from foundation.data.shards.format import read_manifest
parts, limit, batches = sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

import torch  # imported by the loader anyway: the baseline includes it
base = rss()
if limit:  # the first `limit` records: the tar URLs of the first shards of part0
    m = read_manifest(parts[0])
    files, n = [], 0
    for e in m["shards"]["train"]:
        files.append(parts[0] + "/" + e["file"]); n += e["records"]
        if n >= limit: break
    datasets = {"corpus": files}
else:
    datasets = {f"part{i}": p for i, p in enumerate(parts)}
t = time.perf_counter()
loader = build_loader(datasets, "train", LoaderConfig(cutoff=5.0, max_atoms=256, shuffle_buffer=1000))
built = time.perf_counter() - t
after_build = rss()
it = iter(loader)
for _ in range(batches):
    next(it)
print(json.dumps({"records": sum(len(a) for s in loader.sources for a in s.n_atoms), "batches_per_epoch": len(loader),
                  "rss_mib_baseline": base, "rss_mib_after_build": after_build, "rss_mib_after_batches": rss(),
                  "build_seconds": built}))
"""


def loader_memory(out: Path, batches: int) -> dict:
    parts = ",".join(str(d) for d in sorted(out.glob("part*")))
    result = {}
    for name, limit in (("10k", 10000), ("all", 0)):
        proc = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(ROOT), parts, str(limit), str(batches)],
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        result[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["rss_ratio_all_over_10k"] = result["all"]["rss_mib_after_batches"] / result["10k"]["rss_mib_after_batches"]
    return result


def equal_batches(out: Path) -> dict:
    from foundation.data.shards.packing import plan_epoch, worker_batches
    from foundation.data.shards.sources import resolve_sources

    sources = [resolve_sources(d.name, str(d), "train", 5.0, False) for d in sorted(out.glob("part*"))]
    shards = sum(len(s.shards) for s in sources)
    start = time.perf_counter()
    plan = plan_epoch(sources, epoch=0, seed=0, world_size=2, n_workers=2, max_atoms=256)
    seconds = time.perf_counter() - start
    per_rank = [len(b) for b in plan.rank_batches]
    per_worker = [[len(worker_batches(plan, r, w, 2, 0)) for w in range(2)] for r in range(2)]
    items = np.concatenate([b for r in range(2) for b, pad in zip(plan.rank_batches[r], plan.padding[r]) if not pad])
    keys = np.stack([plan.dataset[items], plan.shard[items], plan.record[items]], axis=1)
    once = len(np.unique(keys, axis=0)) == len(keys) == sum(s.n_records for s in sources)
    return {"shards": shards, "ranks": 2, "workers_per_rank": 2, "batches_per_rank": per_rank,
            "batches_per_worker": per_worker, "every_record_once": bool(once), "plan_seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--pool", type=int, default=5000, help="mp2018 structures the copies are made from")
    p.add_argument("--workdir", default=str(ROOT / "work" / "corpus"))
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--keep", action="store_true", help="reuse the shards of an earlier run of the same --n")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "corpus.json"))
    args = p.parse_args(argv)
    work = Path(args.workdir) / str(args.n)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python bench/corpus.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if not (args.keep and (work / "part0" / "manifest.json").exists()):
        result["sharding"] = generate(args.n, work, args.processes, args.pool)
        print(json.dumps(result["sharding"], indent=1), flush=True)
    elif Path(args.out).is_file():  # the shards of the earlier run: its sharding numbers stand
        earlier = json.loads(Path(args.out).read_text())
        if earlier.get("sharding", {}).get("structures") == args.n:
            result["sharding"] = {**earlier["sharding"], "measured": earlier.get("date"),
                                  "command": earlier.get("command")}
    result["statistics"] = statistics(work)
    print(json.dumps(result["statistics"], indent=1), flush=True)
    result["equal_batches"] = equal_batches(work)
    print(json.dumps(result["equal_batches"], indent=1), flush=True)
    result["loader_memory"] = loader_memory(work, args.batches)
    print(json.dumps(result["loader_memory"], indent=1), flush=True)
    result["disk_bytes"] = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
