"""What pretraining buys on properties it never saw: the shipped pretrained model fine-tuned against
the same architecture from scratch, and its frozen features against CHGNet's and composition's;
writes bench/results/transfer*.json (+ PNG).

    python bench/transfer.py curves    [--checkpoint small-corpus] [--tasks ...] [--sizes 100 500 all]
                                       [--seeds 0 1 2] [--budget 40s] [--args KEY=VALUE ...]
    python bench/transfer.py ablations [--task perovskites] [--size 500] [--seeds 0 1 2]
    python bench/transfer.py pretrain-ablations [--steps 2000] [--task perovskites] [--size 500] [--seeds 0 1 2]
    python bench/transfer.py features  [--tasks log_kvrh log_gvrh perovskites]
    python bench/transfer.py plot --inputs A.json B.json [--out bench/results/transfer_curves.png]

curves: every point is two real `launch/finetune.py` runs under torchrun (DeepSpeed engine, EMA,
best validation weights exported, test split scored once), identical but for the encoder's
initial weights: `--checkpoint NAME` (pretrained) against the same with `from_scratch=true` (the
checkpoint's architecture, fresh weights). Same task config, same hash split (the split seed is
the data's, not the run's), the same training subset (`data.max_train`, drawn with the split
seed), the same wall-clock budget (`max_time`, the lr decays over it; early stopping keeps the
best validation weights but never stops a run early), the same processes. The run seed (`seed=`)
changes the initial weights of the new head (and of the encoder from scratch) and the batch order:
mean and spread over seeds. Ratio < 1: pretraining helps.

ablations: the fine-tuning side of the JMP recipe at one training size, from the same checkpoint:
the task config's layer-wise lr decay against none (1.0) and 0.5, and a frozen encoder (only the
new head trains); `--ablations` picks among those and MORE_ABLATIONS (a lower lr, weight decay,
lr decay 0.7, the first block frozen) and TASK_ABLATIONS (the scored property alone, or with the
other elastic modulus of the same structures as an auxiliary task), and the JSON names the variant
with the lowest validation MAE. The pretraining-side ablations (uncertainty against fixed task weights, temperature 1
against 2) need one pretraining run each: `pretrain-ablations` runs the pretraining config
(`--pretrain-config`, default configs/pretrain/corpus.yaml: the same data, model, seed and schedule
shape) for `--steps` steps once per variant, then fine-tunes each export on `--task` at
`--size` with every seed, beside the same architecture from scratch; the choice is made on the
fine-tunes' validation MAE.

features: frozen structure features of the train/val/test splits of each task's own shards, a
ridge (RidgeCV, alpha chosen on the train split by efficient leave-one-out) and a small MLP
(scikit-learn, early stopping on a slice of the train split) on standardised features, test MAE:
ours ("blocks": the mean invariants of the embedding and every block, concatenated; "last": the
last block's only; "readout": blocks and the mean hidden layer of every pretrained structure-level
head, `foundation embed --level readout`), CHGNet 0.3.0's crystal features (`pip install chgnet`; the pretrained
model's 64-wide crystal feature vector) and composition (element fractions, 1-94).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, budget_overrides, machine, run_finetune, run_pretrain

# task -> (finetune config, the task scored, sizes that make sense)
TASKS = {
    "log_kvrh": ("configs/finetune/bulk_modulus.yaml", "log10_bulk_modulus"),
    "log_gvrh": ("configs/finetune/shear_modulus.yaml", "log10_shear_modulus"),
    "perovskites": ("configs/finetune/perovskites.yaml", "heat_all"),
    "dcdft": ("configs/finetune/dcdft.yaml", "bulk_modulus"),
}
VARIANTS = {"pretrained": [], "scratch": ["from_scratch=true"]}
ABLATIONS = {
    "config": [],  # the task config's own settings (the "pretrained" variant of the curves)
    "lr_decay=1.0": ["lr_decay=1.0"],
    "lr_decay=0.5": ["lr_decay=0.5"],
    "freeze=encoder": ["freeze=encoder"],
    "scratch": ["from_scratch=true"],
}
# run only when named (--ablations): regularisation against the early overfitting of the elasticity
# fine-tunes (best weights at 5-25 % of a run): a lower peak lr, decoupled weight decay, lr decay
# 0.7, the first block frozen
MORE_ABLATIONS = {
    "lr=1e-3": ["optimizer.lr=1.0e-3"],
    "weight_decay=0.1": ["optimizer.weight_decay=0.1"],
    "lr_decay=0.7": ["lr_decay=0.7"],
    "freeze=first:1": ["freeze=first:1"],
}


def _task_list(*targets: str) -> str:
    return "tasks=[" + ", ".join(f"{{name: {t}, target: {t}}}" for t in targets) + "]"


# the other elastic modulus of the same structures (elasticity tasks only)
OTHER_MODULUS = {"log_kvrh": "log10_shear_modulus", "log_gvrh": "log10_bulk_modulus"}
# run only when named: which tasks the fine-tune trains, a function of --task. "single": the scored
# property alone; "joint": with the other modulus of the same training structures as a second task
# (the uncertainty-weighted loss; early stopping and the scores still follow the first)
TASK_ABLATIONS = {
    "single": lambda task: [_task_list(TASKS[task][1])],
    "joint": lambda task: [_task_list(TASKS[task][1], OTHER_MODULUS[task])],
}

# the pretraining side of the JMP recipe: overrides of the pretraining config (--pretrain-config)
PRETRAIN_ABLATIONS = {
    "uncertainty-T2": ["loader.temperature=2.0"],  # uncertainty task weights, JMP's temperature 2
    "fixed-T2": ["loss=fixed", "loader.temperature=2.0"],  # fixed task weights (every TaskSpec.weight is 1)
    "uncertainty-T1": ["loader.temperature=1.0"],  # in proportion to each dataset's size (corpus.yaml's since 2026-12-05)
    # the weights capped near mp2018's own (8.3 formation energy, 5.8 band gap in the shipped run), so
    # a memorised small set (OC20 energy 44, LiPS 114) stops earning weight; not yet measured
    "uncertainty-T1-cap10": ["loader.temperature=1.0", "max_task_weight=10"],
}


def _arguments(task: str, checkpoint: str, budget: str, size: str, seed: int, extra: list[str]) -> list[str]:
    out = ["--config", TASKS[task][0], "--checkpoint", checkpoint, f"seed={seed}", *budget_overrides(budget), *extra]
    if size != "all":
        out.append(f"data.max_train={size}")
    return out


def _score(summary: dict, task: str) -> dict:
    test = summary["test"][task]
    return {"test_mae": test["mae"], "val_mae": summary["validation"][task]["mae"], "steps": summary["steps"],
            "best_step": summary["best_step"], "n_train": summary["data"]["counts"]["splits"]["train"],
            "command_seconds": summary["command_seconds"]}


def _spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def curves(args) -> dict:
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "processes": args.nproc,
           "budget": args.budget, "checkpoint": args.checkpoint, "seeds": args.seeds,
           "args": args.args, "pretrained_args": args.pretrained_args, "tasks": {}}
    start = time.perf_counter()
    for task in args.tasks:
        sizes = ["all"] if task == "dcdft" else args.sizes  # 71 crystals: one point
        rows = {}
        for size in sizes:
            runs = {v: [] for v in VARIANTS}
            for seed in args.seeds:
                for variant, extra in VARIANTS.items():
                    extra = extra + args.args + (args.pretrained_args if variant == "pretrained" else [])
                    print(f"[{time.perf_counter() - start:6.0f} s] {task} train {size} seed {seed}: {variant}", flush=True)
                    summary = run_finetune(_arguments(task, args.checkpoint, args.budget, size, seed, extra),
                                           ROOT / args.work / task / size / f"{variant}-{seed}", args.nproc)
                    runs[variant].append(_score(summary, TASKS[task][1]))
            maes = {v: [r["test_mae"] for r in rs] for v, rs in runs.items()}
            ratios = [p / s for p, s in zip(maes["pretrained"], maes["scratch"])]
            rows[size] = {"n_train": runs["scratch"][0]["n_train"], "runs": runs,
                          **{v: _spread(m) for v, m in maes.items()}, "ratio": _spread(ratios)}
            print(f"    {task} {size}: pretrained {rows[size]['pretrained']['mean']:.4f} / scratch "
                  f"{rows[size]['scratch']['mean']:.4f} = {rows[size]['ratio']['mean']:.3f}", flush=True)
        out["tasks"][task] = {"config": TASKS[task][0], "task": TASKS[task][1], "sizes": rows}
    out["total_seconds"] = round(time.perf_counter() - start, 1)
    return out


def _fine_tunes(args, checkpoint: str, name: str, extra: list[str], where: str) -> dict:
    """`--task` at `--size` fine-tuned from `checkpoint` (+ `extra` overrides) once per seed, in
    WORK/WHERE/TASK/NAME-SEED: the runs' scores and the spread of their test and val MAE."""
    runs = []
    for seed in args.seeds:
        print(f"{args.task} train {args.size} seed {seed}: {name}", flush=True)
        summary = run_finetune(_arguments(args.task, checkpoint, args.budget, args.size, seed, extra),
                               ROOT / args.work / where / args.task / f"{name}-{seed}", args.nproc)
        runs.append(_score(summary, TASKS[args.task][1]))
    return {"runs": runs, "test": _spread([r["test_mae"] for r in runs]), "val": _spread([r["val_mae"] for r in runs])}


