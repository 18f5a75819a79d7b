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
            assert row["val_curve"][-1][0] == row["steps"] and all(v > 0 for _, v in row["val_curve"]), name
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
    assert search["val_mae"] > 0 and search["steps"] > 0 and search["val_curve"][-1][0] == search["steps"]
    corpus = json.loads((tmp_path / "corpus.json").read_text())
    assert corpus["sharding"]["structures"] == 2000 and corpus["statistics"]["records"] > 1900
    assert corpus["equal_batches"]["every_record_once"] and len(set(corpus["equal_batches"]["batches_per_rank"])) == 1
    assert corpus["loader_memory"]["all"]["rss_mib_after_batches"] > 0
    for peer in ("CHGNet 0.4", "SevenNet-0"):  # measured when the bench extra is installed, else said so
        assert peer in speed["inference"] or speed["missing"][peer].startswith("not installed")


def _accuracy_result(models: dict[str, float], n_train: int) -> dict:
    return {"tasks": {"mp_e_form": {"splits": {"train": n_train}, "models": {m: {"test_mae": v} for m, v in models.items()}}}}


def test_accuracy_plot_merges_learning_curves_with_a_plain_run(tmp_path, bench_script):
    """`accuracy.py --plot` draws earlier runs together: a learning-curve file and a single-size run
    (its size "all"), models of one size merged across files; no training."""
    curves = {"learning_curves": {"500": _accuracy_result({"ours": 0.2, "cgcnn": 0.3}, 500)}}
    (tmp_path / "curves.json").write_text(json.dumps(curves))
    (tmp_path / "ours_all.json").write_text(json.dumps(_accuracy_result({"ours": 0.06}, 26538)))
    (tmp_path / "cgcnn_all.json").write_text(json.dumps(_accuracy_result({"cgcnn": 0.08}, 26538)))
    files = [str(tmp_path / f) for f in ("curves.json", "ours_all.json", "cgcnn_all.json")]
    accuracy = bench_script("accuracy")
    by_size = accuracy.merged(files)
    assert set(by_size) == {"500", "all"}
    assert by_size["all"]["tasks"]["mp_e_form"]["models"] == {"ours": {"test_mae": 0.06}, "cgcnn": {"test_mae": 0.08}}
    assert accuracy.main(["--plot", *files, "--out", str(tmp_path / "curves_all.json")]) == 0
    assert (tmp_path / "curves_all.png").read_bytes()[:4] == b"\x89PNG"


def _seed_run(overrides: list[str], rows: dict[str, tuple[float, float]]) -> dict:
    return {"overrides": overrides, "tasks": {"log_kvrh": {"config": "configs/finetune/bulk_modulus.yaml", "models": {
        **{m: {"test_mae": t, "val_mae": v} for m, (t, v) in rows.items()}, "mean": {"test_mae": 0.3}}}}}


def test_accuracy_seed_summary_means_spreads_and_ratios(tmp_path, bench_script):
    """`accuracy.py --combine`: runs of different seeds (a `seed=` override, else the task config's
    seed, 0) summarised per model: each seed's MAE, mean, sample std and the ratio of mean test MAEs
    to CGCNN on the same seeds; the same seed twice is refused."""
    accuracy = bench_script("accuracy")
    seed0 = _seed_run(["add_element_features=true"], {"ours": (0.044, 0.052), "cgcnn": (0.055, 0.054)})
    seed1 = _seed_run(["seed=1"], {"ours": (0.051, 0.054), "cgcnn": (0.051, 0.060), "schnet": (0.06, 0.06)})
    summary = accuracy.seed_summary([seed0, seed1])["log_kvrh"]
    assert set(summary) == {"ours", "cgcnn", "schnet"}  # not the train-mean row
    ours, cgcnn = summary["ours"], summary["cgcnn"]
    assert ours["seeds"] == [0, 1] and ours["test_mae"] == [0.044, 0.051]
    assert ours["test_mean"] == pytest.approx(0.0475) and ours["test_std"] == pytest.approx(0.007 / 2 ** 0.5)
    assert ours["test_ratio_to_cgcnn"] == pytest.approx(0.0475 / 0.053)
    assert ours["val_ratio_to_cgcnn"] == pytest.approx(0.053 / 0.057)
    assert summary["schnet"]["test_std"] is None and "test_ratio_to_cgcnn" not in summary["schnet"]  # seed 1 only
    with pytest.raises(ValueError, match="seed 1 is in two"):
        accuracy.seed_summary([seed1, seed1])
    paths = []
    for i, run in enumerate((seed0, seed1)):
        paths.append(str(tmp_path / f"run{i}.json"))
        Path(paths[-1]).write_text(json.dumps(run))
    assert accuracy.main(["--combine", *paths, "--out", str(tmp_path / "seeds.json")]) == 0
    doc = json.loads((tmp_path / "seeds.json").read_text())
    assert doc["sources"] == paths and doc["summary"]["log_kvrh"]["ours"]["test_mean"] == pytest.approx(0.0475)


