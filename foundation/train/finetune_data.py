"""Fine-tuning data: one readable file -> labelled records -> shards in the cache, the label
checks, and the metrics of a model on a split.

Records: the reader's labels plus `data.derive`d ones; only the tasks' labels are kept, and a
record with none of them is rejected ("no label for ..."), so read = kept + rejected as in any
shard build. Shards go to `<cache_dir>/finetune-<name>-<key>`, key = hash of the input file
(path, size, mtime), reader, options, limit, derived labels, task targets and the split rule (the
caller's split object's `to_json()` when one is given). `labels.json` beside the manifest counts
every label found (for the "no such target" message) and non-0/1 classification labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from .finetune_config import DERIVE

__all__ = ["GivenSplit", "derived_label", "prepare_data", "check_labels", "split_metrics", "metrics_table",
           "SMALL_TRAIN"]

log = logging.getLogger("foundation.train")

SMALL_TRAIN = 100  # fewer training records than this: a warning (a noisy, easily overfitted fine-tune)


def derived_label(expr: str, labels: dict[str, Any]) -> float | None:
    m = DERIVE.match(expr)
    key = m["log"] or m["key"]
    value = labels.get(key)
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if m["log"]:
        return math.log10(value) if value > 0 else None
    if m["op"] is None:
        return float(value)
    bound = float(m["value"])
    ops = {"<": value < bound, "<=": value <= bound, ">": value > bound, ">=": value >= bound, "==": value == bound}
    return float(ops[m["op"]])


def _records(res, tally: dict[str, Counter]) -> Iterator:
    """The reader's records with derived labels, only the tasks' labels kept; a record with none
    of them is a Reject. `tally` counts every label found and non-0/1 classification labels."""
    from ..data import readers
    from ..data.crystal import Crystal
    from ..data.records import Reject

    wanted = {t.target for t in res.tasks}
    binary = {t.target for t in res.tasks if t.kind == "classification"}
    derive = res.config.data.derive
    records = readers.read(res.data_path, format=res.data_format, **res.data_options)
    for record in itertools.islice(records, res.config.data.limit):
        if not isinstance(record, Crystal):
            yield record
            continue
        labels = dict(record.targets)
        for name, expr in derive.items():
            value = derived_label(expr, labels)
            if value is not None:
                labels[name] = value
        tally["found"].update(labels)
        record.targets = {k: v for k, v in labels.items() if k in wanted}
        if not record.targets:
            yield Reject(record.id, record.source, f"no label for {', '.join(sorted(wanted))}", res.data_path)
            continue
        for key in binary & set(record.targets):
            if record.targets[key] not in (0, 1):
                tally["non_binary"][f"{key}={record.targets[key]!r}"] += 1
        yield record


class GivenSplit:
    """A caller's split object (`assign(crystal)`, `to_json()`) in the SplitRule shape write_shards uses."""

    seed, group_by_prefix = 0, False

    def __init__(self, rule):
        self.rule = rule

    def group(self, crystal) -> str:
        return crystal.key

    def assign(self, crystal) -> str:
        split = self.rule.assign(crystal)
        if split not in ("train", "val", "test"):
            raise ValueError(f"split object gave {split!r} for record {crystal.key}: expected train, val or test")
        return split

    def to_json(self) -> dict[str, Any]:
        return {"given": self.rule.to_json()}


