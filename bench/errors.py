"""Where two or more exports' errors differ on one split: the MAE, the median absolute error and the
MAE without each model's k worst structures, on the same records, and the structures missed most.

A 320-structure test split of a heavy-tailed property (log10 of a modulus: a few soft cells missed
by a factor of several) moves its MAE with a handful of structures; this says whether two models differ on
the typical structure or on the tail. It only reads: use it after the test split was scored once.

    python bench/errors.py work/acc/log_kvrh/all/ours work/acc/log_kvrh/all/cgcnn \
        --shards work/shard_cache/mp-binary-pbe-elasticity-2025-<key> --split test \
        --task log10_bulk_modulus --out bench/results/errors_kvrh.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from foundation.api import load_model
from foundation.data.shards import read_split


def summarise(errors: np.ndarray, drop: int) -> dict:
    order = np.sort(errors)
    return {"mae": float(errors.mean()), "median": float(np.median(errors)),
            f"mae_without_worst_{drop}": float(order[:-drop].mean()) if drop else float(errors.mean()),
            "worst_share": float(order[-drop:].sum() / errors.sum()) if drop else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exports", nargs="+", help="export directories (or run directories holding export/)")
    parser.add_argument("--shards", type=Path, required=True, help="a shard directory of the task's data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--task", required=True, help="the task (and label) to score")
    parser.add_argument("--drop", type=int, default=10, help="k: the MAE without each model's k worst")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    crystals = [c for c in read_split(args.shards, args.split) if args.task in c.targets]
    if not crystals:
        raise SystemExit(f"no {args.split} record under {args.shards} has the label {args.task!r}")
    labels = np.array([float(c.targets[args.task]) for c in crystals])
    rows = {}
    for export in args.exports:
        errors = np.abs(load_model(export).predict(crystals, tasks=[args.task])[args.task].reshape(-1) - labels)
        worst = np.argsort(errors)[::-1][:args.drop]
        rows[export] = {**summarise(errors, args.drop),
                        "worst": [[crystals[i].id, float(labels[i]), float(errors[i])] for i in worst]}
        print(f"{export}: MAE {rows[export]['mae']:.4f}  median {rows[export]['median']:.4f}  "
              f"without its {args.drop} worst {rows[export][f'mae_without_worst_{args.drop}']:.4f}  "
              f"(the {args.drop} carry {100 * rows[export]['worst_share']:.0f} %)")
    if args.out:
        args.out.write_text(json.dumps({"split": args.split, "task": args.task, "n": len(crystals),
                                        "models": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
