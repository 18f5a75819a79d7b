"""FoundationModel: outputs per task, heads (normalisation, element references, pooling),
explicit head swaps, the encoder alone, configs and validation."""


import pytest
import torch
from model_fixtures import batch_of, load_mp

from foundation.config import ConfigError, from_dict, load_yaml
from foundation.model import Encoder, FoundationModel, ModelConfig, TaskSpec, TaskStats

CONFIG = ModelConfig(cutoff=4.0, n_basis=6, hidden_irreps="8x0e + 4x1o + 2x2e", n_layers=2,
                     radial_hidden=(8,), head_hidden=8)
CRYSTALS = load_mp(max_atoms=6, limit=30)[:5]


def tasks():
    return [TaskSpec.for_target("energy"), TaskSpec.for_target("forces", forces_of="energy"),
            TaskSpec.for_target("band_gap"), TaskSpec.for_target("is_metal"),
            TaskSpec(name="vec", target="vec_label", dim=4)]


@pytest.fixture(scope="module")
def batch():
    return batch_of(CRYSTALS, CONFIG.cutoff)


def test_predictions_for_every_task_with_shapes(batch):
    model = FoundationModel(CONFIG, tasks(), dtype=torch.float64)
    p = model(batch)
    assert list(p) == ["energy", "forces", "band_gap", "is_metal", "vec"]  # the caller's order
    n_graphs, n_atoms = len(CRYSTALS), sum(c.n_atoms for c in CRYSTALS)
    assert p["energy"].shape == p["band_gap"].shape == p["is_metal"].shape == (n_graphs,)
    assert p["forces"].shape == (n_atoms, 3) and p["vec"].shape == (n_graphs, 4)
    assert "vec_label" not in batch.targets  # predicted although no record carries the label
    assert all(v.dtype == torch.float64 and torch.isfinite(v).all() for v in p.values())


def test_normalisation_and_element_references(batch):
    torch.manual_seed(1)
    plain = FoundationModel(CONFIG, tasks()[:1] + [TaskSpec.for_target("energy_per_atom")], dtype=torch.float64)
    refs = {z: 0.5 * z for z in range(119)}
    torch.manual_seed(1)
    shifted = FoundationModel(CONFIG, tasks()[:1] + [TaskSpec.for_target("energy_per_atom")],
                              stats={"energy": TaskStats((2.0,), (3.0,), refs),
                                     "energy_per_atom": TaskStats((-1.0,), (0.5,), refs)}, dtype=torch.float64)
    a, b = plain(batch), shifted(batch)
    n = batch.n_atoms.double()
    ref_sum = torch.zeros(batch.n_graphs, dtype=torch.float64).index_add(0, batch.batch, 0.5 * batch.numbers.double())
    # extensive: Σ (σ y_i + μ + ref) = σ E + μ n + Σ ref
    torch.testing.assert_close(b["energy"], 3.0 * a["energy"] + 2.0 * n + ref_sum)
    torch.testing.assert_close(b["energy_per_atom"], 0.5 * a["energy_per_atom"] - 1.0 + ref_sum / n)
    assert shifted.heads["energy"].element_ref[8].item() == 4.0  # a buffer, saved with the model
    assert "heads.energy.element_ref" in shifted.state_dict() and "heads.energy.std" in shifted.state_dict()


def test_forces_in_eval_under_no_grad_are_detached(batch):
    model = FoundationModel(CONFIG, tasks(), dtype=torch.float64).eval()
    with torch.no_grad():
        p = model(batch)
    assert not p["forces"].requires_grad and p["forces"].abs().max() > 0
    model.train()
    p = model(batch)
    assert p["forces"].requires_grad  # create_graph in training: the force loss back-propagates
    p["forces"].square().sum().backward()
    assert model.heads["energy"].mlp[0].weight.grad.abs().max() > 0