def test_accuracy_seeds_run_each_seed_in_its_own_folder(tmp_path, monkeypatch, bench_script):
    """`accuracy.py --seeds 0 2`: one run per seed, each with `seed=S` added to the config overrides
    and its own work folder, summarised together; a `seed=` in --args as well is refused."""
    accuracy = bench_script("accuracy")
    calls = []

    def fake_run(tasks, models, budget, checkpoint, nproc, work, quick, size, extra):
        calls.append((Path(work).name, extra))
        seed = int(extra[-1].split("=")[1])
        return _seed_run(list(extra), {"ours": (0.05 + seed / 100, 0.05), "cgcnn": (0.06, 0.06)})

    monkeypatch.setattr(accuracy, "run", fake_run)
    out = tmp_path / "seeds.json"
    assert accuracy.main(["--tasks", "log_kvrh", "--models", "ours", "cgcnn", "--seeds", "0", "2",
                          "--args", "add_element_features=true", "--work", str(tmp_path), "--out", str(out)]) == 0
    assert calls == [("seed0", ("add_element_features=true", "seed=0")), ("seed2", ("add_element_features=true", "seed=2"))]
    doc = json.loads(out.read_text())
    assert set(doc["runs"]) == {"0", "2"} and doc["summary"]["log_kvrh"]["ours"]["test_mean"] == pytest.approx(0.06)
    seed1 = tmp_path / "seed1.json"
    seed1.write_text(json.dumps(_seed_run(["seed=1"], {"ours": (0.05, 0.05), "cgcnn": (0.05, 0.05)})))
    assert accuracy.main(["--combine", str(out), str(seed1), "--out", str(tmp_path / "all.json")]) == 0
    assert json.loads((tmp_path / "all.json").read_text())["summary"]["log_kvrh"]["ours"]["seeds"] == [0, 1, 2]
    with pytest.raises(SystemExit, match="leave seed= out"):
        accuracy.main(["--seeds", "0", "--args", "seed=1", "--out", str(out)])


def test_transfer_task_ablations_set_the_fine_tune_tasks(bench_script):
    """`transfer.py ablations single|joint`: overrides that the config reader turns into the scored
    property alone, or it first (what early stopping and the scores follow) with the other elastic
    modulus second; `joint` on a task without another modulus stops before any run."""
    transfer = bench_script("transfer")
    from foundation.config import apply_overrides, load_yaml

    for task, other in transfer.OTHER_MODULUS.items():
        config, scored = transfer.TASKS[task]
        data = load_yaml(ROOT / config)
        for name, want in (("single", [scored]), ("joint", [scored, other])):
            tasks = apply_overrides(data, transfer.TASK_ABLATIONS[name](task))["tasks"]
            assert [t["target"] for t in tasks] == [t["name"] for t in tasks] == want, (task, name)
    with pytest.raises(SystemExit, match="elasticity tasks only"):
        transfer.main(["ablations", "--task", "perovskites", "--ablations", "joint"])
