"""Ship a finished pretraining run as a named model of the package, with its model card.

    python scripts/ship_model.py --run runs/corpus --name small-corpus \
        --command "OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 launch/pretrain.py --config configs/pretrain/corpus.yaml"

Copies the run's export (`model.safetensors` + `config.json`, EMA weights) to
`foundation/pretrained/<name>/`, writes `metrics.json` (the run's summary: per-dataset validation
metrics at the start and the end, each head's mean predictor and verdict, the learned task weights,
steps, time, throughput; the datasets' record counts) and `MODEL_CARD.md` from them. Refuses an
export above `--max-mb` (20 MB: what a pip package should carry).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _machine() -> str:
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores, {platform.system()}"


def _datasets(run: Path) -> dict[str, dict]:
    from foundation.data.shards import read_manifest

    shards = json.loads((run / "shards.json").read_text())
    out = {}
    for name, where in shards.items():
        m = read_manifest(ROOT / where if not Path(where).is_absolute() else where)
        out[name] = {"source": [s["path"] for s in m["sources"]], "reader": m.get("reader", {}),
                     "records": {s: v["records"] for s, v in m["counts"]["splits"].items()},
                     "rejected": m["counts"]["rejected"]}
    return out


def _card(name: str, meta: dict) -> str:
    s, lines = meta["summary"], []
    lines += [f"# `{name}`: model card", "",
              f"An equivariant `small` encoder ({meta['parameters']:,} parameters with its heads) pretrained on "
              f"{len(meta['datasets'])} public databases at once, shipped with the package "
              f"({meta['bytes'] / 1e6:.2f} MB safetensors, no pickle). Load it by name:", "",
              "```python", "import foundation", f'features = foundation.load_encoder("{name}").embed(structures)',
              f'preds = foundation.load_model("{name}").predict(structures)', "```", "",
              f"`foundation embed {name} FILE --out f.npz`, `foundation finetune --config CFG --checkpoint {name}`.", "",
              "## Training", "",
              f"- command (from the repository root, `../shared/data` beside it): `{meta['command']}`",
              f"- config: `{meta['config']}` (resolved: `metrics.json` → `resolved_config`), code at commit "
              f"`{meta['commit']}`",
              f"- {s['steps']:,} optimiser steps, {s['world_size']} processes, {s['atoms']:,} atoms seen, "
              f"{s['train_seconds'] / 60:.1f} min of training steps ({s['atoms_per_s']:,.0f} atoms/s), "
              f"{meta['wall_minutes']:.1f} min wall clock",
              f"- machine: {meta['machine']}; finished {meta['date']}",
              f"- weights: the EMA weights of step {s.get('best_step', s['steps'])}; sha256 of model.safetensors "
              f"`{meta['sha256']}`",
              "- rebuild: the same command on the same machine type, torch and seed should rebuild these "
              "weights (fixed seeds, ZeRO-0, fp32, gloo; every rank's data order is seeded: two "
              "100-step runs of the command, `max_steps=100`, gave byte-identical exports on 2026-12-04; the "
              "full run was not repeated); compare the sha256.", "",
              "## Data (records per split)", "", "| dataset | source | train | val | test | rejected |",
              "|---|---|---|---|---|---|"]
    for d, v in meta["datasets"].items():
        r = v["records"]
        lines.append(f"| {d} | `{', '.join(v['source'])}` | {r['train']} | {r['val']} | {r['test']} | {v['rejected']} |")
    lines += ["", "## Validation metrics (EMA weights; each head against its mean predictor and its initial value)", "",
              "| dataset | task | metric | final | mean predictor | initial | verdict | loss weight |",
              "|---|---|---|---|---|---|---|---|"]
    for d, tasks in s["validation"].items():
        for t, ms in tasks.items():
            key = "roc_auc" if "roc_auc" in ms else "mae"
            mean = 0.5 if key == "roc_auc" else ms.get("mean_mae")
            init = s["initial_validation"].get(d, {}).get(t, {}).get(key)
            weight = s["task_weights"].get(t)
            lines.append(f"| {d} | {t} | {'ROC-AUC' if key == 'roc_auc' else 'MAE'} | {ms[key]:.4g} | "
                         f"{'' if mean is None else f'{mean:.4g}'} | {'' if init is None else f'{init:.4g}'} | "
                         f"{s['heads'].get(f'{d}/{t}', '')} | {'' if weight is None else f'{weight:.3g}'} |")
    lines += ["", "Units: the task's (eV/atom, eV, eV/Å, log10 GPa); energies of a cell in eV. OC20 energies are "
              "relative to each system's relaxed frame (`energy_reference: relaxed`); the mean predictor of an "
              "extensive energy is the mean per-atom energy times the atoms. Loss weight: exp(-s_t) of the "
              "uncertainty weighting at the end (a starved head has a weight far below the others').", "",
              "## Intended use and limits", "",
              "A starting point for fine-tuning and a frozen feature extractor for crystals; what it buys on "
              "unseen properties is measured in `bench/README.md` (bench/transfer.py). Trained on CPU-scale "
              "data (tens of thousands of structures): not an interatomic potential for production "
              "simulations. The heads of the small databases (OC22: 23 records) carry little beyond their "
              "references."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--command", required=True, help="the command that trained the run (for the card)")
    p.add_argument("--max-mb", type=float, default=20.0)
    p.add_argument("--wall-minutes", type=float, default=None, help="the command's wall clock, if timed")
    p.add_argument("--config", default="configs/pretrain/corpus.yaml", help="the run's config (for the card)")
    p.add_argument("--commit", default=None, help="the git commit the run was trained at (for the card)")
    args = p.parse_args(argv)
    run = args.run if args.run.is_absolute() else ROOT / args.run
    export = run / "export"
    size = (export / "model.safetensors").stat().st_size
    if size > args.max_mb * 1e6:
        raise SystemExit(f"{export}: {size / 1e6:.1f} MB > {args.max_mb} MB")
    summary = json.loads((run / "summary.json").read_text())
    import yaml

    from foundation.metrics import head_verdicts

    summary["heads"] = head_verdicts(summary["validation"], summary["initial_validation"])  # the current rule
    from foundation.model import load_export

    model = load_export(export)
    target = ROOT / "foundation" / "pretrained" / args.name
    target.mkdir(parents=True, exist_ok=True)
    for f in ("model.safetensors", "config.json"):
        shutil.copyfile(export / f, target / f)
    meta = {"name": args.name, "command": args.command, "config": args.config, "commit": args.commit,
            "summary": {k: v for k, v in summary.items()}, "datasets": _datasets(run),
            "machine": _machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((run / "summary.json").stat().st_mtime)),
            "bytes": size, "sha256": hashlib.sha256((export / "model.safetensors").read_bytes()).hexdigest(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "wall_minutes": args.wall_minutes if args.wall_minutes is not None else summary["train_seconds"] / 60,
            "resolved_config": yaml.safe_load((run / "config.yaml").read_text())}
    (target / "metrics.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    (target / "MODEL_CARD.md").write_text(_card(args.name, meta))
    print(f"shipped {args.name}: {target} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