def test_add_and_remove_tasks_explicitly(batch):
    model = FoundationModel(CONFIG, tasks()[:3])
    with pytest.raises(ValueError, match="already exists"):
        model.add_task(TaskSpec.for_target("band_gap"))
    with pytest.raises(ValueError, match="force task"):
        model.remove_task("energy")
    with pytest.raises(KeyError, match="no task 'nope'"):
        model.remove_task("nope")
    with pytest.raises(ValueError, match="must name an energy task"):
        model.add_task(TaskSpec.for_target("forces", name="f2", forces_of="band_gap"))
    removed = model.remove_task("band_gap")
    assert removed.name == "band_gap" and "band_gap" not in model.heads
    model.add_task(TaskSpec.for_target("band_gap", name="gap_ft"), TaskStats((1.0,), (2.0,)))
    assert list(model(batch.to(dtype=torch.float32))) == ["energy", "forces", "gap_ft"]
    assert model.heads["gap_ft"].std.item() == 2.0
    model.remove_task("forces")
    model.remove_task("energy")
    assert list(model.tasks) == ["gap_ft"] and list(model.heads) == ["gap_ft"]


def test_constructor_refuses_inconsistent_inputs():
    with pytest.raises(ValueError, match="unknown task"):
        FoundationModel(CONFIG, tasks()[:1], stats={"band_gap": TaskStats()})
    with pytest.raises(ValueError, match="already exists"):
        FoundationModel(CONFIG, tasks()[:1] * 2)
    with pytest.raises(ValueError, match="std > 0"):
        TaskStats((0.0,), (0.0,))
    with pytest.raises(ValueError, match="classification"):
        FoundationModel(CONFIG, [TaskSpec.for_target("is_metal")], stats={"is_metal": TaskStats()})
    # a force task listed before its energy is fine
    model = FoundationModel(CONFIG, [tasks()[1], tasks()[0]])
    assert list(model.tasks) == ["forces", "energy"]


def test_encoder_alone(batch):
    encoder = Encoder(CONFIG, dtype=torch.float64)
    out = encoder(batch)
    assert set(out) == {"node_features", "node_invariants", "graph_features", "block_features"}
    assert out["block_features"].shape == (batch.n_graphs, encoder.n_block_features)
    torch.testing.assert_close(out["block_features"][:, -CONFIG.n_scalars:], out["graph_features"])
    assert out["node_features"].shape == (batch.positions.shape[0], encoder.irreps_out.dim)
    assert out["node_invariants"].shape == (batch.positions.shape[0], CONFIG.n_scalars)
    assert out["graph_features"].shape == (batch.n_graphs, CONFIG.n_scalars)
    first = out["node_invariants"][: CRYSTALS[0].n_atoms].mean(0)
    torch.testing.assert_close(out["graph_features"][0], first)


def test_atomic_number_beyond_table_is_refused(batch):
    small = ModelConfig(cutoff=4.0, n_basis=4, hidden_irreps="4x0e", n_layers=1, max_atomic_number=20)
    with pytest.raises(ValueError, match="max_atomic_number 20"):
        Encoder(small)(batch)


def test_task_spec_validation_and_defaults():
    spec = TaskSpec.for_target("formation_energy_per_atom", datasets=["oqmd"])
    assert (spec.level, spec.kind, spec.unit, spec.extensive, spec.datasets) == (
        "structure", "regression", "eV/atom", False, ("oqmd",))
    assert spec.is_energy and TaskSpec.for_target("energy").is_energy
    assert not TaskSpec.for_target("band_gap").is_energy
    assert TaskSpec.for_target("is_metal").loss == "bce"
    with pytest.raises(ValueError, match="forces_of"):
        TaskSpec.for_target("forces")
    with pytest.raises(ValueError, match="bce"):
        TaskSpec(name="x", target="x", loss="bce")
    with pytest.raises(ValueError, match="level"):
        TaskSpec(name="x", target="x", level="bond")
    with pytest.raises(ValueError, match="extensive"):
        TaskSpec(name="x", target="x", level="atom", extensive=True)
    built = from_dict(TaskSpec, {"name": "g", "target": "band_gap", "datasets": ["mp", "oqmd"]})
    assert built.datasets == ("mp", "oqmd")
    with pytest.raises(ConfigError, match="loss"):
        from_dict(TaskSpec, {"name": "g", "target": "band_gap", "loss": "l3"})


