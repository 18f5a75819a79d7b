"""Accuracy at equal wall-clock budgets: our encoder (from scratch and fine-tuned from the pretrained
checkpoint), the in-project CGCNN, SchNet and composition-only baselines, and the mean, on the same
tasks, the same hash split, the same number of processes; writes bench/results/accuracy.json.

    python bench/accuracy.py                                   # every task, every model, 10 minutes each
    python bench/accuracy.py --tasks mp_e_form --budget 60m    # the headline row at an hour
    python bench/accuracy.py --quick --out work/quick.json     # a small slice in under a minute (tests)
    python bench/accuracy.py --tasks perovskites --sizes 500 2000 all   # learning curves (+ PNG)
    python bench/accuracy.py --tasks log_kvrh --models ours cgcnn --seeds 0 1 2   # mean and spread over seeds
    python bench/accuracy.py --combine A.json B.json --out C.json   # earlier runs' seeds summarised together

Every model row is the real `launch/finetune.py` under torchrun (DeepSpeed engine, EMA, the best
validation weights exported) with the task's config from `configs/finetune/` and only these
changed: the model (`--model configs/model/X.yaml` for a fresh model, `--checkpoint` for the
pretrained one), `max_time` = the budget with no step limit (the lr decays over the budget), and
early stopping that keeps the best validation weights but does not stop (every model spends the
whole budget). Settings are the task config's for every model (chosen on validation splits for our
encoder); the test split is scored once, at the end. "mean" predicts the mean of the train labels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, budget_overrides, machine, run_finetune
from foundation.config import load_yaml
from foundation.data.shards import LoaderConfig, build_loader
from foundation.pretrained import pretrained_path

# task -> (finetune config, the task scored)
TASKS = {
    "mp_e_form": ("configs/finetune/formation_energy.yaml", "formation_energy"),
    "mp_gap": ("configs/finetune/band_gap.yaml", "band_gap"),
    "perovskites": ("configs/finetune/perovskites.yaml", "heat_all"),
    "log_kvrh": ("configs/finetune/bulk_modulus.yaml", "log10_bulk_modulus"),
    "log_gvrh": ("configs/finetune/shear_modulus.yaml", "log10_shear_modulus"),
}
# model -> the arguments that choose it (None: the pretrained checkpoint, given on the command line)
MODELS = {
    "ours": ["--model", "configs/model/small.yaml"],  # the default encoder, from scratch
    "ours_pretrained": None,
    "cgcnn": ["--model", "configs/model/cgcnn.yaml"],
    "schnet": ["--model", "configs/model/schnet.yaml"],
    "composition": ["--model", "configs/model/composition.yaml"],
}


def _labels(shard_dir: str, split: str, target: str) -> np.ndarray:
    cfg = LoaderConfig(cutoff=1.0, shuffle=False, max_atoms=4096)
    values = []
    for batch in build_loader({"data": shard_dir}, split, cfg):
        if target in batch.targets:
            values.append(batch.targets[target][batch.masks[target]].double().numpy())
    return np.concatenate(values) if values else np.zeros(0)


def _mean_row(summary: dict, task: str) -> dict:
    """The mean of the train labels as every test prediction."""
    target = summary["tasks"][task]["target"]
    train, test = (_labels(summary["data"]["shards"], s, target) for s in ("train", "test"))
    return {"test_mae": float(np.abs(test - train.mean()).mean()), "n_test": int(len(test)),
            "n_train": int(len(train))}


def _row(summary: dict, task: str) -> dict:
    test, val = summary["test"][task], summary["validation"][task]
    return {"test_mae": test["mae"], "test_rmse": test["rmse"], "test_r2": test["r2"], "n_test": test["n"],
            "val_mae": val["mae"], "steps": summary["steps"], "best_step": summary["best_step"],
            "stopped_by": summary["stopped_by"], "train_seconds": round(summary["train_seconds"], 1),
            "loop_seconds": summary["budget"]["wall_seconds"], "command_seconds": summary["command_seconds"],
            "atoms_per_s": round(summary["training"]["atoms_per_s"], 1),
            "val_curve": summary.get("monitor", {}).get("curve")}  # [step, the monitored val value] per evaluation


def _arguments(task: str, model: str, budget: str, checkpoint: str, quick: bool, size: str,
               extra: tuple[str, ...] = ()) -> list[str]:
    chosen = MODELS[model] if MODELS[model] is not None else ["--checkpoint", checkpoint]
    out = ["--config", TASKS[task][0], *chosen, *budget_overrides(budget), *extra]
    if size != "all":
        out.append(f"data.max_train={size}")
    if quick:
        out += ["data.limit=400", "eval.every=10", "eval.max_batches=4"]
    return out


def run(tasks: list[str], models: list[str], budget: str, checkpoint: str, nproc: int, work: Path,
        quick: bool, size: str = "all", extra: tuple[str, ...] = ()) -> dict:
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "processes": nproc, "budget": budget, "quick": quick, "checkpoint": checkpoint, "train_size": size,
               "overrides": list(extra),
               "note": "test-split MAE at equal wall-clock budgets; 'mean' predicts the train mean", "tasks": {}}
    start = time.perf_counter()
    for task in tasks:
        rows, summary = {}, None
        for model in models:
            if model == "ours_pretrained" and not Path(ROOT / checkpoint).exists() and not Path(checkpoint).exists() \
                    and pretrained_path(checkpoint) is None:
                rows[model] = {"skipped": f"no checkpoint {checkpoint} (run the README's main job first)"}
                continue
            print(f"[{time.perf_counter() - start:6.0f} s] {task}: {model}, {budget}, train {size}", flush=True)
            summary = run_finetune(_arguments(task, model, budget, checkpoint, quick, size, extra),
                                   work / task / size / model, nproc)
            rows[model] = _row(summary, TASKS[task][1])
        if summary is not None:
            rows["mean"] = _mean_row(summary, TASKS[task][1])
            results["tasks"][task] = {"config": TASKS[task][0], "task": TASKS[task][1],
                                      "unit": summary["tasks"][TASKS[task][1]]["unit"], "models": rows,
                                      "splits": summary["data"]["counts"]["splits"]}
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    return results


def table(results: dict) -> str:
    models = [m for m in [*MODELS, "mean"] if any(m in t["models"] for t in results["tasks"].values())]
    lines = [f"test MAE at {results['budget']} per model and task ({results['machine']}; "
             f"{results['processes']} processes)",
             f"{'task':<13}{'unit':<12}" + "".join(f"{m:>16}" for m in models)]
    for name, t in results["tasks"].items():
        cells = [t["models"].get(m, {}).get("test_mae") for m in models]
        lines.append(f"{name:<13}{t['unit']:<12}" + "".join(f"{c:>16.4f}" if c is not None else f"{'-':>16}"
                                                               for c in cells))
    return "\n".join(lines)


def _override(items, key: str) -> str | None:
    """The value of `key` among KEY=VALUE overrides (the last one given), else None."""
    values = [value for k, _, value in (item.partition("=") for item in items) if k.strip() == key]
    return values[-1] if values else None


def _seed_of(results: dict) -> int:
    """The run seed a result file ran under: its `seed=` override, else its task configs' seed."""
    seed = _override(results.get("overrides", []), "seed")
    if seed is not None:
        return int(seed)
    seeds = {int(load_yaml(ROOT / t["config"]).get("seed", 0)) for t in results["tasks"].values()}
    if len(seeds) != 1:
        raise ValueError(f"a run over task configs of different seeds ({sorted(seeds)}): summarise them apart")
    return seeds.pop()


