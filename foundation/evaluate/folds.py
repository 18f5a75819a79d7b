"""The MatBench protocol for `foundation evaluate --folds N`, and the single evaluation beside it:

    foundation evaluate runs/ft/export --data perov5_val.csv --target heat_all --out eval/
        -> eval/report.json, eval/parity.png (roc.png for classification), eval/predictions.csv
    foundation evaluate runs/pretrain/export --data matbench_perovskites.json.gz --target e_form \
        --folds 5 --config configs/finetune/formation_energy.yaml max_steps=2000 --out eval/
        -> the MatBench protocol: 5 fine-tunes (eval/fold0 ... eval/fold4), out-of-fold metrics

Single evaluation: every record of the file is read (`foundation.data.readers`) and validated
(`foundation.data.validate`, defaults); rejected records are counted and listed with their reasons.
The checkpoint's task for the target (or `--task`) predicts every kept record; records without a
label are predicted but not scored (`missing_label`).

MatBench protocol (`--folds 5`): the labelled records, in file order, are split by
`sklearn.model_selection.KFold(5, shuffle=True, random_state=18012019)` as MatBench does. For
fold k the four other folds are fine-tuned on (`foundation.train.run.run` with a
`FoldSplit`), a seeded 10% of them held out for early stopping; the fine-tune computes its
normalisation from its own train split, so nothing of the test fold leaks into it. Its export then
predicts fold k. The report gives each fold's metrics, the mean ± std of MAE over folds and the
metrics of the pooled out-of-fold predictions (every record predicted exactly once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import KFold

from ..config import to_dict
from ..data.crystal import Crystal
from ..data.targets import target_info
from ..train.resolve import validate
from ..train.run import run
from ..train.run_config import RunConfig, TaskConfig
from .labelled import LabelledData
from .report import plot, predict_task, report_head, score, write_predictions

__all__ = ["MATBENCH_RANDOM_STATE", "fold_indices", "FoldSplit", "fold_config", "evaluate_folds"]

MATBENCH_RANDOM_STATE = 18012019  # sklearn KFold seed of every MatBench task


def fold_indices(n: int, n_folds: int = 5, random_state: int = MATBENCH_RANDOM_STATE,
                 val_fraction: float = 0.1) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`[(train, val, test)]` positions into `range(n)` for each fold.

    test: the folds of `KFold(n_folds, shuffle=True, random_state)` on `range(n)` (MatBench's);
    val: a `val_fraction` of the other folds (at least one record), drawn with a generator seeded
    by `(random_state, fold)`; train: the rest. All three sorted."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if n < 2 * n_folds:
        raise ValueError(f"{n} labelled records are too few for {n_folds} folds (need at least {2 * n_folds})")
    splits = []
    for k, (rest, test) in enumerate(KFold(n_folds, shuffle=True, random_state=random_state).split(np.arange(n))):
        order = np.random.default_rng([random_state, k]).permutation(rest)
        n_val = max(1, round(val_fraction * len(rest)))
        splits.append((np.sort(order[n_val:]), np.sort(order[:n_val]), np.sort(test)))
    return splits


@dataclass(frozen=True)
class FoldSplit:
    """One fold's split for `finetune(cfg, split=...)`: `assign(crystal)` by record id."""

    roles: Mapping[str, str]  # record id -> "train" | "val" | "test"
    fold: int
    n_folds: int
    random_state: int
    val_fraction: float

    @classmethod
    def from_indices(cls, ids: Sequence[str], train, val, test, **fields) -> "FoldSplit":
        roles = {ids[i]: name for name, part in (("train", train), ("val", val), ("test", test)) for i in part}
        return cls(roles=roles, **fields)

    def assign(self, crystal: Crystal) -> str:
        try:
            return self.roles[crystal.id]
        except KeyError:
            raise ValueError(f"record {crystal.key!r} is not among the {len(self.roles)} records of the "
                             f"fold split (fold {self.fold} of {self.n_folds})") from None

    def to_json(self) -> dict[str, Any]:
        listing = "\n".join(f"{i}\t{r}" for i, r in sorted(self.roles.items()))
        counts = {s: sum(r == s for r in self.roles.values()) for s in ("train", "val", "test")}
        return {"protocol": "matbench_kfold", "n_folds": self.n_folds, "fold": self.fold,
                "random_state": self.random_state, "val_fraction": self.val_fraction, "records": counts,
                "roles_sha256": hashlib.sha256(listing.encode()).hexdigest()}


