"""One training step's model cost on real mp2018 batches, one thread, for model configs side by side:
forward, backward and an AdamW step on 1,024-atom batches of shuffled mp2018 structures at the
config's cutoff (no loader, no DeepSpeed: the model alone), interleaved so the VM's drift hits every
config alike. With `--tune-allocator` the process first applies the training processes' malloc
settings (foundation/train/allocator.py).

    python bench/step_time.py --models configs/model/small.yaml "configs/model/small.yaml vector_channels=0"
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from foundation.config import from_dict, load_yaml  # noqa: E402
from foundation.data.graph import collate, neighbor_graph  # noqa: E402
from foundation.data.readers.matbench import read_matbench  # noqa: E402
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats  # noqa: E402
from foundation.train.allocator import tune_host_allocator  # noqa: E402

from _common import machine  # noqa: E402

TARGET = "formation_energy_per_atom"


def model_config(spec: str) -> ModelConfig:
    """"PATH key=value ..." -> the config at PATH with those fields replaced."""
    path, *overrides = spec.split()
    config = from_dict(ModelConfig, load_yaml(ROOT / path))
    return dataclasses.replace(config, **{k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)})


def batches(cutoff: float, n: int, max_atoms: int, seed: int = 0) -> list:
    crystals = list(itertools.islice(read_matbench(ROOT.parent / "shared/data/mp2018/mp2018.json.gz"), 6000))
    random.Random(seed).shuffle(crystals)
    out, current, atoms = [], [], 0
    for crystal in crystals:
        if atoms + len(crystal.numbers) > max_atoms:
            out.append(collate([neighbor_graph(c, cutoff) for c in current]))
            current, atoms = [], 0
            if len(out) == n:
                break
        current.append(crystal)
        atoms += len(crystal.numbers)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["configs/model/small.yaml"])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--max-atoms", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tune-allocator", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    allocator = tune_host_allocator() if args.tune_allocator else "glibc defaults"
    configs = {spec: model_config(spec) for spec in args.models}
    data = {}
    times = {spec: [] for spec in configs}
    for _ in range(args.rounds):
        for spec, config in configs.items():
            if config.cutoff not in data:
                data[config.cutoff] = batches(config.cutoff, args.batches, args.max_atoms)
            torch.manual_seed(0)
            model = FoundationModel(config, [TaskSpec.for_target(TARGET)], {TARGET: TaskStats((0.0,), (1.0,), {})})
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            for batch in data[config.cutoff][:2]:  # warm-up
                model(batch)[TARGET].sum().backward()
            start = time.perf_counter()
            for batch in data[config.cutoff]:
                optimizer.zero_grad()
                model(batch)[TARGET].abs().mean().backward()
                optimizer.step()
            times[spec].append((time.perf_counter() - start) / len(data[config.cutoff]) * 1000)
    result = {"machine": machine(), "threads": 1, "allocator": allocator, "batches": args.batches,
              "max_atoms": args.max_atoms, "ms_per_step": times,
              "median_ms": {spec: statistics.median(t) for spec, t in times.items()}}
    for spec, t in times.items():
        print(f"{statistics.median(t):7.1f} ms per step (rounds: {', '.join(f'{x:.1f}' for x in t)})  {spec}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