def _shard_key(res, split) -> str:
    from .datasets import cache_key
    from .pretrain import DatasetConfig

    d = res.config.data
    base = DatasetConfig(path=res.data_path, format=res.data_format, options=res.data_options, limit=d.limit,
                         fractions=d.fractions, split_seed=d.split_seed)
    spec = {"base": cache_key(res.data_name, base), "derive": d.derive,
            "targets": sorted({t.target for t in res.tasks}), "binary": sorted(t.target for t in res.tasks
                                                                                  if t.kind == "classification"),
            "split": None if split is None else split.to_json()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _build_shards(res, split, out: Path) -> None:
    from ..data.shards import SplitRule, write_shards

    d = res.config.data
    rule = GivenSplit(split) if split is not None else SplitRule(tuple(d.fractions), d.split_seed)
    tally: dict[str, Counter] = {"found": Counter(), "non_binary": Counter()}
    write_shards(_records(res, tally), out, split=rule, dedup=False, progress=False, overwrite=True,
                 reader={"format": res.data_format, "options": res.data_options, "limit": d.limit, "derive": d.derive},
                 sources=(res.data_path,))
    (out / "labels.json").write_text(json.dumps({k: dict(v) for k, v in tally.items()}, indent=1))


def prepare_data(res, split, info) -> str:
    """Collective. The shard directory (rank 0 builds it when the cache lacks it)."""
    from .distributed import barrier, broadcast_text

    text = ""
    if info.is_main:
        out = Path(res.config.cache_dir) / f"finetune-{res.data_name}-{_shard_key(res, split)}"
        if not ((out / "manifest.json").is_file() and (out / "labels.json").is_file()):
            _build_shards(res, split, out)
        text = str(out)
    where = broadcast_text(text, info)
    barrier(info)
    return where


def _check_targets(res, labels: dict[str, dict[str, int]]) -> None:
    found = labels["found"]
    for i, task in enumerate(res.tasks):
        if not found.get(task.target):
            listing = ", ".join(f"{k} ({n})" for k, n in sorted(found.items())) or "none"
            raise ConfigError(f"tasks[{i}].target: {res.data_path} ({res.data_format}) has no label "
                              f"{task.target!r}; labels found (records): {listing}")
    if labels["non_binary"]:
        raise ConfigError(f"tasks: a classification target needs labels 0 or 1; found "
                          f"{', '.join(list(labels['non_binary'])[:5])} (use kind regression, or derive a 0/1 "
                          "label with data.derive)")


def _reject_reasons(shard_dir: str) -> Counter:
    reasons: Counter = Counter()
    with open(Path(shard_dir) / "rejects.jsonl") as fh:
        for line in fh:
            reasons[json.loads(line)["reason"].split(":")[0][:80]] += 1
    return reasons


def check_labels(res, shard_dir: str, report: bool = True) -> dict[str, Any]:
    """ConfigError for a target absent from the data, non-0/1 classification labels or an empty
    train split; with `report`, logs the record counts (and warns of a tiny train or no val split).
    Returns the manifest's counts."""
    from ..data.shard_format import read_manifest

    _check_targets(res, json.loads((Path(shard_dir) / "labels.json").read_text()))
    counts = read_manifest(shard_dir)["counts"]
    splits = {s: v["records"] for s, v in counts["splits"].items()}
    if splits["train"] == 0:
        raise ConfigError(f"data: no training record in {res.data_path} (kept {counts['written']})")
    if report:
        reasons = "".join(f"; {n} x {r}" for r, n in _reject_reasons(shard_dir).most_common(3))
        log.info("data %s: read %d records, kept %d (train %d, val %d, test %d), rejected %d%s -> %s",
                 res.data_name, counts["read"], counts["written"], splits["train"], splits["val"], splits["test"],
                 counts["rejected"], reasons, shard_dir)
        if splits["train"] < SMALL_TRAIN:
            log.warning("only %d training records: expect a noisy fine-tune that overfits easily", splits["train"])
        if splits["val"] == 0:
            log.warning("no validation records: no early stopping, the last weights are exported")
    return counts


def split_metrics(model, res, shard_dir: str, split: str, device) -> dict[str, Any] | None:
    """{task: regression_metrics | classification_metrics} of `model` on every record of `split`
    (None when the split is empty). One process: each record exactly once."""
    from ..data.shard_format import read_manifest
    from ..data.stream import build_loader
    from ..evaluate import classification_metrics, regression_metrics
    from .metrics import label_mask

    if not read_manifest(shard_dir)["counts"]["splits"][split]["records"]:
        return None
    cfg = dataclasses.replace(res.loader, shuffle=False, temperature=1.0, num_workers=0)
    rows: dict[str, tuple[list, list]] = {t.name: ([], []) for t in res.tasks}
    needs_grad = any(t.forces_of is not None for t in res.tasks)
    for batch in build_loader({res.data_name: shard_dir}, split, cfg):
        batch = batch.to(device)
        with torch.set_grad_enabled(needs_grad):
            out = model(batch)
        for task in res.tasks:
            if task.target not in batch.targets:
                continue
            mask = label_mask(task, batch)
            rows[task.name][0].append(out[task.name].detach()[mask].reshape(-1).double().cpu())
            rows[task.name][1].append(batch.targets[task.target][mask].reshape(-1).double().cpu())
    result = {}
    for task in res.tasks:
        preds, labels = rows[task.name]
        if not preds or not sum(len(p) for p in preds):
            continue
        p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
        result[task.name] = (classification_metrics(y, torch.sigmoid(torch.from_numpy(p)).numpy())
                             if task.kind == "classification" else regression_metrics(y, p))
    return result


def metrics_table(results: dict[str, dict[str, Any] | None], units: dict[str, str]) -> str:
    """Fixed-width table: split, task, n, MAE, RMSE, R2 (regression), ROC-AUC, accuracy, unit."""
    columns = ("mae", "rmse", "r2", "roc_auc", "accuracy")
    rows = [("split", "task", "n", "MAE", "RMSE", "R2", "ROC-AUC", "accuracy", "unit")]
    for split, tasks in results.items():
        for task, m in (tasks or {}).items():
            cells = [f"{m[c]:.4g}" if c in m else "" for c in columns]
            rows.append((split, task, str(m["n"]), *cells, units.get(task, "") if "mae" in m else ""))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