def seed_summary(runs: list[dict], reference: str = "cgcnn") -> dict:
    """Every (task, model) over the runs' seeds: the test and val MAE of each seed, their means and
    sample standard deviations, and the ratio of the mean test MAE to `reference`'s where that model
    ran on the same seeds. A (task, model, seed) that two runs both hold is an error: say which one
    counts by leaving the other out."""
    cells: dict[str, dict[str, dict[int, dict]]] = {}
    for results in runs:
        seed = _seed_of(results)
        for task, t in results["tasks"].items():
            for model, row in t["models"].items():
                if "test_mae" not in row or model == "mean":
                    continue
                held = cells.setdefault(task, {}).setdefault(model, {})
                if seed in held:
                    raise ValueError(f"{task}/{model}: seed {seed} is in two of the runs given")
                held[seed] = row
    summary: dict[str, dict] = {}
    for task, models in cells.items():
        summary[task] = {}
        for model, by_seed in models.items():
            seeds = sorted(by_seed)
            test = np.array([by_seed[s]["test_mae"] for s in seeds])
            val = np.array([by_seed[s]["val_mae"] for s in seeds])
            summary[task][model] = {
                "seeds": seeds, "test_mae": test.tolist(), "val_mae": val.tolist(),
                "test_mean": float(test.mean()), "test_std": float(test.std(ddof=1)) if len(test) > 1 else None,
                "val_mean": float(val.mean()), "val_std": float(val.std(ddof=1)) if len(val) > 1 else None}
        ref = summary[task].get(reference)
        for model, row in summary[task].items():
            if ref is not None and model != reference and row["seeds"] == ref["seeds"]:
                row[f"test_ratio_to_{reference}"] = row["test_mean"] / ref["test_mean"]
                row[f"val_ratio_to_{reference}"] = row["val_mean"] / ref["val_mean"]
    return summary


def seed_table(summary: dict, reference: str = "cgcnn") -> str:
    lines = [f"{'task':<13}{'model':<17}{'seeds':<10}{'test MAE mean +- std':>24}{'val MAE mean':>14}"
             f"{'test / ' + reference:>16}"]
    for task, models in summary.items():
        for model, r in models.items():
            spread = f" +- {r['test_std']:.4f}" if r["test_std"] is not None else ""
            ratio = r.get(f"test_ratio_to_{reference}")
            lines.append(f"{task:<13}{model:<17}{','.join(map(str, r['seeds'])):<10}"
                         f"{r['test_mean']:>14.4f}{spread:<10}{r['val_mean']:>14.4f}"
                         + (f"{ratio:>15.3f}x" if ratio is not None else f"{'-':>16}"))
    return "\n".join(lines)


