"""load_model / predict: every task in physical units, the same for Structure, Atoms and Crystal
inputs, independent of the batch size, bad structures named; the `foundation predict` CSV."""

import csv
import json

import numpy as np
import pytest
import torch
from api_fixtures import PEROVSKITES, perovskites, random_rotation, rotated

import foundation
from foundation.api import load_model
from foundation.cli import main


@pytest.fixture(scope="module")
def predictor(export64):
    return load_model(export64)


@pytest.fixture(scope="module")
def crystals():
    return perovskites(5)


def test_tasks_units_and_shapes(predictor, crystals):
    assert list(predictor.tasks) == ["energy", "forces", "formation_energy", "band_gap", "is_metal"]
    assert predictor.units == {"energy": "eV", "forces": "eV/Å", "formation_energy": "eV", "band_gap": "eV",
                               "is_metal": "probability"}
    assert not predictor.model.training
    out = predictor.predict(crystals)
    assert list(out) == list(predictor.tasks)
    for name in ("energy", "formation_energy", "band_gap", "is_metal"):
        assert out[name].shape == (5,) and out[name].dtype == np.float64, name
    assert ((out["is_metal"] > 0) & (out["is_metal"] < 1)).all()
    assert out["forces"].dtype == object and [f.shape for f in out["forces"]] == [(5, 3)] * 5
    # the probability is the sigmoid of the model's logit; forces are -dE/dx of the energy head
    from foundation.data.graph import collate, neighbor_graph

    batch = collate([neighbor_graph(c.replace(targets={}), 5.0) for c in crystals], dtype=torch.float64)
    with torch.no_grad():
        raw = predictor.model(batch)
    np.testing.assert_allclose(out["is_metal"], torch.sigmoid(raw["is_metal"]).numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.concatenate(out["forces"]), raw["forces"].numpy(), atol=1e-12)


def test_structure_atoms_crystal_agree(predictor, crystals):
    crystal = crystals[0]
    out = predictor.predict([crystal, crystal.to_pymatgen(), crystal.to_ase()])
    for name, values in out.items():
        for i in (1, 2):
            np.testing.assert_allclose(np.asarray(values[i], float), np.asarray(values[0], float),
                                       rtol=0, atol=1e-10, err_msg=f"{name}, input {i}")


def test_deterministic_and_batch_size_independent(predictor, crystals):
    inputs = crystals + [rotated(crystals[1], random_rotation(4))]
    reference = predictor.predict(inputs, batch_size=64)
    again = predictor.predict(inputs, batch_size=2)
    for name in reference:
        np.testing.assert_allclose(np.stack(list(again[name])).astype(float),
                                   np.stack(list(reference[name])).astype(float), rtol=0, atol=1e-10)
    # rotation: scalars unchanged, forces rotate with the structure
    np.testing.assert_allclose(reference["energy"][5], reference["energy"][1], atol=1e-10)
    np.testing.assert_allclose(reference["forces"][5], reference["forces"][1] @ random_rotation(4).T, atol=1e-10)
    subset = predictor.predict(inputs, tasks=["band_gap", "is_metal"])  # heads only, no gradients
    assert list(subset) == ["band_gap", "is_metal"]
    np.testing.assert_allclose(subset["band_gap"], reference["band_gap"], rtol=0, atol=1e-12)
    with pytest.raises(KeyError, match="unknown task.*'gap'"):
        predictor.predict(inputs, tasks=["gap"])
    empty = predictor.predict([])
    assert empty["energy"].shape == (0,) and empty["forces"].shape == (0,)


def test_bad_structure_named(predictor, crystals):
    good = crystals[0]
    nan = good.positions.copy()
    nan[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"structure 1 \(id 'broken'\) cannot be processed: .*(finite|NaN)"):
        predictor.predict([good, good.replace(positions=nan, id="broken")])
    empty = good.replace(numbers=np.zeros(0, int), positions=np.zeros((0, 3)), id="#2")
    with pytest.raises(ValueError, match=r"structure 2 cannot be processed: .*atom"):
        predictor.predict([good, good, empty])
    with pytest.raises(TypeError, match="structure 1: expected a Crystal"):
        predictor.predict([good, "POSCAR"])