def ablations(args) -> dict:
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "processes": args.nproc,
           "budget": args.budget, "checkpoint": args.checkpoint, "task": args.task, "size": args.size,
           "seeds": args.seeds, "variants": {}}
    if "joint" in args.ablations and args.task not in OTHER_MODULUS:
        raise SystemExit(f"--ablations joint: the elasticity tasks only ({', '.join(OTHER_MODULUS)}), not {args.task}")
    for name in args.ablations:
        extra = TASK_ABLATIONS[name](args.task) if name in TASK_ABLATIONS else {**ABLATIONS, **MORE_ABLATIONS}[name]
        runs = _fine_tunes(args, args.checkpoint, name, extra, "ablations")
        out["variants"][name] = {"runs": runs["runs"], **runs["test"], "val": runs["val"]}
        print(f"    {name}: val {out['variants'][name]['val']['mean']:.4f}, test {out['variants'][name]['mean']:.4f}",
              flush=True)
    out["chosen_on_val"] = min((n for n in out["variants"] if n != "scratch"),
                               key=lambda n: out["variants"][n]["val"]["mean"], default=None)
    return out


def pretrain_ablations(args) -> dict:
    """One short pretraining run per PRETRAIN_ABLATIONS variant, each fine-tuned the same way."""
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "processes": args.nproc,
           "pretrain_config": args.pretrain_config, "pretrain_steps": args.steps, "budget": args.budget, "task": args.task,
           "size": args.size, "seeds": args.seeds, "variants": {}}
    start = time.perf_counter()
    exports = {}
    for name in args.variants:
        extra = PRETRAIN_ABLATIONS[name]
        run_dir = ROOT / args.work / "pretrain_ablations" / "pretrain" / name
        if (run_dir / "checkpoints").exists():  # never resume a different ablation's run
            raise SystemExit(f"{run_dir} holds an earlier run; remove it first")
        print(f"[{time.perf_counter() - start:6.0f} s] pretrain {args.steps} steps: {name}", flush=True)
        summary = run_pretrain(["--config", args.pretrain_config, f"max_steps={args.steps}", f"eval.every={args.steps}",
                                f"checkpoints.every={args.steps}", *extra], run_dir, args.nproc)
        verdicts = summary["heads"]
        exports[name] = str(run_dir / "export")
        out["variants"][name] = {
            "pretrain_overrides": extra, "pretrain_seconds": summary["command_seconds"],
            "atoms_per_s": summary["atoms_per_s"], "heads_learning": sum(v == "learns" for v in verdicts.values()),
            "heads": len(verdicts), "task_weights": summary.get("task_weights"),
            **_fine_tunes(args, exports[name], name, [], "pretrain_ablations")}
    first = next(iter(exports.values()))  # the architecture is the same in every variant
    out["scratch"] = _fine_tunes(args, first, "scratch", ["from_scratch=true"], "pretrain_ablations")
    for name, row in out["variants"].items():
        row["ratio"] = _spread([p["test_mae"] / s["test_mae"] for p, s in zip(row["runs"], out["scratch"]["runs"])])
        print(f"    {name}: heads learning {row['heads_learning']}/{row['heads']}, fine-tuned val "
              f"{row['val']['mean']:.4f}, test {row['test']['mean']:.4f} (x{row['ratio']['mean']:.3f} scratch)", flush=True)
    out["chosen_on_val"] = min(out["variants"], key=lambda n: out["variants"][n]["val"]["mean"])
    out["total_seconds"] = round(time.perf_counter() - start, 1)
    return out


