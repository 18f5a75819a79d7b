"""The search that chose the default encoder (`configs/model/small.yaml`): candidate model configs
trained from scratch on mp2018 formation energy at one equal wall-clock budget each, 2 processes,
the task config's settings, scored on the VALIDATION split only (the test split is left to
`accuracy.py`, scored once for the chosen config). Writes bench/results/encoder_search.json.

    python bench/encoder_search.py                       # every candidate, 4 minutes each (~35 min)
    python bench/encoder_search.py --only small --budget 2m

Each candidate changes one or two levers of issue 12 against its neighbour in the list: the cutoff
(edges per atom), depth, l = 1 vector channels against scalars only, and the structure-context
update (`context`). `--settings` runs the chosen candidates again under other training settings
(evaluation cadence, learning rate, batch size, EMA), each a set of overrides of the task config:

    python bench/encoder_search.py --only small --settings "256 atoms, lr 5e-3, eval every 100" "eval every 1000"

`--task` runs the search on another of `accuracy.py`'s tasks (its finetune config, its task's
validation MAE): the small-cell, data-bound tasks (elasticity, perovskites) may want more edges,
depth or width than the throughput-bound formation energy chose:

    python bench/encoder_search.py --task log_gvrh --budget 10m --only small "small, 5 A" "small, Ewald"
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import ROOT, budget_overrides, machine, run_finetune
from accuracy import TASKS

COMMON = {"n_basis": 8, "cutoff_p": 6, "head_hidden": 64, "max_atomic_number": 118}
SMALL = yaml.safe_load((ROOT / "configs/model/small.yaml").read_text())
CGCNN = yaml.safe_load((ROOT / "configs/model/cgcnn.yaml").read_text())
# name -> model config (everything else: the --task's finetune config)
CANDIDATES = {
    "64x0e+16x1o, 3 blocks, 5 A": dict(hidden_irreps="64x0e + 16x1o", lmax=1, n_layers=3, radial_hidden=[64],
                                      cutoff=5.0, avg_num_neighbors=33.0),
    "64x0e+16x1o, 3 blocks, 4 A": dict(hidden_irreps="64x0e + 16x1o", lmax=1, n_layers=3, radial_hidden=[64],
                                      cutoff=4.0, avg_num_neighbors=17.0),
    "64x0e+16x1o, 2 blocks, 4 A": dict(hidden_irreps="64x0e + 16x1o", lmax=1, n_layers=2, radial_hidden=[32],
                                      cutoff=4.0, avg_num_neighbors=17.0),
    "128x0e, 3 blocks, 4 A": dict(hidden_irreps="128x0e", lmax=0, n_layers=3, radial_hidden=[32], cutoff=4.0,
                                  avg_num_neighbors=17.0),
    "128x0e, 3 blocks, 4 A, context": dict(hidden_irreps="128x0e", lmax=0, n_layers=3, radial_hidden=[32],
                                           cutoff=4.0, avg_num_neighbors=17.0, context=True),
    "64x0e+16x1o, 2 blocks, 4 A, context": dict(hidden_irreps="64x0e + 16x1o", lmax=1, n_layers=2,
                                                radial_hidden=[32], cutoff=4.0, avg_num_neighbors=17.0,
                                                context=True),  # the default until scalar_last
    "small": "configs/model/small.yaml",  # 64x0e+16x1o, 2 blocks, 4 A, context, scalar last block
    "64x0e+16x1o, 3 blocks, 4 A, context, scalar last": dict(hidden_irreps="64x0e + 16x1o", lmax=1, n_layers=3,
                                                             radial_hidden=[32], cutoff=4.0, avg_num_neighbors=17.0,
                                                             context=True, scalar_last=True),
    "128x0e+8x1o, 3 blocks, 4 A, context": dict(hidden_irreps="128x0e + 8x1o", lmax=1, n_layers=3,
                                                radial_hidden=[32], cutoff=4.0, avg_num_neighbors=17.0,
                                                context=True),
    # `small` with one lever moved, for the data-bound tasks (`--task`): more edges, the long-range
    # block (session 16: after the last block, whose vectors it was then thought to read; it reads
    # 0e only, see the twenty-seventh session's candidates), more width, depth and width
    "small, 5 A": {**SMALL, "cutoff": 5.0, "avg_num_neighbors": 33.0},
    "small, Ewald": {**SMALL, "ewald_every": 2, "scalar_last": False},
    "small, 128x0e+16x1o": {**SMALL, "hidden_irreps": "128x0e + 16x1o"},
    "small, 3 blocks, 128x0e+16x1o": {**SMALL, "n_layers": 3, "hidden_irreps": "128x0e + 16x1o"},
    # the fourth round (formation energy): CGCNN's neighbour cap (nearest shells kept whole) on a
    # longer cutoff, scalars only at twice the width, a finer radial basis
    "small, 5 A, 12 nearest": {**SMALL, "cutoff": 5.0, "max_neighbors": 12, "avg_num_neighbors": 13.0},
    "small, 6 A, 12 nearest": {**SMALL, "cutoff": 6.0, "max_neighbors": 12, "avg_num_neighbors": 13.0},
    "small, 128x0e": {**SMALL, "hidden_irreps": "128x0e", "lmax": 0},
    "small, 16 Bessel, radial 64": {**SMALL, "n_basis": 16, "radial_hidden": [64]},
    # the periodic table's element descriptors added to the species embedding (CGCNN's input),
    # for ours and, so that the baseline gets what helps ours, for CGCNN
    "small, element features": {**SMALL, "element_features": True},
    # the twenty-first session (the moduli, data-bound): edge directions to l = 2 (bond angles enter
    # the vector messages through 2 x 1 -> 1 paths; the general e3nn product), and twice the vectors
    "small, edges to l = 2": {**SMALL, "lmax": 2},
    "small, 128x0e+32x1o": {**SMALL, "hidden_irreps": "128x0e + 32x1o"},
    # the twenty-second session (on the moduli ours overfits after ~2,000-2,700 steps): dropout on the invariants
    # the heads read; position noise is a task setting (`--extra position_noise=0.03`)
    "small, dropout 0.1": {**SMALL, "dropout": 0.1},
    "small, dropout 0.2": {**SMALL, "dropout": 0.2},
    "small, 32x0e+8x1o": {**SMALL, "hidden_irreps": "32x0e + 8x1o", "head_hidden": 32},  # fewer weights to overfit
    # the twenty-fifth session (the moduli): the structure's packing (volume per atom, packing
    # fraction, volume against the elemental solids'; foundation/nn/cell.py) on every atom
    "small, cell features": {**SMALL, "cell_features": True},
    # the twenty-sixth session: the edge weights gated by both atoms' scalars (CGCNN's pair dependence)
    "small, pair gate 32": {**SMALL, "pair_hidden": 32},
    "small, pair gate 64": {**SMALL, "pair_hidden": 64},
    "small, pair gate on the radial layer": {**SMALL, "pair_hidden": 32, "pair_radial": True},
    # the twenty-seventh session: the latent Ewald block (it reads and writes scalars only, so the
    # scalar-only last block stays) after the last block, or after both
    "small, Ewald, scalar last": {**SMALL, "ewald_every": 2},
    "small, Ewald after both blocks": {**SMALL, "ewald_every": 1},
    # and a per-atom feed-forward update of each block's scalars (nonlinear depth without edge work)
    "small, FFN 128": {**SMALL, "ffn_hidden": 128},
    "small, FFN 256": {**SMALL, "ffn_hidden": 256},
    # the twenty-eighth session: invariants from the first block's aggregated vector messages before
    # its gate (MACE's correlation-2 product on l = 1: bond angles reach the scalars one block earlier)
    "small, vector products 32": {**SMALL, "vector_products": 32},
    "small, vector products 64": {**SMALL, "vector_products": 64},
    # and the first block's vector messages from 16 scalar mixtures instead of all 64 (fewer per-edge floats)
    "small, 16 vector channels": {**SMALL, "vector_channels": 16},
    "small, 8 vector channels": {**SMALL, "vector_channels": 8},
    "cgcnn": CGCNN,
    "cgcnn, cell features": {**CGCNN, "cell_features": True},
    "cgcnn, element features": {**CGCNN, "element_features": True},
}

# The settings search started from the task config of the second round; each setting below is spelled
# out in full from there, so the search reruns the same way whatever the task config now holds.
_ROUND2 = {"eval.every": 100, "checkpoints.every": 500, "loader.max_atoms": 256, "optimizer.lr": 5.0e-3,
           "ema.decay": 0.99}
_SPARSE = {**_ROUND2, "eval.every": 1000, "checkpoints.every": 2000}
# name -> overrides of configs/finetune/formation_energy.yaml (the training settings, not the model)
SETTINGS = {
    "task config": {},  # whatever the task config holds (since the third round: 1,024 atoms, lr 1e-2, eval every 1000)
    "256 atoms, lr 5e-3, eval every 100": _ROUND2,  # the task config of the second round
    "eval every 1000": _SPARSE,
    "eval every 1000, lr 1e-2": {**_SPARSE, "optimizer.lr": 1.0e-2},
    "eval every 1000, 512 atoms, lr 7e-3": {**_SPARSE, "loader.max_atoms": 512, "optimizer.lr": 7.0e-3},
    "eval every 1000, 512 atoms, lr 5e-3": {**_SPARSE, "loader.max_atoms": 512},
    "eval every 1000, 1024 atoms, lr 1e-2": {**_SPARSE, "loader.max_atoms": 1024, "optimizer.lr": 1.0e-2},
    "eval every 1000, 2048 atoms, lr 1e-2": {**_SPARSE, "loader.max_atoms": 2048, "optimizer.lr": 1.0e-2},
    "eval every 1000, EMA 0.999": {**_SPARSE, "ema.decay": 0.999},
    "task config, lr 2e-2": {"optimizer.lr": 2.0e-2},  # the fourth round: from the third's settings
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mp_e_form", choices=list(TASKS),
                        help="the task searched on (accuracy.py's names; its finetune config and validation MAE)")
    parser.add_argument("--budget", default="4m")
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), help="a subset of the candidates")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["task config"],
                        help="training settings to run each candidate under (default: the task config's)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--work", default="work/bench_encoder_search")
    parser.add_argument("--out", default="bench/results/encoder_search.json")
    parser.add_argument("--extra", nargs="*", default=[], help="key=value overrides for every run (e.g. data.limit=400)")
    args = parser.parse_args(argv)
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "budget": args.budget, "processes": args.nproc, "task": args.task, "extra": list(args.extra),
               "note": "validation-split MAE only: the selection split", "candidates": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(name, setting) for name in args.only or CANDIDATES for setting in args.settings]
        for i, (name, setting) in enumerate(runs):
            spec = CANDIDATES[name]
            if isinstance(spec, str):
                model = str(ROOT / spec)
            else:
                model = str(Path(tmp) / f"candidate{i}.yaml")
                Path(model).write_text(yaml.safe_dump({**COMMON, **spec}))
            label = name if setting == "task config" else f"{name} | {setting}"
            overrides = [f"{key}={value}" for key, value in SETTINGS[setting].items()]
            print(f"[{time.perf_counter() - start:6.0f} s] {label}, {args.budget}", flush=True)
            summary = run_finetune(["--config", TASKS[args.task][0], "--model", model,
                                    *budget_overrides(args.budget), *overrides, *args.extra],
                                   ROOT / args.work / f"candidate{i}", args.nproc)
            val = summary["validation"][TASKS[args.task][1]]
            results["candidates"][label] = {"model": spec, "settings": overrides, "val_mae": val["mae"],
                                            "steps": summary["steps"],
                                            "atoms_per_s": round(summary["training"]["atoms_per_s"], 1),
                                            "train_seconds": round(summary["training"]["train_seconds"], 1),
                                            "val_curve": summary.get("monitor", {}).get("curve")}
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{'candidate':<60}{'val MAE':>10}{'steps':>8}{'atoms/s':>10}")
    for name, row in results["candidates"].items():
        print(f"{name:<60}{row['val_mae']:>10.4f}{row['steps']:>8}{row['atoms_per_s']:>10.0f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