def test_left_handed_cell_is_the_same_lattice(predictor, crystals):
    crystal = crystals[2]
    mirror = crystal.replace(cell=crystal.cell[[1, 0, 2]])  # same lattice, det < 0
    assert np.linalg.det(mirror.cell) < 0
    out = predictor.predict([crystal, mirror])
    np.testing.assert_allclose(out["energy"][1], out["energy"][0], atol=1e-10)
    np.testing.assert_allclose(out["forces"][1], out["forces"][0], atol=1e-10)


def test_lazy_top_level_exports(export32):
    assert foundation.load_model is load_model
    predictor = foundation.load_model(export32 / "config.json")
    assert predictor.predict(perovskites(1))["energy"].dtype == np.float32


def _csv_with_a_broken_row(tmp_path, n):
    with PEROVSKITES.open(newline="") as handle:
        rows = list(zip(range(n + 1), csv.reader(handle)))
    rows = [r for _, r in rows]
    broken = list(rows[2])
    broken[rows[0].index("cif")] = "data_broken\n_cell_length_a 4\n"
    path = tmp_path / "perov5_small.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows[:2] + [broken] + rows[3:])
    return path


def test_predict_cli_writes_csv(export64, tmp_path, capsys):
    out = tmp_path / "out" / "predictions.csv"
    small = _csv_with_a_broken_row(tmp_path, 6)
    forces_out = tmp_path / "forces.npz"
    code = main(["predict", str(export64), str(PEROVSKITES), str(small), "--limit", "20", "--out", str(out),
                     "--batch-size", "8", "--forces-out", str(forces_out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "read 26 structure(s): 25 used, 1 rejected" in text and str(out) in text
    assert f"rejected {small}:" in text
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "id", "formula", "n_atoms", "energy (eV)", "formation_energy (eV)",
                             "formation_energy true", "band_gap (eV)", "band_gap true", "is_metal (probability)"]
    assert len(rows) == 25 and rows[0]["file"] == str(PEROVSKITES) and rows[-1]["file"] == str(small)
    first = perovskites(20)
    assert [r["id"] for r in rows[:20]] == [c.id for c in first]
    assert rows[0]["n_atoms"] == "5" and rows[0]["formula"] == "CdCuN3"
    assert float(rows[0]["formation_energy true"]) == first[0].targets["formation_energy"]
    expected = load_model(export64).predict(first)
    np.testing.assert_allclose([float(r["band_gap (eV)"]) for r in rows[:20]], expected["band_gap"], atol=1e-12)
    forces = np.load(forces_out)
    assert forces["forces"].shape == (125, 3) and forces["offsets"][-1] == 125
    np.testing.assert_allclose(forces["forces"][:100], np.concatenate(expected["forces"]), atol=1e-12)


def test_predict_cli_single_structure_files(export32, tmp_path, capsys):
    crystal = perovskites(1)[0]
    crystal.to_pymatgen().to(filename=str(tmp_path / "one.cif"))
    crystal.to_ase().write(tmp_path / "POSCAR", format="vasp")
    out = tmp_path / "p.csv"
    code = main(["predict", str(export32), str(tmp_path / "one.cif"), str(tmp_path / "POSCAR"), str(tmp_path / "nope.cif"),
                     "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "2 used, 1 rejected" in text and "no such file" in text and "not CSV columns" in text
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["one", "POSCAR"]
    assert abs(float(rows[0]["energy (eV)"]) - float(rows[1]["energy (eV)"])) < 1e-4
    assert json.loads((export32 / "config.json").read_text())["dtype"] == "float32"
