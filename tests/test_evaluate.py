"""foundation.evaluate: metrics, reading labels, the MatBench fold split, the evaluate CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score
from sklearn.model_selection import KFold

from foundation.data.crystal import Crystal
from foundation.evaluate import (
    MATBENCH_RANDOM_STATE,
    FoldSplit,
    classification_metrics,
    fold_indices,
    read_labelled,
    regression_metrics,
    select_task,
)
from foundation.cli.evaluate import cli_main
from foundation.model import TaskSpec

ROOT = Path(__file__).resolve().parents[1]
PEROVSKITES = ROOT.parent / "shared" / "data" / "perovskites" / "perov5_val.csv"


def perovskite_rows(path: Path, n: int, blank_label: int | None = None) -> Path:
    """The first `n` perovskites of the shared file as a CSV at `path` (row `blank_label` without
    its heat_all label)."""
    csv.field_size_limit(2**31 - 1)
    with open(PEROVSKITES, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [row for _, row in zip(range(n), reader)]
        header = reader.fieldnames
    if blank_label is not None:
        rows[blank_label]["heat_all"] = ""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def tiny_export(directory: Path, tasks: list[TaskSpec]) -> Path:
    """A randomly initialised export of configs/model/tiny.yaml with `tasks`."""
    import torch

    from foundation.config import from_dict, load_yaml
    from foundation.model import FoundationModel, ModelConfig, TaskStats, save_export

    torch.manual_seed(0)
    config = from_dict(ModelConfig, load_yaml(ROOT / "configs" / "model" / "tiny.yaml"))
    stats = {t.name: TaskStats((-0.1,), (0.3,)) for t in tasks if t.kind == "regression"}
    return save_export(FoundationModel(config, tasks, stats), directory)


# -- metrics ---------------------------------------------------------------------------------------
def test_regression_metrics_by_hand_and_against_sklearn():
    y = np.array([1.0, 2.0, 4.0, np.nan])
    p = np.array([1.5, 1.0, 4.0, 9.0])
    m = regression_metrics(y, p)
    assert m["n"] == 3 and m["missing_label"] == 1
    assert m["mae"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 1.0) / 3))
    # R² = 1 - SS_res / SS_tot, mean 7/3: SS_tot = 16/9 + 1/9 + 25/9 = 42/9
    assert m["r2"] == pytest.approx(1 - 1.25 / (42 / 9))
    assert m["max_abs_error"] == 1.0
    assert m["mean_baseline_mae"] == pytest.approx((4 / 3 + 1 / 3 + 5 / 3) / 3)
    y, p = y[:3], p[:3]
    assert m["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, p)))
    assert m["r2"] == pytest.approx(r2_score(y, p))


def test_classification_metrics_by_hand_and_against_sklearn():
    y = np.array([0, 0, 1, 1, np.nan, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9, 0.5, 0.8])
    m = classification_metrics(y, p)
    assert m["n"] == 5 and m["missing_label"] == 1
    # positives {0.4, 0.9, 0.8} vs negatives {0.1, 0.6}: 5 of 6 pairs ranked right
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert m["accuracy"] == pytest.approx(3 / 5)  # 0.6 -> 1 (wrong), 0.4 -> 0 (wrong)
    assert m["positive_fraction"] == pytest.approx(3 / 5)
    assert m["majority_baseline_accuracy"] == pytest.approx(3 / 5)
    keep = ~np.isnan(y)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y[keep], p[keep]))
    assert m["log_loss"] == pytest.approx(log_loss(y[keep], p[keep]))
    assert math.isnan(classification_metrics([1, 1], [0.2, 0.7])["roc_auc"])  # one class only


@pytest.mark.parametrize("call, message", [
    (lambda: regression_metrics([np.nan, np.nan], [1.0, 2.0]), "no labelled record"),
    (lambda: regression_metrics([1.0, 2.0], [1.0]), "2 labels but 1 predictions"),
    (lambda: classification_metrics([0, 2], [0.1, 0.2]), "must be 0 or 1"),
    (lambda: classification_metrics([0, 1], [0.1, 1.2]), "probabilities in"),
])
def test_metric_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# -- labels and tasks --------------------------------------------------------------------------------
def test_read_labelled_resolves_columns_and_counts_missing(tmp_path):
    path = perovskite_rows(tmp_path / "perov.csv", 12, blank_label=3)
    data = read_labelled(path, "heat_all")  # the reader maps heat_all -> formation_energy (eV/cell)
    assert data.target == "formation_energy" and data.format == "cif_csv"
    assert data.read == 12 and len(data.crystals) == 12 and not data.rejects
    assert np.isnan(data.labels[3]) and list(data.labelled) == [i for i in range(12) if i != 3]
    assert data.labels[0] == pytest.approx(2.76)
    assert read_labelled(path, "formation_energy").labels[0] == pytest.approx(2.76)
    assert read_labelled(path, "heat_ref").target == "heat_ref"  # a column the reader does not map
    assert len(read_labelled(path, "band_gap", limit=5).crystals) == 5


def test_read_labelled_unknown_target_lists_present(tmp_path):
    path = perovskite_rows(tmp_path / "perov.csv", 3)
    with pytest.raises(ValueError, match=r"no target 'bulk_modulus'.*band_gap.*formation_energy"):
        read_labelled(path, "bulk_modulus")


def test_select_task():
    tasks = {t.name: t for t in (TaskSpec.for_target("formation_energy", name="heat"),
                                 TaskSpec.for_target("band_gap", name="gap_a"),
                                 TaskSpec.for_target("band_gap", name="gap_b"))}
    assert select_task(tasks, "formation_energy").name == "heat"
    assert select_task(tasks, "formation_energy", "heat_all").name == "heat"
    assert select_task(tasks, "band_gap", task="gap_b").name == "gap_b"
    with pytest.raises(ValueError, match=r"several tasks .*gap_a.*--task"):
        select_task(tasks, "band_gap")
    with pytest.raises(ValueError, match=r"no task for target 'is_metal'.*heat \(target formation_energy"):
        select_task(tasks, "is_metal")
    with pytest.raises(ValueError, match=r"no task 'gap_c'"):
        select_task(tasks, "band_gap", task="gap_c")


# -- MatBench folds ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [40, 101])
def test_fold_indices_match_matbench_kfold(n):
    folds = fold_indices(n, 5, val_fraction=0.1)
    expected = list(KFold(n_splits=5, shuffle=True, random_state=18012019).split(np.arange(n)))
    assert MATBENCH_RANDOM_STATE == 18012019
    tests = np.concatenate([test for _, _, test in folds])
    assert sorted(tests.tolist()) == list(range(n))  # the test folds partition the records
    for (train, val, test), (rest, expected_test) in zip(folds, expected):
        assert test.tolist() == sorted(expected_test.tolist())
        assert sorted(train.tolist() + val.tolist()) == sorted(rest.tolist())
        assert not set(val) & set(test) and not set(val) & set(train)
        assert len(val) == max(1, round(0.1 * len(rest)))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, fold_indices(n, 5)))  # seeded


def test_fold_split_assign_and_json():
    ids = [f"r{i}" for i in range(20)]
    train, val, test = fold_indices(20, 5)[2]
    split = FoldSplit.from_indices(ids, train, val, test, fold=2, n_folds=5, random_state=1, val_fraction=0.1)
    crystal = lambda i: Crystal([1], [[0, 0, 0]], np.eye(3) * 3, True, id=f"r{i}", source="s")  # noqa: E731
    assert [split.assign(crystal(i)) for i in test] == ["test"] * len(test)
    assert [split.assign(crystal(i)) for i in val] == ["val"] * len(val)
    assert split.to_json()["records"] == {"train": len(train), "val": len(val), "test": len(test)}
    other = FoldSplit.from_indices(ids, *fold_indices(20, 5)[3], fold=3, n_folds=5, random_state=1,
                                   val_fraction=0.1)
    assert other.to_json()["roles_sha256"] != split.to_json()["roles_sha256"]
    json.dumps(split.to_json())
    with pytest.raises(ValueError, match="not among the 20 records"):
        split.assign(crystal(99))
    with pytest.raises(ValueError, match="too few"):
        fold_indices(8, 5)


# -- the evaluate command ----------------------------------------------------------------------------
def test_evaluate_cli_writes_report_plot_and_predictions(tmp_path, capsys):
    data = perovskite_rows(tmp_path / "perov.csv", 30, blank_label=4)
    export = tiny_export(tmp_path / "export", [TaskSpec.for_target("formation_energy", name="heat")])
    out = tmp_path / "eval"
    code = cli_main([str(export), "--data", str(data), "--target", "heat_all", "--out", str(out),
                     "--batch-size", "7"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "heat" and report["label"] == "formation_energy" and report["unit"] == "eV"
    assert report["counts"] == {"read": 30, "kept": 30, "rejected": 0, "missing_label": 1, "scored": 29}
    assert all(math.isfinite(report["metrics"][k]) for k in ("mae", "rmse", "r2", "mean_baseline_mae"))
    assert report["metrics"]["n"] == 29 and report["checkpoint"] == str(export.resolve())
    assert report["foundation_version"] and report["date"] and len(report["data"]["sha256"]) == 64
    png = (out / "parity.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 and rows[0]["id"] == "18517" and float(rows[0]["true"]) == pytest.approx(2.76)
    assert math.isnan(float(rows[4]["true"]))  # predicted, not scored
    errors = [abs(float(r["true"]) - float(r["predicted"])) for r in rows if r["true"] != "nan"]
    assert np.mean(errors) == pytest.approx(report["metrics"]["mae"])
    printed = capsys.readouterr().out
    assert "mae" in printed and "eV" in printed and "report.json" in printed


def test_evaluate_classification_roc_and_rejects(tmp_path):
    data = perovskite_rows(tmp_path / "perov.csv", 20)
    text = data.read_text().splitlines(keepends=True)
    broken = tmp_path / "broken.csv"  # one CIF cut short: a rejected record with its reason
    lines = "".join(text)
    first_cif_end = lines.index("Cu  Cu0")
    broken.write_text(lines[:first_cif_end] + lines[lines.index('",CuCdN3'):])
    export = tiny_export(tmp_path / "export", [TaskSpec.for_target("is_metal", name="metal")])
    out = tmp_path / "eval"
    code = cli_main([str(export), "--data", str(broken), "--target", "is_metal", "--derive", "is_metal=band_gap <= 0",
                     "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "classification" and report["counts"]["rejected"] == 1
    assert report["rejects"][0]["id"] == "18517" and report["rejects"][0]["reason"]
    assert 0 <= report["metrics"]["accuracy"] <= 1 and report["metrics"]["n"] == 19
    assert (out / "roc.png").read_bytes().startswith(b"\x89PNG")


def test_evaluate_cli_clear_errors(tmp_path, capsys):
    data = perovskite_rows(tmp_path / "perov.csv", 5)
    export = tiny_export(tmp_path / "export", [TaskSpec.for_target("band_gap", name="gap")])
    assert cli_main([str(export), "--data", str(data), "--target", "bulk_modulus", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "no target 'bulk_modulus'" in err and "formation_energy" in err
    assert cli_main([str(export), "--data", str(data), "--target", "heat_all", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "no task for target 'formation_energy'" in err and "gap (target band_gap" in err
    (tmp_path / "empty").mkdir()
    assert cli_main([str(tmp_path / "empty"), "--data", str(data), "--target", "band_gap",
                     "--out", str(tmp_path / "e")]) == 2
    assert "not a foundation export" in capsys.readouterr().err
    assert not (tmp_path / "e" / "report.json").exists()


def test_evaluate_folds_end_to_end(tmp_path, capsys):
    """--folds 5 on 40 records with a 2-step budget: five fine-tunes, each fold predicted once by
    its own fine-tuned export, metrics equal to the fine-tune's own test-split evaluation."""
    data = perovskite_rows(tmp_path / "perov.csv", 40)
    export = tiny_export(tmp_path / "pretrained", [TaskSpec.for_target("formation_energy", name="heat")])
    out = tmp_path / "folds"
    code = cli_main([str(export), "--data", str(data), "--target", "band_gap", "--folds", "5", "--out", str(out),
                     "max_steps=2", f"cache_dir={tmp_path / 'cache'}", "log.tensorboard=false",
                     "log.progress=false", "distributed.device=cpu", "checkpoints.every=100"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    folds = report["folds"]["per_fold"]
    assert [f["records"] for f in folds] == [{"train": 29, "val": 3, "test": 8}] * 5
    assert all(f["steps"] == 2 and Path(f["export"]).parent == out / f"fold{f['fold']}" for f in folds)
    for f in folds:
        assert f["metrics"]["mae"] == pytest.approx(f["finetune_test"]["mae"], rel=1e-5)
    maes = [f["metrics"]["mae"] for f in folds]
    assert report["folds"]["mae"]["mean"] == pytest.approx(np.mean(maes))
    assert report["folds"]["mae"]["std"] == pytest.approx(np.std(maes))
    assert report["metrics"]["n"] == 40 and math.isfinite(report["metrics"]["r2"])
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    expected = KFold(5, shuffle=True, random_state=18012019).split(np.arange(40))
    assert [sorted(i for i, r in enumerate(rows) if r["fold"] == str(k)) for k in range(5)] == \
        [sorted(test.tolist()) for _, test in expected]
    assert (out / "parity.png").stat().st_size > 5000
    assert "mae over folds" in capsys.readouterr().out