# -- frozen features ------------------------------------------------------------------------------
def _shards_of(task: str, args) -> Path:
    """The task's full-size shard directory (a 1-step fine-tune builds it if no earlier run did)."""
    for summary in sorted((ROOT / args.work / task / "all").glob("*/summary.json")):
        return Path(json.loads(summary.read_text())["data"]["shards"])
    run_dir = ROOT / args.work / task / "shards"
    summary = run_finetune(["--config", TASKS[task][0], "--checkpoint", args.checkpoint, "max_steps=1",
                            "eval.at_start=false"], run_dir, 1)
    return Path(summary["data"]["shards"])


def _composition(crystals) -> np.ndarray:
    out = np.zeros((len(crystals), 95))
    for i, c in enumerate(crystals):
        z, n = np.unique(c.numbers, return_counts=True)
        out[i, z[z < 95]] = n[z < 95] / n.sum()
    return out


_CHGNET: dict[str, np.ndarray] = {}  # structure key -> crystal features (K and G share structures)


def _chgnet(crystals) -> np.ndarray:
    from chgnet.model import CHGNet  # the optional peer extra

    todo = [c for c in crystals if c.key not in _CHGNET]
    if todo:
        model = CHGNet.load(verbose=False)
        preds = model.predict_structure([c.to_pymatgen() for c in todo], task="e", return_crystal_feas=True,
                                        batch_size=64)
        _CHGNET.update({c.key: np.asarray(p["crystal_fea"]) for c, p in zip(todo, preds)})
    return np.stack([_CHGNET[c.key] for c in crystals])


