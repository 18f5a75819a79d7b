"""The benchmarks run: `bench/run_all.py --quick` on a small slice of each, so none of them rots
(their numbers are reported in bench/README.md, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_benchmark_runs_on_a_small_slice(tmp_path):
    subprocess.run([sys.executable, "bench/run_all.py", "--quick", "--out", str(tmp_path)], cwd=ROOT, check=True,
                   timeout=600)
    accuracy = json.loads((tmp_path / "accuracy.json").read_text())
    rows = accuracy["tasks"]["perovskites"]["models"]
    assert set(rows) == {"ours", "cgcnn", "schnet", "composition", "mean"}
    for name, row in rows.items():
        assert row["test_mae"] > 0 and row["n_test"] > 0, name
        if name != "mean":
            assert row["stopped_by"] == "max_time" and row["steps"] > 0 and row["loop_seconds"] >= 3, name
    assert json.loads((tmp_path / "data.json").read_text()) and json.loads((tmp_path / "model.json").read_text())
    curves = json.loads((tmp_path / "transfer_curves.json").read_text())["tasks"]["dcdft"]["sizes"]["all"]
    for variant in ("pretrained", "scratch"):  # the shipped model against the same architecture from scratch
        run = curves["runs"][variant][0]
        assert run["test_mae"] > 0 and run["steps"] > 0 and curves[variant]["n"] == 1, variant
    assert curves["ratio"]["mean"] == curves["runs"]["pretrained"][0]["test_mae"] / curves["runs"]["scratch"][0]["test_mae"]
    ablation = json.loads((tmp_path / "transfer_pretrain_ablations.json").read_text())
    row = ablation["variants"]["fixed-T2"]  # a real pretraining run, fine-tuned beside scratch
    assert row["pretrain_overrides"] == ["loss=fixed", "loader.temperature=2.0"] and row["heads"] > 0 and row["test"]["mean"] > 0
    assert row["ratio"]["mean"] == row["runs"][0]["test_mae"] / ablation["scratch"]["runs"][0]["test_mae"]
    features = json.loads((tmp_path / "transfer_features.json").read_text())["tasks"]["dcdft"]["rows"]
    assert set(features) == {"mean", "ours_blocks", "ours_readout", "composition"}
    assert features["ours_readout"]["width"] > features["ours_blocks"]["width"] > 64
    assert all(features[k][m]["test_mae"] > 0 for k in features if k != "mean" for m in ("ridge", "mlp"))
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["inference"]["ours (small)"]["atoms_per_s"] > 0 and sum(speed["step_profile"]["share"].values()) > 0.99
    search = json.loads((tmp_path / "encoder_search.json").read_text())["candidates"]["small"]
    assert search["val_mae"] > 0 and search["steps"] > 0
    corpus = json.loads((tmp_path / "corpus.json").read_text())
    assert corpus["sharding"]["structures"] == 2000 and corpus["statistics"]["records"] > 1900
    assert corpus["equal_batches"]["every_record_once"] and len(set(corpus["equal_batches"]["batches_per_rank"])) == 1
    assert corpus["loader_memory"]["all"]["rss_mib_after_batches"] > 0
    for peer in ("CHGNet 0.4", "SevenNet-0"):  # measured when the bench extra is installed, else said so
        assert peer in speed["inference"] or speed["missing"][peer].startswith("not installed")


def _accuracy_result(models: dict[str, float], n_train: int) -> dict:
    return {"tasks": {"mp_e_form": {"splits": {"train": n_train}, "models": {m: {"test_mae": v} for m, v in models.items()}}}}


def test_accuracy_plot_merges_learning_curves_with_a_plain_run(tmp_path):
    """`accuracy.py --plot` draws earlier runs together: a learning-curve file and a single-size run
    (its size "all"), models of one size merged across files; no training."""
    curves = {"learning_curves": {"500": _accuracy_result({"ours": 0.2, "cgcnn": 0.3}, 500)}}
    (tmp_path / "curves.json").write_text(json.dumps(curves))
    (tmp_path / "ours_all.json").write_text(json.dumps(_accuracy_result({"ours": 0.06}, 26538)))
    (tmp_path / "cgcnn_all.json").write_text(json.dumps(_accuracy_result({"cgcnn": 0.08}, 26538)))
    files = [str(tmp_path / f) for f in ("curves.json", "ours_all.json", "cgcnn_all.json")]
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import accuracy  # the benchmark script, run here as a module
    finally:
        sys.path.remove(str(ROOT / "bench"))
    by_size = accuracy.merged(files)
    assert set(by_size) == {"500", "all"}
    assert by_size["all"]["tasks"]["mp_e_form"]["models"] == {"ours": {"test_mae": 0.06}, "cgcnn": {"test_mae": 0.08}}
    assert accuracy.main(["--plot", *files, "--out", str(tmp_path / "curves_all.json")]) == 0
    assert (tmp_path / "curves_all.png").read_bytes()[:4] == b"\x89PNG"


def test_transfer_task_ablations_set_the_fine_tune_tasks():
    """`transfer.py ablations single|joint`: overrides that the config reader turns into the scored
    property alone, or it first (what early stopping and the scores follow) with the other elastic
    modulus second; `joint` on a task without another modulus stops before any run."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import transfer  # the benchmark script, run here as a module
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from foundation.config import apply_overrides, load_yaml

    for task, other in transfer.OTHER_MODULUS.items():
        config, scored = transfer.TASKS[task]
        data = load_yaml(ROOT / config)
        for name, want in (("single", [scored]), ("joint", [scored, other])):
            tasks = apply_overrides(data, transfer.TASK_ABLATIONS[name](task))["tasks"]
            assert [t["target"] for t in tasks] == [t["name"] for t in tasks] == want, (task, name)
    with pytest.raises(SystemExit, match="elasticity tasks only"):
        transfer.main(["ablations", "--task", "perovskites", "--ablations", "joint"])
