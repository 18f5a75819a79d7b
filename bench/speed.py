"""Speed beside real peer packages, in one process, on the same structures: inference atoms/s and
peak memory of our encoder against CHGNet and SevenNet-0 (`pip install -e '.[bench]'`; a peer that
is not installed gets the row "not installed"), scaling with atoms per cell (8 to 2,048), training
atoms/s of ours on 1 and 2 processes through the real launcher, training steps eager and under
torch.compile (`compile: true`) at 256-4,096-atom batches, and the share of a training step
spent in reading, neighbour search, collation, forward, backward and the optimiser. Writes
bench/results/speed.json.

    python bench/speed.py                 # about 7 minutes on 2 cores
    python bench/speed.py --quick         # a small slice (the test suite's run_all --quick)

Every model computes energies and forces (forces by autograd), float32, `--threads` torch threads
(2: the machine's cores). Ours is `configs/model/<--model>.yaml` with fresh weights (speed does not
depend on the weights). Ratios are ours / peer atoms per second: above 1 we are faster.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from pathlib import Path

import torch

from _common import ROOT, machine, run_finetune
from foundation.config import from_dict, load_yaml
from foundation.data import readers
from foundation.data.crystal import Crystal
from foundation.data.graph import collate, neighbor_graph
from foundation.model import FoundationModel, ModelConfig, TaskSpec

MP2018 = ROOT.parent / "shared" / "data" / "mp2018" / "mp2018.json.gz"


class PeakRSS:
    """The largest resident-set increase (MiB) over the `with` block, sampled every 5 ms."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.mib = max(self.peak, self._rss()) - self.base


def _ours(model_name: str) -> FoundationModel:
    config = from_dict(ModelConfig, load_yaml(ROOT / f"configs/model/{model_name}.yaml"))
    tasks = [TaskSpec.for_target("energy"), TaskSpec.for_target("forces", forces_of="energy")]
    torch.manual_seed(0)
    return FoundationModel(config, tasks).eval()


def predictors(model_name: str, batch_size: int) -> dict:
    """{name: callable(list of Crystal) -> None computing energies and forces} and why a peer is missing."""
    out, missing = {}, {}
    ours = _ours(model_name)

    def run_ours(crystals):
        for k in range(0, len(crystals), batch_size):
            graphs = [neighbor_graph(c, ours.config.cutoff) for c in crystals[k:k + batch_size]]
            ours(collate(graphs))

    out[f"ours ({model_name})"] = run_ours
    try:
        from chgnet.model import CHGNet  # a peer, installed by the bench extra

        chgnet = CHGNet.load(verbose=False)
        out["CHGNet 0.4"] = lambda crystals: chgnet.predict_structure(
            [c.to_pymatgen() for c in crystals], task="ef", batch_size=batch_size)
    except ImportError as exc:
        missing["CHGNet 0.4"] = f"not installed ({exc})"
    try:
        from sevenn.calculator import SevenNetCalculator  # a peer, installed by the bench extra

        calc = SevenNetCalculator("7net-0", device="cpu")

        def run_sevennet(crystals):
            for c in crystals:  # its ASE calculator: one structure a call
                atoms = c.to_ase()
                calc.reset()  # an ASE calculator returns its cached results for unchanged atoms
                atoms.calc = calc
                atoms.get_forces()

        out["SevenNet-0"] = run_sevennet
    except ImportError as exc:
        missing["SevenNet-0"] = f"not installed ({exc})"
    return out, missing