def _summary(values: Sequence[float]) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=0))}


def fold_config(template: RunConfig, checkpoint: str | Path, data: LabelledData, requested: str,
                run_dir: str | Path, limit: int | None = None) -> RunConfig:
    """The RunConfig of one fold: `template` (budget, optimiser, freezing, ...) on `data`'s file
    with its format, options and derived labels, from `checkpoint`, into `run_dir`. The template's
    tasks are kept when one of them predicts the target; otherwise one task for `requested`."""
    wanted = {requested, data.target}
    tasks = template.tasks
    if not any(t.target in wanted or t.name in wanted for t in tasks):
        tasks = [TaskConfig(target=requested)]
    section = dataclasses.replace(template.data, path=data.path, format=data.format, options=dict(data.options),
                                  derive=dict(data.derive), limit=limit)
    return dataclasses.replace(template, checkpoint=str(checkpoint), model=None, data=section, tasks=tasks,
                               run_dir=str(run_dir))


def evaluate_folds(checkpoint: str | Path, data: LabelledData, out: str | Path, template: Any, *,
                   requested: str = "", task: str | None = None, n_folds: int = 5,
                   random_state: int = MATBENCH_RANDOM_STATE, val_fraction: float = 0.1, limit: int | None = None,
                   batch_size: int = 64, device: str = "cpu") -> dict[str, Any]:
    """The MatBench protocol: for each fold k, fine-tune `checkpoint` with the `template`
    RunConfig (`fold_config`, run dir `out/fold{k}`) on the other folds, then predict fold k
    with the fine-tuned export. `limit` must be the one `data` was read with (the fine-tunes read
    the same records). Writes `out/report.json` (per-fold and pooled out-of-fold metrics, mean ±
    std over folds), `out/predictions.csv` (out-of-fold, with the fold) and the pooled
    parity/ROC plot. Returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    requested = requested or data.target
    scored = data.labelled
    ids = [data.crystals[i].id for i in scored]
    if len(set(ids)) < len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{data.path}: record ids repeat ({repeated[:5]}): the fold split needs unique ids")
    preds, fold_of = np.full(len(data.crystals), np.nan), np.full(len(data.crystals), -1)
    folds, spec = [], None
    for k, (train, val, test) in enumerate(fold_indices(len(scored), n_folds, random_state, val_fraction)):
        split = FoldSplit.from_indices(ids, train, val, test, fold=k, n_folds=n_folds,
                                       random_state=random_state, val_fraction=val_fraction)
        summary = run(validate(fold_config(template, checkpoint, data, requested, out / f"fold{k}", limit)),
                      split=split)
        held_out = scored[test]
        spec, fold_preds = predict_task(summary["export"], [data.crystals[i] for i in held_out], data.target,
                                    (requested,), task, batch_size, device, among=summary.get("tasks"))
        preds[held_out], fold_of[held_out] = fold_preds, k
        folds.append({"fold": k, "records": {"train": len(train), "val": len(val), "test": len(test)},
                      "metrics": score(spec.kind, data.labels[held_out], fold_preds),
                      "best_step": summary.get("best_step"), "steps": summary.get("steps"),
                      "export": str(summary["export"]), "finetune_test": summary.get("test", {}).get(spec.name),
                      "split": split.to_json()})
    main = "roc_auc" if spec.kind == "classification" else "mae"
    report = report_head(checkpoint, data, requested)
    report.update(task=spec.name, kind=spec.kind, unit=spec.unit or target_info(data.target).unit,
                  metrics=score(spec.kind, data.labels, preds),
                  folds={"protocol": f"sklearn KFold(n_splits={n_folds}, shuffle=True, "
                                     f"random_state={random_state}) over the labelled records in file order",
                         "val_fraction": val_fraction, "finetune_config": to_dict(template),
                         main: _summary([f["metrics"][main] for f in folds]), "per_fold": folds})
    write_predictions(out / "predictions.csv", data, preds, fold_of)
    title = f"{n_folds}-fold out-of-fold {spec.name} on {Path(data.file).name}"
    report["plot"] = plot(spec.kind, data.labels, preds, out, requested, report["unit"], title).name
    report["predictions"] = "predictions.csv"
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
