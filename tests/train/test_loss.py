"""MultiTaskLoss: uncertainty weighting (gradient in s_t matches the analytic formula),
masking per record/atom and per dataset, per-structure force reduction, tasks without labels
contributing nothing, fixed weights, logs."""

import math

import pytest
import torch

from foundation.data.graph import Batch
from foundation.model import TaskSpec, TaskStats
from foundation.train.loss import MultiTaskLoss

F64 = torch.float64


def make_batch(targets, masks, n_atoms=(2, 3, 1), datasets=("mp", "oqmd", "mp"), fixed=None):
    n_atoms = torch.tensor(n_atoms)
    total = int(n_atoms.sum())
    return Batch(
        numbers=torch.ones(total, dtype=torch.long), positions=torch.zeros(total, 3, dtype=F64),
        cell=torch.eye(3, dtype=F64).repeat(len(n_atoms), 1, 1), pbc=torch.ones(len(n_atoms), 3, dtype=torch.bool),
        batch=torch.repeat_interleave(torch.arange(len(n_atoms)), n_atoms),
        edge_index=torch.zeros(2, 0, dtype=torch.long), edge_shift=torch.zeros(0, 3, dtype=F64),
        n_atoms=n_atoms, targets=targets, masks=masks, fixed=fixed, datasets=list(datasets),
    )


GAP = TaskSpec.for_target("band_gap")
ENERGY = TaskSpec.for_target("energy")
FORCES = TaskSpec.for_target("forces", forces_of="energy")
METAL = TaskSpec.for_target("is_metal")


def test_regression_value_and_gradient_in_log_variance():
    batch = make_batch({"band_gap": torch.tensor([1.0, 2.0, 5.0], dtype=F64)},
                       {"band_gap": torch.tensor([True, True, False])})
    loss_fn = MultiTaskLoss([GAP], stats={"band_gap": TaskStats((0.0,), (2.0,))}).double()
    with torch.no_grad():
        loss_fn.log_vars.fill_(0.7)
    pred = torch.tensor([1.5, 1.0, 100.0], dtype=F64, requires_grad=True)
    loss, logs = loss_fn({"band_gap": pred}, batch)
    L = (0.5 / 2 + 1.0 / 2) / 2  # MAE of normalised errors over the two labelled records
    s = 0.7
    assert loss.item() == pytest.approx(0.5 * math.exp(-s) * L + 0.5 * s, abs=1e-14)
    loss.backward()
    assert loss_fn.log_vars.grad.item() == pytest.approx(0.5 - 0.5 * math.exp(-s) * L, abs=1e-14)
    assert pred.grad[2].item() == 0.0  # unlabelled record: no gradient
    assert logs == {"band_gap/loss": pytest.approx(L), "band_gap/count": 2.0,
                    "band_gap/weight": pytest.approx(math.exp(-s))}


@pytest.mark.parametrize("s", [-1.3, 0.0, 2.1])
def test_classification_uses_exp_minus_s(s):
    batch = make_batch({"is_metal": torch.tensor([1.0, 0.0, 1.0], dtype=F64)},
                       {"is_metal": torch.ones(3, dtype=torch.bool)})
    loss_fn = MultiTaskLoss([METAL]).double()
    with torch.no_grad():
        loss_fn.log_vars.fill_(s)
    logits = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    loss, _ = loss_fn({"is_metal": logits}, batch)
    L = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.targets["is_metal"]).item()
    assert loss.item() == pytest.approx(math.exp(-s) * L + 0.5 * s, abs=1e-13)
    loss.backward()
    assert loss_fn.log_vars.grad.item() == pytest.approx(0.5 - math.exp(-s) * L, abs=1e-13)


