import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from foundation.train.distributed import DistInfo
from foundation.metrics import summary_table
from foundation.train.validation import MetricAccumulator, evaluate

from toy import TASKS, make_batch

SOLO = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend="gloo")


def _preds(batch, shift=0.5):
    return {"energy": batch.targets["energy"] + shift, "is_metal": batch.targets["is_metal"] * 2 - 1}


def test_mae_rmse_and_auc_match_direct_computation():
    acc = MetricAccumulator(["toy"], TASKS)
    batches = [make_batch(1, 0, k) for k in range(3)]
    scores, labels = [], []
    for k, b in enumerate(batches):
        b.masks["energy"][0] = False  # an unlabelled record is ignored
        p = _preds(b)
        p["is_metal"] = torch.randn(b.n_graphs, generator=torch.Generator().manual_seed(k))
        scores += p["is_metal"].tolist()
        labels += b.targets["is_metal"].tolist()
        acc.add("toy", p, b)
    out = acc.reduce(SOLO)["toy"]
    assert out["energy"]["mae"] == pytest.approx(0.5) and out["energy"]["rmse"] == pytest.approx(0.5)
    assert out["energy"]["n"] == 3 * 3
    if 0 < sum(labels) < len(labels):
        assert out["is_metal"]["roc_auc"] == pytest.approx(roc_auc_score(np.array(labels) > 0.5, scores))
    else:
        assert math.isnan(out["is_metal"]["roc_auc"])


def test_evaluate_respects_max_batches_and_prints_a_table():
    calls = []

    def forward(batch):
        calls.append(batch.n_graphs)
        return _preds(batch, shift=-0.25)

    metrics = evaluate(forward, {"toy": lambda: (make_batch(2, 0, k) for k in range(5))}, TASKS, SOLO,
                       prepare=lambda b: b, max_batches=2)
    assert len(calls) == 2
    assert metrics["toy"]["energy"]["mae"] == pytest.approx(0.25)
    table = summary_table(metrics, {"energy": "eV"})
    assert "toy" in table and "MAE" in table and "0.25" in table and "eV" in table


def test_mean_predictor_is_scored_beside_each_head_and_the_verdict_needs_both_bars():
    """baselines: a per-atom mean times the atoms (extensive) is the bar of an energy head; the
    verdict says "learns" only below both the mean predictor and the initial value."""
    from foundation.metrics import head_verdict

    batches = [make_batch(1, 0, k) for k in range(3)]
    acc = MetricAccumulator(["toy"], TASKS, baselines={"energy": (-2.0, True)})
    expected = []
    for b in batches:
        acc.add("toy", _preds(b, shift=0.1), b)
        m = b.masks["energy"]
        expected += (-2.0 * b.n_atoms[m].double() - b.targets["energy"][m].double()).abs().tolist()
    out = acc.reduce(SOLO)["toy"]
    assert out["energy"]["mean_mae"] == pytest.approx(np.mean(expected))
    assert "mean_mae" not in out["is_metal"]
    assert head_verdict(0.1, 0.5, 0.3) == "learns"
    assert head_verdict(0.4, 0.3, 0.5) == "NOT: no better than mean"
    assert head_verdict(0.9, 0.95, None, higher_is_better=True) == "NOT: no better than mean"
    assert head_verdict(0.1381, 0.1382, 0.2) == "NOT: no better than mean"  # a tie is not learning
    table = summary_table({"toy": out}, {"energy": "eV"}, {"toy": {"energy": {"mae": 1.0, "n": 3}}})
    assert "mean pred." in table and "learns" in table.splitlines()[2] + table.splitlines()[3]