def _fit_score(name: str, train: tuple, test: tuple, seed: int, key: str = "test_mae") -> dict:
    from sklearn.linear_model import RidgeCV
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (x, y), (xt, yt) = train, test
    if name == "ridge":
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-4, 4, 17)))
    else:
        model = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(128, 128), alpha=1e-3, early_stopping=True,
                                                             max_iter=2000, random_state=seed))
    model.fit(x, y)
    return {key: float(np.abs(model.predict(xt) - yt).mean())}


def features(args) -> dict:
    from foundation import load_encoder
    from foundation.data.shards import read_split

    target_of = {"log_kvrh": "log10_bulk_modulus", "log_gvrh": "log10_shear_modulus", "perovskites": "formation_energy",
                 "dcdft": "log10_bulk_modulus"}
    encoder = load_encoder(args.checkpoint)
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "checkpoint": args.checkpoint, "tasks": {}}
    split, key = args.split, f"{args.split}_mae"  # "val": choose features without the test split
    for task in args.tasks:
        shards = _shards_of(task, args)
        data = {s: list(itertools.islice(read_split(shards, s), args.limit)) for s in ("train", split)}
        target = target_of[task]
        y = {s: np.array([float(c.targets[target]) for c in cs]) for s, cs in data.items()}
        extractors = {"ours_blocks": lambda cs: encoder.embed(cs, "blocks", batch_size=128),
                      "ours_last": lambda cs: encoder.embed(cs, "structure", batch_size=128),
                      "ours_readout": lambda cs: encoder.embed(cs, "readout", batch_size=128),
                      "chgnet": _chgnet, "composition": _composition}
        rows = {"mean": {key: float(np.abs(y[split] - y["train"].mean()).mean())}}
        for name, extract in extractors.items():
            if args.extractors and name not in args.extractors:
                continue
            t0 = time.perf_counter()
            x = {s: np.asarray(extract(cs), dtype=np.float64) for s, cs in data.items()}
            seconds = round(time.perf_counter() - t0, 1)
            rows[name] = {"width": int(x["train"].shape[1]), "embed_seconds": seconds,
                          **{m: _fit_score(m, (x["train"], y["train"]), (x[split], y[split]), 0, key)
                             for m in ("ridge", "mlp")}}
            print(f"{task} {name} ({split}): ridge {rows[name]['ridge'][key]:.4f}, mlp {rows[name]['mlp'][key]:.4f}"
                  f" ({seconds} s to embed)", flush=True)
        out["tasks"][task] = {"n_train": len(y["train"]), f"n_{split}": len(y[split]), "split": split, "target": target,
                              "rows": rows}
    return out