def curves_plot(by_size: dict[str, dict], path: Path) -> None:
    """Test MAE against training structures, one panel per task, one line per model (log-log)."""
    from matplotlib.figure import Figure  # a plotting library only for this figure

    tasks = sorted({t for r in by_size.values() for t in r["tasks"]})
    fig = Figure(figsize=(4.5 * len(tasks), 4), dpi=110)
    for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks):
        models = sorted({m for r in by_size.values() for m in r["tasks"].get(task, {}).get("models", {})})
        for model in models:
            points = sorted((r["tasks"][task]["splits"]["train"], r["tasks"][task]["models"][model]["test_mae"])
                            for r in by_size.values() if model in r["tasks"].get(task, {}).get("models", {})
                            and "test_mae" in r["tasks"][task]["models"][model])
            ax.plot(*zip(*points), marker="o", label=model)
        ax.set(xscale="log", yscale="log", xlabel="training structures", ylabel="test MAE", title=task)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")


def merged(paths: list[str]) -> dict[str, dict]:
    """{size: results} of several runs' JSON: learning-curve files and single-size ones ("all")."""
    by_size: dict[str, dict] = {}
    for path in paths:
        results = json.loads((ROOT / path).read_text())
        for size, r in results.get("learning_curves", {"all": results}).items():
            entry = by_size.setdefault(size, {"tasks": {}})
            for task, t in r["tasks"].items():
                entry["tasks"].setdefault(task, {**t, "models": {}})["models"].update(t["models"])
    return by_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--budget", default="10m", help="wall-clock budget of every model and task")
    parser.add_argument("--checkpoint", default="runs/sample/export",
                        help="the pretrained export (a path, or a shipped name such as small-corpus)")
    parser.add_argument("--nproc", type=int, default=2, help="processes per run (torchrun)")
    parser.add_argument("--quick", action="store_true", help="400 perovskites, 3 s a model (the test suite's run)")
    parser.add_argument("--sizes", nargs="+", default=["all"],
                        help="training structures (data.max_train) per point of the learning curves, or 'all'")
    parser.add_argument("--args", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the task config for every run (e.g. add_element_features=true)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="run every model and task once per run seed (initial weights and batch order; "
                             "the split stays the same) and report each model's mean and spread")
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="no training: summarise earlier single-size runs' JSON over their seeds into --out")
    parser.add_argument("--work", default="work/bench_accuracy")
    parser.add_argument("--out", default="bench/results/accuracy.json")
    parser.add_argument("--plot", nargs="+", default=None, metavar="JSON",
                        help="no training: draw the learning curves of earlier runs' JSON files together "
                             "(a learning-curve file gives its sizes, a single-size run counts as 'all') into --out's .png")
    args = parser.parse_args(argv)
    if args.plot:
        out = (ROOT / args.out).with_suffix(".png")
        curves_plot(merged(args.plot), out)
        print(f"learning curves -> {out}")
        return 0
    if args.combine:
        return _combine(args.combine, ROOT / args.out)
    if args.quick:
        args.budget, args.tasks = "3s", ["perovskites"]
    if args.seeds:
        return _seeds(args)
    by_size = {size: run(args.tasks, args.models, args.budget, args.checkpoint, args.nproc, ROOT / args.work,
                         args.quick, size, tuple(args.args)) for size in args.sizes}
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    results = by_size["all"] if list(by_size) == ["all"] else {"learning_curves": by_size}
    out.write_text(json.dumps(results, indent=1) + "\n")
    for size, r in by_size.items():
        print(f"train {size}: " + table(r))
    if len(by_size) > 1:
        curves_plot(by_size, out.with_suffix(".png"))
        print(f"learning curves -> {out.with_suffix('.png')}")
    print(f"-> {out}")
    return 0


def _write_seeds(runs: list[dict], out: Path, sources: list[str] | None = None) -> int:
    summary = seed_summary(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "summary": summary,
           **({"sources": sources} if sources else {"runs": {str(_seed_of(r)): r for r in runs}})}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(seed_table(summary))
    print(f"-> {out}")
    return 0


def _combine(paths: list[str], out: Path) -> int:
    runs = []
    for path in paths:
        doc = json.loads((ROOT / path).read_text())
        if "learning_curves" in doc:
            raise SystemExit(f"{path}: --combine takes single-size runs of accuracy.py, not learning curves")
        runs += list(doc["runs"].values()) if "runs" in doc else [doc]  # a --seeds file gives its runs
    return _write_seeds(runs, out, sources=list(paths))


def _seeds(args) -> int:
    if args.sizes != ["all"]:
        raise SystemExit("--seeds runs the full training split; learning curves take one seed (--args seed=S)")
    if _override(args.args, "seed") is not None:
        raise SystemExit("--seeds sets the run seed: leave seed= out of --args")
    runs = [run(args.tasks, args.models, args.budget, args.checkpoint, args.nproc, ROOT / args.work / f"seed{seed}",
                args.quick, "all", (*args.args, f"seed={seed}")) for seed in args.seeds]
    return _write_seeds(runs, ROOT / args.out)


if __name__ == "__main__":
    sys.exit(main())