def test_model_config_validation():
    with pytest.raises(ValueError, match="0e"):
        ModelConfig(hidden_irreps="8x1o")
    with pytest.raises(ValueError, match="irreps string"):
        ModelConfig(hidden_irreps="eight scalars")
    with pytest.raises(ConfigError, match="cutoff"):
        from_dict(ModelConfig, {"cutoff": -1.0})
    with pytest.raises(ConfigError, match="n_layer"):
        from_dict(ModelConfig, {"n_layer": 3})


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_yaml_configs_build(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "model" / f"{name}.yaml"
    config = from_dict(ModelConfig, load_yaml(path))
    model = FoundationModel(config, [TaskSpec.for_target("energy")])
    assert len(model.encoder.blocks) == config.n_layers
    assert len(model.encoder.ewald) == (config.n_layers // config.ewald_every if config.ewald_every else 0)


def test_tiny_float32_forward_backward_on_32_real_structures():
    """The CPU config on real MP cells: finite predictions and a gradient for every head and block
    (its speed is measured in bench/model.py, not asserted here)."""
    from pathlib import Path

    config = from_dict(ModelConfig, load_yaml(Path(__file__).resolve().parents[2] / "configs/model/tiny.yaml"))
    model = FoundationModel(config, tasks()[:4])
    batch = batch_of(load_mp(max_atoms=20, limit=40)[:32], config.cutoff, dtype=torch.float32)
    p = model(batch)
    assert all(torch.isfinite(v).all() for v in p.values())
    (p["energy"].sum() + p["forces"].square().sum() + p["band_gap"].sum()).backward()
    grads = {n: q.grad for n, q in model.named_parameters() if n.startswith(("encoder.", "heads.energy", "heads.band_gap"))}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())


def test_bf16_model_keeps_exact_references_and_pools_in_float32(batch):
    torch.manual_seed(2)
    refs = {"energy": TaskStats(element_refs={z: -1000.0 - z for z in range(119)})}
    model = FoundationModel(CONFIG, tasks()[:2], stats=refs)
    low = FoundationModel(CONFIG, tasks()[:2], stats=refs)
    low.load_state_dict(model.state_dict())
    low = low.to(torch.bfloat16)
    head = low.heads["energy"]
    assert head.mlp[0].weight.dtype == torch.bfloat16
    assert head.element_ref.dtype == head.std.dtype == torch.float32 and head.element_ref[8] == -1008.0
    exact = model(batch.to(dtype=torch.float32))["energy"]
    p = low(batch.to(dtype=torch.bfloat16))
    assert p["energy"].dtype == torch.float32 and p["forces"].shape == (batch.positions.shape[0], 3)
    # bf16 alone would resolve ~-5000 eV only to 32 eV; the learned part stays bf16-accurate.
    assert (p["energy"] - exact).abs().max() < 0.5


@pytest.mark.parametrize("own_datasets", [False, True])
def test_forces_of_an_eV_per_atom_energy_are_of_the_whole_cell(batch, own_datasets):
    """F = -d(N·e)/dx for an intensive energy task: the same forces as its extensive twin."""
    specs = [TaskSpec.for_target("energy_per_atom", name="e_atom"),
             TaskSpec.for_target("forces", name="f_atom", forces_of="e_atom"),
             TaskSpec.for_target("energy", name="e_cell"),
             TaskSpec.for_target("forces", name="f_cell", forces_of="e_cell")]
    torch.manual_seed(3)
    model = FoundationModel(CONFIG, specs, dtype=torch.float64)
    model.heads["e_cell"].load_state_dict(model.heads["e_atom"].state_dict())  # same per-atom terms
    model.forces_on_own_datasets = own_datasets
    p = model(batch)
    torch.testing.assert_close(p["e_cell"], p["e_atom"] * batch.n_atoms.double())
    torch.testing.assert_close(p["f_atom"], p["f_cell"], rtol=1e-10, atol=1e-12)