def curves_plot(results: dict, path: Path) -> None:
    """Test MAE against training structures per task: pretrained and scratch, mean ± std over seeds."""
    from matplotlib.figure import Figure

    tasks = [t for t, r in results["tasks"].items() if len(r["sizes"]) > 1]
    fig = Figure(figsize=(4.5 * max(len(tasks), 1), 4), dpi=110)
    for ax, task in zip(fig.subplots(1, max(len(tasks), 1), squeeze=False)[0], tasks):
        rows = sorted(results["tasks"][task]["sizes"].values(), key=lambda r: r["n_train"])
        n = [r["n_train"] for r in rows]
        for variant in VARIANTS:
            ax.errorbar(n, [r[variant]["mean"] for r in rows], yerr=[r[variant]["std"] for r in rows], marker="o",
                        capsize=3, label=variant)
        ax.set(xscale="log", yscale="log", xlabel="training structures", ylabel="test MAE", title=task)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def merged(paths: list[str]) -> dict:
    """The curves of several `curves` runs (e.g. small sizes and "all" at different budgets) in one."""
    out: dict = {"tasks": {}, "inputs": paths}
    for path in paths:
        for task, entry in json.loads((ROOT / path).read_text())["tasks"].items():
            out["tasks"].setdefault(task, {**entry, "sizes": {}})["sizes"].update(entry["sizes"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("curves", "ablations", "pretrain-ablations", "features", "plot"))
    parser.add_argument("--inputs", nargs="+", default=[], help="plot: curves JSON files to draw together")
    parser.add_argument("--checkpoint", default="small-corpus", help="the pretrained export (path or shipped name)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--sizes", nargs="+", default=["100", "500", "all"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", default="40s", help="wall-clock training budget of every fine-tune")
    parser.add_argument("--task", default="perovskites", choices=list(TASKS), help="ablations: the task")
    parser.add_argument("--size", default="500", help="ablations: the training size")
    parser.add_argument("--ablations", nargs="+", default=list(ABLATIONS),
                        choices=[*ABLATIONS, *MORE_ABLATIONS, *TASK_ABLATIONS],
                        help="ablations: which variants (each a set of overrides of the task config)")
    parser.add_argument("--steps", type=int, default=2000, help="pretrain-ablations: pretraining steps of each variant")
    parser.add_argument("--variants", nargs="+", default=list(PRETRAIN_ABLATIONS), choices=list(PRETRAIN_ABLATIONS),
                        help="pretrain-ablations: which variants to run")
    parser.add_argument("--pretrain-config", default="configs/pretrain/corpus.yaml",
                        help="pretrain-ablations: the pretraining config every variant overrides")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--args", nargs="*", default=[],
                        help="curves: overrides of the task config for both variants (e.g. eval.every=10 "
                             "at small sizes), recorded in the JSON")
    parser.add_argument("--pretrained-args", nargs="*", default=[],
                        help="curves: overrides for the pretrained variant only, chosen on validation by "
                             "`ablations` (e.g. lr_decay=0.5)")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="features: the split scored (val: to choose an extractor without the test split)")
    parser.add_argument("--limit", type=int, default=None, help="features: the first N records of each split (smoke runs)")
    parser.add_argument("--extractors", nargs="+", default=None, help="features: a subset of ours_blocks ours_last ours_readout chgnet composition")
    parser.add_argument("--work", default="work/bench_transfer")
    parser.add_argument("--out", default=None, help="default bench/results/transfer_<mode>.json")
    args = parser.parse_args(argv)
    if args.mode == "plot":
        out = ROOT / (args.out or "bench/results/transfer_curves.png")
        curves_plot(merged(args.inputs), out)
        print(f"-> {out}")
        return 0
    if args.mode == "features" and args.tasks == list(TASKS):
        args.tasks = ["log_kvrh", "log_gvrh", "perovskites"]
    results = {"curves": curves, "ablations": ablations, "pretrain-ablations": pretrain_ablations,
               "features": features}[args.mode](args)
    results["command"] = "python bench/transfer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = ROOT / (args.out or f"bench/results/transfer_{args.mode.replace('-', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    if args.mode == "curves":
        curves_plot(results, out.with_suffix(".png"))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