def test_extensive_errors_per_atom_and_loss_kinds():
    target = torch.tensor([4.0, 9.0, 1.0], dtype=F64)
    pred = torch.tensor([6.0, 3.0, 1.5], dtype=F64)
    mask = {"energy": torch.ones(3, dtype=torch.bool)}
    err = ((pred - target) / torch.tensor([2.0, 3.0, 1.0], dtype=F64)) / 0.5  # ÷ n_atoms, ÷ std
    expected = {"mae": err.abs().mean(), "mse": err.square().mean(),
                "huber": torch.nn.functional.huber_loss(err, torch.zeros(3, dtype=F64), delta=1.0)}
    for kind, value in expected.items():
        spec = TaskSpec.for_target("energy", loss=kind)
        loss_fn = MultiTaskLoss([spec], mode="fixed", stats={"energy": TaskStats((0.0,), (0.5,))}).double()
        _, logs = loss_fn({"energy": pred}, make_batch({"energy": target}, mask))
        assert logs["energy/loss"] == pytest.approx(value.item(), abs=1e-13), kind


def test_forces_reduced_per_structure_first_and_fixed_atoms_ignored():
    forces = torch.zeros(6, 3, dtype=F64)
    pred = forces.clone()
    pred[0, 0] = 3.0  # structure 0 (2 atoms): per-atom errors 1, 0 -> 0.5
    pred[2, 1] = 6.0  # structure 1 (3 atoms): atom 2 error 2, atom 3 is fixed (ignored) -> mean of (2, 0) = 1
    pred[3, 2] = 99.0  # fixed atom
    mask = torch.tensor([True, True, True, True, True, False])  # structure 2 has no force labels
    fixed = torch.tensor([False, False, False, True, False, False])
    batch = make_batch({"forces": forces}, {"forces": mask}, fixed=fixed)
    loss_fn = MultiTaskLoss([ENERGY, FORCES], stats={"energy": TaskStats((0.0,), (1.0,))}).double()
    _, logs = loss_fn({"energy": torch.zeros(3, dtype=F64), "forces": pred}, batch)
    assert logs["forces/loss"] == pytest.approx((0.5 + 1.0) / 2)  # mean over the 2 labelled structures
    assert logs["forces/count"] == 2.0
    keep_fixed = MultiTaskLoss([ENERGY, FORCES], free_atoms_only=False).double()
    _, logs = keep_fixed({"energy": torch.zeros(3, dtype=F64), "forces": pred}, batch)
    assert logs["forces/loss"] == pytest.approx((0.5 + (2 + 33) / 3) / 2)


def test_force_std_from_energy_task_or_its_own():
    loss_fn = MultiTaskLoss([ENERGY, FORCES], stats={"energy": TaskStats((0.0,), (0.25,))})
    assert loss_fn.std("forces").tolist() == [0.25] * 3
    loss_fn = MultiTaskLoss([ENERGY, FORCES], stats={"energy": TaskStats((0.0,), (0.25,)), "forces": TaskStats((0.0,), (0.1,))})
    assert loss_fn.std("forces").tolist() == pytest.approx([0.1] * 3)


def test_task_without_labels_contributes_nothing_and_raises_nothing():
    gap = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    batch = make_batch({"band_gap": gap, "is_metal": torch.zeros(3, dtype=F64)},
                       {"band_gap": torch.ones(3, dtype=torch.bool), "is_metal": torch.zeros(3, dtype=torch.bool)})
    tasks = [GAP, METAL, ENERGY]  # is_metal: all masked; energy: label key absent from the batch
    loss_fn = MultiTaskLoss(tasks).double()
    with torch.no_grad():
        loss_fn.log_vars.copy_(torch.tensor([0.2, -0.4, 1.5], dtype=F64))
    preds = {name: torch.randn(3, dtype=F64, requires_grad=True) for name in ("band_gap", "is_metal", "energy")}
    loss, logs = loss_fn(preds, batch)
    L = ((preds["band_gap"].detach() - gap).abs().mean()).item()
    assert loss.item() == pytest.approx(0.5 * math.exp(-0.2) * L + 0.1, abs=1e-14)
    loss.backward()
    assert loss_fn.log_vars.grad[1].item() == 0.0 and loss_fn.log_vars.grad[2].item() == 0.0
    assert torch.all(preds["is_metal"].grad == 0)
    assert preds["energy"].grad is None
    assert "is_metal/loss" not in logs and logs["is_metal/count"] == 0.0 and logs["energy/count"] == 0.0


