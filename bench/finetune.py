"""What pretraining buys downstream: fine-tuning the sample pretrained checkpoint against a
from-scratch model of the same architecture with the same budget on the same split, and the mean,
side by side in one run; writes bench/results/finetune.json.

    python bench/finetune.py [--checkpoint runs/sample/export] [--cases formation_energy band_gap perovskites]
                             [--steps formation_energy=600 ...] [--nproc 2]

Every variant is the real `launch/finetune.py` (DeepSpeed engine, early stopping on the validation
split, EMA weights exported) with the case's config from `configs/finetune/`, launched by torchrun
with `--nproc` processes of one thread. "scratch" is `from_scratch=true`: the checkpoint's
architecture with fresh weights, everything else equal (data split, normalisation and element
references of the new head from the train split, optimiser, schedule, budget in steps, seed).
The "mean" row predicts the mean of the TEST labels for every test record (a lower bound on the MAE
of any constant predictor). MAEs are of the test split (never seen in training or early stopping).
The datasets (mp2018, perovskites) are not in the sample pretraining (configs/pretrain/sample.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import ROOT, machine, run_finetune
# case -> (config, the task whose test MAE is compared, default budget in optimiser steps)
CASES = {
    "formation_energy": ("configs/finetune/formation_energy.yaml", "formation_energy", 1000),
    "band_gap": ("configs/finetune/band_gap.yaml", "band_gap", 1000),
    "perovskites": ("configs/finetune/perovskites.yaml", "heat_all", 1000),
}


def _run(config: str, run_dir: Path, checkpoint: str, steps: int, scratch: bool, nproc: int) -> dict:
    summary = run_finetune(["--config", config, "--checkpoint", checkpoint, f"max_steps={steps}",
                            f"from_scratch={'true' if scratch else 'false'}"], run_dir, nproc)
    summary["wall_seconds"] = summary["command_seconds"]
    return summary


def _resolved_config(run_dir: Path) -> dict:
    """The run's resolved config (written by the run) without what differs by design."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("run_dir", "from_scratch"):
        config.pop(key, None)
    return config


def _row(summary: dict, task: str) -> dict:
    test, val = summary["test"][task], summary["validation"][task]
    return {"test_mae": test["mae"], "test_rmse": test["rmse"], "test_r2": test["r2"], "n_test": test["n"],
            "val_mae": val["mae"], "mean_baseline_test_mae": test["mean_baseline_mae"],
            "steps": summary["steps"], "best_step": summary["best_step"], "stopped_early": summary["stopped_early"],
            "train_seconds": round(summary["train_seconds"], 1), "wall_seconds": summary["wall_seconds"],
            "splits": summary["data"]["counts"]["splits"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/sample/export", help="the pretrained export")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", nargs="*", default=[], help="case=N budget overrides")
    parser.add_argument("--nproc", type=int, default=2, help="processes per fine-tune (torchrun)")
    parser.add_argument("--work", default="work/bench_finetune", help="run directories")
    parser.add_argument("--out", default="bench/results/finetune.json")
    args = parser.parse_args(argv)
    if not (ROOT / args.checkpoint).exists() and not Path(args.checkpoint).exists():
        parser.error(f"no checkpoint {args.checkpoint}: run the README's main job (the sample pretraining) first")
    budgets = {case: steps for case, (_, _, steps) in CASES.items()}
    for item in args.steps:
        case, _, n = item.partition("=")
        if case not in CASES or not n.isdigit():
            parser.error(f"--steps takes case=N with a case of {list(CASES)}, got {item!r}")
        budgets[case] = int(n)

    results = {"machine": machine(), "checkpoint": args.checkpoint, "processes": args.nproc,
               "note": "test-split MAE; 'mean' predicts the mean of the test labels", "cases": {}}
    start = time.perf_counter()
    for case in args.cases:
        config, task, _ = CASES[case]
        rows, configs = {}, {}
        for variant, scratch in (("pretrained", False), ("scratch", True)):
            print(f"[{time.perf_counter() - start:6.0f} s] {case}: {variant}, {budgets[case]} steps", flush=True)
            summary = _run(config, Path(args.work) / case / variant, args.checkpoint, budgets[case], scratch,
                           args.nproc)
            rows[variant] = _row(summary, task)
            configs[variant] = _resolved_config(Path(args.work) / case / variant)
        if configs["pretrained"] != configs["scratch"]:  # a config edited while the bench ran
            raise RuntimeError(f"{case}: the two variants ran with different settings")
        unit = summary["tasks"][task]["unit"]
        mean = rows["pretrained"]["mean_baseline_test_mae"]
        results["cases"][case] = {
            "config": config, "task": task, "unit": unit, "budget_steps": budgets[case], **rows,
            "mean": {"test_mae": mean}, "settings": configs["pretrained"],
            "ratio_pretrained_over_scratch": rows["pretrained"]["test_mae"] / rows["scratch"]["test_mae"],
        }
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")

    print(f"\nfine-tuning, test MAE ({results['machine']}; {args.nproc} processes):")
    print(f"{'case':<18}{'unit':<10}{'steps':>6}{'pretrained':>12}{'scratch':>10}{'mean':>10}{'pre/scr':>9}")
    for case, r in results["cases"].items():
        print(f"{case:<18}{r['unit']:<10}{r['budget_steps']:>6}{r['pretrained']['test_mae']:>12.4f}"
              f"{r['scratch']['test_mae']:>10.4f}{r['mean']['test_mae']:>10.4f}"
              f"{r['ratio_pretrained_over_scratch']:>9.3f}")
    print(f"total {results['total_seconds']:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