def _timed(fn, crystals, repeats: int) -> dict:
    fn(crystals[: max(1, len(crystals) // 10)])  # warm-up (lazy initialisation, caches)
    atoms = sum(c.n_atoms for c in crystals)
    times = []
    with PeakRSS() as memory:
        for _ in range(repeats):
            start = time.perf_counter()
            fn(crystals)
            times.append(time.perf_counter() - start)
    best = min(times)
    return {"atoms_per_s": atoms / best, "seconds": best, "atoms": atoms, "peak_rss_increase_mib": round(memory.mib, 1)}


def inference(models: dict, crystals: list, repeats: int) -> dict:
    return {name: _timed(fn, crystals, repeats) for name, fn in models.items()}


def scaling(models: dict, cell, sizes: list[int], repeats: int) -> dict:
    """atoms/s against atoms per cell: supercells of one small cell, one structure a call."""
    out = {}
    for target in sizes:
        reps = max(1, round((target / cell.n_atoms) ** (1 / 3)))
        big = cell.to_pymatgen() * (reps, reps, reps)
        crystal = Crystal.from_pymatgen(big, id=f"{cell.id}x{reps}", source=cell.source)
        out[str(crystal.n_atoms)] = {name: _timed(fn, [crystal], repeats) for name, fn in models.items()}
    return out


def step_profile(model_name: str, crystals: list, batch_size: int, steps: int) -> dict:
    """Seconds per training step of ours by phase: records from shards are the loader's work, so
    reading is timed as decoding our shard format; then neighbour search, collation, forward
    (energy and forces), backward, optimiser."""
    from foundation.data.shards import decode_record, encode_record

    model = _ours(model_name).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    encoded = [encode_record(c, f"{i:09d}") for i, c in enumerate(crystals)]
    phases = dict.fromkeys(("reading", "neighbour_search", "collation", "forward", "backward", "optimizer"), 0.0)
    atoms = 0
    for step in range(steps):
        chunk = encoded[(step * batch_size) % len(encoded):][:batch_size]
        t = time.perf_counter()
        records = [decode_record(sample) for sample in chunk]
        t, phases["reading"] = time.perf_counter(), phases["reading"] + time.perf_counter() - t
        graphs = [neighbor_graph(c, model.config.cutoff) for c in records]
        t, phases["neighbour_search"] = time.perf_counter(), phases["neighbour_search"] + time.perf_counter() - t
        batch = collate(graphs)
        t, phases["collation"] = time.perf_counter(), phases["collation"] + time.perf_counter() - t
        out = model(batch)
        loss = out["energy"].square().mean() + out["forces"].square().mean()
        t, phases["forward"] = time.perf_counter(), phases["forward"] + time.perf_counter() - t
        loss.backward()
        t, phases["backward"] = time.perf_counter(), phases["backward"] + time.perf_counter() - t
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        phases["optimizer"] += time.perf_counter() - t
        atoms += int(batch.n_atoms.sum())
    total = sum(phases.values())
    return {"steps": steps, "structures_per_step": batch_size, "atoms_per_s": atoms / total,
            "seconds_per_step": total / steps, "share": {k: v / total for k, v in phases.items()}}


def _batches(crystals: list, cutoff: float, max_atoms: int) -> list:
    """Consecutive full batches of at most `max_atoms` atoms (the last, partial one is left out)."""
    batches, chunk, atoms = [], [], 0
    for crystal in crystals:
        if chunk and atoms + crystal.n_atoms > max_atoms:
            batches.append(collate([neighbor_graph(c, cutoff) for c in chunk]))
            chunk, atoms = [], 0
        chunk.append(crystal)
        atoms += crystal.n_atoms
    return batches


def compiled_steps(model_name: str, crystals: list, sizes: list[int], steps: int,
                   modes: tuple[str, ...] = ("eager", "compiled")) -> dict:
    """Training atoms/s of one process (one thread, as each rank of a 2-process run) eager and under
    `compile: true` (RunConfig.compile: the training forward through torch.compile, dynamic shapes),
    on the same mp2018 formation-energy batches of each size in `sizes` (atoms per batch; a
    structure-level task: compile refuses forces). One model per mode serves every size, so the
    compiled one compiles once; the first two steps of each size are left out of its rate. `modes`:
    the quick slice runs eager alone (a cold compile takes 30-50 s here; tests/model/test_compile.py
    checks the compiled step)."""
    from foundation.train.loop import Objective
    from foundation.train.loss import MultiTaskLoss

    config = from_dict(ModelConfig, load_yaml(ROOT / f"configs/model/{model_name}.yaml"))
    task = TaskSpec.for_target("formation_energy_per_atom")
    by_size = {size: _batches(crystals, config.cutoff, size) for size in sizes}
    for size, batches in by_size.items():
        if len(batches) < 3 or task.name not in batches[0].targets:
            raise SystemExit(f"compiled_steps: too few {size}-atom batches with the label {task.name!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {"sizes": sizes, "steps": steps, "threads": 1}
    for mode in modes:
        torch.manual_seed(0)
        objective = Objective(FoundationModel(config, [task]), MultiTaskLoss([task], mode="fixed"),
                              compile=mode == "compiled").train()
        optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3)
        out[mode] = {}
        for size, batches in by_size.items():
            times, atoms = [], 0
            for i in range(steps + 2):
                batch = batches[i % len(batches)]
                t = time.perf_counter()
                loss, _, _ = objective(batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - t)
                atoms += int(batch.n_atoms.sum()) if i >= 2 else 0
            out[mode][str(size)] = {"first_two_steps_s": sum(times[:2]), "atoms_per_s": atoms / sum(times[2:])}
    torch.set_num_threads(threads)
    if "compiled" not in out or "eager" not in out:
        return out
    out["compiled_over_eager"] = {str(size): out["compiled"][str(size)]["atoms_per_s"] / out["eager"][str(size)]["atoms_per_s"]
                                  for size in sizes}
    return out


def training_processes(model_name: str, budget: str, work: Path) -> dict:
    """Training atoms/s of ours through the real launcher (mp2018 formation energy) on 1 and 2 processes."""
    out = {}
    for nproc in (1, 2):
        summary = run_finetune(["--config", "configs/finetune/formation_energy.yaml", "--model",
                                f"configs/model/{model_name}.yaml", f"max_time={budget}", "max_steps=null",
                                "early_stopping.enabled=false", "eval.every=100000", "data.limit=3000"],
                               work / f"nproc{nproc}", nproc)
        out[str(nproc)] = {"atoms_per_s": summary["training"]["atoms_per_s"], "steps": summary["steps"],
                           "train_seconds": summary["train_seconds"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", help="configs/model/<name>.yaml of ours (default: the default encoder)")
    parser.add_argument("--structures", type=int, default=200, help="mp2018 structures for inference")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 216, 512, 1000, 2048])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-budget", default="60s", help="wall clock of each training-throughput run")
    parser.add_argument("--quick", action="store_true", help="20 structures, cells up to 64 atoms, no launcher runs")
    parser.add_argument("--work", default="work/bench_speed")
    parser.add_argument("--out", default="bench/results/speed.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.structures, args.sizes, args.repeats = 20, [8, 64], 1
    torch.set_num_threads(args.threads)
    records = (c for c in readers.read(MP2018, "matbench") if isinstance(c, Crystal))
    crystals = list(itertools.islice(records, args.structures))
    start = time.perf_counter()
    models, missing = predictors(args.model, args.batch_size)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "threads": args.threads, "torch": torch.__version__, "structures": len(crystals),
              "atoms": sum(c.n_atoms for c in crystals), "missing": missing}
    result["inference"] = inference(models, crystals, args.repeats)
    ours = f"ours ({args.model})"
    result["ratios_ours_over_peer"] = {name: result["inference"][ours]["atoms_per_s"] / r["atoms_per_s"]
                                       for name, r in result["inference"].items() if name != ours}
    cell = min(crystals, key=lambda c: (c.n_atoms != 8, c.n_atoms))
    result["scaling"] = scaling(models, cell, args.sizes, args.repeats)
    result["step_profile"] = step_profile(args.model, crystals, args.batch_size, 10 if args.quick else 40)
    if args.quick:
        result["compiled_steps"] = compiled_steps(args.model, crystals, [64], 2, modes=("eager",))
    else:
        mp = list(itertools.islice((c for c in readers.read(MP2018, "matbench") if isinstance(c, Crystal)), 8000))
        result["compiled_steps"] = compiled_steps(args.model, mp, [256, 1024, 4096], 30)
        result["training_processes"] = training_processes(args.model, args.train_budget, ROOT / args.work)
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"inference, energy + forces, {result['atoms']} atoms in {len(crystals)} mp2018 structures, "
          f"{args.threads} threads ({result['machine']}):")
    for name, r in result["inference"].items():
        print(f"  {name:<16} {r['atoms_per_s']:>9.0f} atoms/s  peak +{r['peak_rss_increase_mib']:.0f} MiB")
    for name, ratio in result["ratios_ours_over_peer"].items():
        print(f"  ours / {name}: {ratio:.2f}x")
    for name, why in missing.items():
        print(f"  {name}: {why}")
    print("step profile (share of a training step): " + ", ".join(
        f"{k} {v:.0%}" for k, v in result["step_profile"]["share"].items()))
    if "compiled_over_eager" in result["compiled_steps"]:
        c = result["compiled_steps"]
        for size in c["sizes"]:
            eager, compiled = c["eager"][str(size)], c["compiled"][str(size)]
            print(f"training steps of {size} atoms, 1 thread: eager {eager['atoms_per_s']:.0f} atoms/s, compiled "
                  f"{compiled['atoms_per_s']:.0f} ({c['compiled_over_eager'][str(size)]:.2f}x; first two steps "
                  f"{compiled['first_two_steps_s']:.1f} s)")
    print(f"total {result['total_seconds']:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