def test_dataset_filter_masks_records():
    spec = TaskSpec.for_target("band_gap", name="gap_mp", datasets=("mp",))
    batch = make_batch({"band_gap": torch.tensor([1.0, 2.0, 3.0], dtype=F64)},
                       {"band_gap": torch.ones(3, dtype=torch.bool)})
    _, logs = MultiTaskLoss([spec], mode="fixed").double()({"gap_mp": torch.zeros(3, dtype=F64)}, batch)
    assert logs["gap_mp/count"] == 2.0 and logs["gap_mp/loss"] == pytest.approx((1.0 + 3.0) / 2)


@pytest.mark.parametrize("s", [-4.0, -1.0, 0.5])
def test_max_weight_caps_the_uncertainty_weight(s):
    """Below the floor −log(max_weight) s_t acts as the floor and gets no gradient; above it,
    nothing changes."""
    batch = make_batch({"band_gap": torch.tensor([1.0, 2.0, 5.0], dtype=F64)},
                       {"band_gap": torch.ones(3, dtype=torch.bool)})
    loss_fn = MultiTaskLoss([GAP], max_weight=math.e).double()  # floor s = -1
    with torch.no_grad():
        loss_fn.log_vars.fill_(s)
    pred = torch.zeros(3, dtype=F64)
    loss, logs = loss_fn({"band_gap": pred}, batch)
    L, used = 8.0 / 3, max(s, -1.0)
    assert loss.item() == pytest.approx(0.5 * math.exp(-used) * L + 0.5 * used, abs=1e-12)
    assert logs["band_gap/weight"] == pytest.approx(math.exp(-used))
    assert loss_fn.weights().item() == pytest.approx(math.exp(-used))
    loss.backward()
    expected = 0.0 if s < -1.0 else 0.5 - 0.5 * math.exp(-s) * L
    assert loss_fn.log_vars.grad.item() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="max_weight"):
        MultiTaskLoss([GAP], max_weight=0.0)


def test_fixed_mode_sums_weighted_losses_and_has_no_parameters():
    a = TaskSpec.for_target("band_gap", weight=2.0)
    b = TaskSpec.for_target("energy_per_atom", weight=0.5, loss="mse")
    batch = make_batch({"band_gap": torch.tensor([1.0, 2.0, 3.0], dtype=F64),
                        "energy_per_atom": torch.tensor([0.0, 1.0, 0.0], dtype=F64)},
                       {"band_gap": torch.ones(3, dtype=torch.bool), "energy_per_atom": torch.ones(3, dtype=torch.bool)})
    loss_fn = MultiTaskLoss([a, b], mode="fixed").double()
    assert list(loss_fn.parameters()) == []
    loss, logs = loss_fn({"band_gap": torch.zeros(3, dtype=F64), "energy_per_atom": torch.zeros(3, dtype=F64)}, batch)
    assert loss.item() == pytest.approx(2.0 * 2.0 + 0.5 * (1.0 / 3))
    assert logs["band_gap/weight"] == 2.0 and logs["energy_per_atom/weight"] == 0.5


def test_clear_errors():
    with pytest.raises(ValueError, match="mode"):
        MultiTaskLoss([GAP], mode="equal")
    with pytest.raises(ValueError, match="duplicate"):
        MultiTaskLoss([GAP, GAP])
    with pytest.raises(ValueError, match="unknown task"):
        MultiTaskLoss([GAP], stats={"gap": TaskStats((0,), (1,))})
    batch = make_batch({"band_gap": torch.zeros(3, 2, dtype=F64)}, {"band_gap": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="prediction .* but label"):
        MultiTaskLoss([GAP])({"band_gap": torch.zeros(3, dtype=F64)}, batch)
    with pytest.raises(KeyError, match="lack task"):
        MultiTaskLoss([GAP])({}, batch)
