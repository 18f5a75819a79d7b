"""Readers of the ASE-family layouts on the real sample data: extxyz, JARVIS/mlearn, ASE traj/db."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from foundation.data.crystal import Crystal
from foundation.data.readers.ase_db import read_ase, select_frames
from foundation.data.readers.extxyz import read_extxyz
from foundation.data.readers.jarvis import read_jarvis
from foundation.data.records import Reject

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EV_PER_A3_IN_GPA = 160.21766208
ELEMENTS = ["Cu", "Ge", "Li", "Mo", "Ni", "Si"]


def _crystals(records) -> list[Crystal]:
    records = list(records)
    rejects = [r for r in records if isinstance(r, Reject)]
    assert not rejects, rejects[:3]
    return records


@pytest.fixture(scope="module")
def mlearn() -> dict[str, list[Crystal]]:
    return {el: _crystals(read_jarvis(DATA / "mlearn" / el / "id_prop.json.gz")) for el in ELEMENTS}


@pytest.fixture(scope="module")
def colabfit() -> list[Crystal]:
    return _crystals(read_extxyz(DATA / "colabfit" / "frames.extxyz"))


def _strain_ratios(crystals: list[Crystal], max_strain: float = 0.015) -> np.ndarray:
    """ΔE / (V σ:Δε) over pairs related by a small homogeneous strain (1 if stress is right)."""
    ratios = []
    for i, a in enumerate(crystals):
        frac_a = a.positions @ np.linalg.inv(a.cell)
        for b in crystals[i + 1:]:
            if b.n_atoms != a.n_atoms or np.allclose(a.cell, b.cell):
                continue
            if np.abs(b.positions @ np.linalg.inv(b.cell) - frac_a).max() > 1e-6:
                continue
            deformation = np.linalg.solve(a.cell, b.cell)
            strain = 0.5 * (deformation + deformation.T) - np.eye(3)
            if np.abs(strain).max() > max_strain:
                continue
            stress = 0.5 * (a.targets["stress"] + b.targets["stress"]) / EV_PER_A3_IN_GPA
            work = 0.5 * (abs(a.volume) + abs(b.volume)) * np.sum(stress * strain)  # eV
            if abs(work) > 0.5:
                ratios.append((b.targets["energy"] - a.targets["energy"]) / work)
    return np.array(ratios)


def _force_work_ratio(a: Crystal, b: Crystal) -> float:
    """ΔE / (-∫F·dr) by the trapezoid rule between two frames in the same cell."""
    step = b.positions - a.positions
    work = -0.5 * np.sum((a.targets["forces"] + b.targets["forces"]) * step)
    return (b.targets["energy"] - a.targets["energy"]) / work


# ----------------------------------------------------------------------------- extxyz
@pytest.mark.parametrize("name,count", [("lips", 200), ("colabfit", 262), ("oc20_format", 101)])
def test_extxyz_reads_every_frame(name, count):
    from ase.io import read

    path = next((DATA / name).glob("*.extxyz"))
    crystals = _crystals(read_extxyz(path))
    assert len(crystals) == count == len(read(path, index=":"))
    assert {c.source for c in crystals} == {name}
    assert len({c.id for c in crystals}) == count
    assert crystals[0].id == f"{path.stem}:0"
    for crystal in crystals:
        assert crystal.targets["forces"].shape == (crystal.n_atoms, 3)


def test_lips_energy_is_total_and_consistent_with_forces():
    crystals = _crystals(read_extxyz(DATA / "lips" / "frames.extxyz"))
    assert crystals[0].targets["energy"] == pytest.approx(-357.05872304)
    for i, j in [(17, 93), (49, 74)]:  # the two close pairs of frames in the file
        assert _force_work_ratio(crystals[i], crystals[j]) == pytest.approx(1.0, abs=0.01)


def test_oc20_extxyz_tags_fixed_and_forces():
    crystals = _crystals(read_extxyz(DATA / "oc20_format" / "toy_c3h8_relax.extxyz"))
    first = crystals[0]
    assert np.bincount(first.arrays["tags"]).tolist() == [18, 9, 11]
    np.testing.assert_array_equal(first.arrays["fixed"], first.arrays["tags"] == 0)  # ~move_mask
    assert first.targets["energy"] == pytest.approx(15.804699620277187)
    ratios = [_force_work_ratio(a, b) for a, b in zip(crystals[:-1], crystals[1:])
              if abs(b.targets["energy"] - a.targets["energy"]) > 1e-2]
    assert np.median(ratios) == pytest.approx(1.0, abs=0.01)


def test_colabfit_stress_in_gpa_ase_sign(colabfit):
    first = colabfit[0]
    assert first.targets["energy"] == pytest.approx(-3.8737295625 * 8)  # per-atom in the file
    # file: stress="-17.74 ... -20.85 ... -11.29" kbar, compressive > 0 -> GPa, tensile > 0
    np.testing.assert_allclose(np.diag(first.targets["stress"]), [1.774019, 2.084896, 1.128584],
                               rtol=1e-6)
    ratios = _strain_ratios(colabfit)
    assert len(ratios) > 50
    assert np.median(ratios) == pytest.approx(1.0, abs=0.25)


def test_extxyz_bad_frame_is_a_reject_and_the_next_frame_is_read(tmp_path):
    good = (DATA / "oc20_format" / "toy_c3h8_relax.extxyz").read_text().splitlines(True)
    frame = good[:40]  # 38 atoms + count + comment
    broken = list(frame)
    broken[5] = "Cu 0.0 zero 1.0 F 0 0.0 0.0 0.0 0.0\n"
    path = tmp_path / "oc" / "frames.extxyz"
    path.parent.mkdir()
    path.write_text("".join(frame + broken + frame + frame[:10]))
    records = list(read_extxyz(path))
    kinds = [type(r).__name__ for r in records]
    assert kinds == ["Crystal", "Reject", "Crystal", "Reject"]
    assert records[1].id == "frames:1" and records[1].source == "oc"
    assert "ends inside the frame" in records[3].reason
    with pytest.raises(ValueError, match="unknown options"):
        list(read_extxyz(path, stres_unit="GPa"))


# ----------------------------------------------------------------------------- JARVIS / mlearn
def test_mlearn_reads_every_record(mlearn):
    for el in ELEMENTS:
        with gzip.open(DATA / "mlearn" / el / "id_prop.json.gz", "rt") as handle:
            raw = json.load(handle)
        crystals = mlearn[el]
        assert len(crystals) == len(raw)
        assert {c.source for c in crystals} == {f"mlearn_{el}"}
        assert crystals[0].targets["energy"] == pytest.approx(raw[0]["total_energy"] * len(
            raw[0]["atoms"]["elements"]))


def test_mlearn_energy_is_per_atom_in_the_file(mlearn):
    # lowest energy per atom = PBE ground state of each element (eV/atom)
    expected = {"Cu": -4.10, "Ge": -4.49, "Li": -1.90, "Mo": -10.85, "Ni": -5.78, "Si": -5.43}
    for el, value in expected.items():
        per_atom = [c.targets["energy"] / c.n_atoms for c in mlearn[el]]
        assert min(per_atom) == pytest.approx(value, abs=0.02)


def test_mlearn_stress_units_from_strain_energy(mlearn):
    for el in ("Cu", "Ni"):
        ratios = _strain_ratios(mlearn[el])
        assert len(ratios) > 50
        assert np.median(ratios) == pytest.approx(1.0, abs=0.2)


def test_mlearn_shear_order_matches_the_cell_shear(mlearn):
    planes = {(0, 1): "xy", (0, 2): "xz", (1, 2): "yz"}
    for el in ("Cu", "Ni", "Ge", "Si", "Mo"):
        hits = total = 0
        for crystal in mlearn[el]:
            cell = crystal.cell
            shear = {p: abs(cell[p] + cell[p[::-1]]) for p in planes}
            plane = max(shear, key=shear.get)
            if shear[plane] < 0.05 or sorted(shear.values())[1] > 1e-3:
                continue
            stress = crystal.targets["stress"]
            total += 1
            hits += max(planes, key=lambda p: abs(stress[p])) == plane
        assert total >= 10 and hits / total > 0.7, (el, hits, total)  # the other order: < 0.4


def test_mlearn_cu_matches_the_colabfit_copy(mlearn, colabfit):
    by_energy = {round(c.targets["energy"], 6): c for c in colabfit}
    matched = 0
    for crystal in mlearn["Cu"]:
        twin = by_energy.get(round(crystal.targets["energy"], 6))
        if twin is None or not np.allclose(twin.positions, crystal.positions, atol=1e-5):
            continue  # equal energies of symmetric copies: match positions too
        matched += 1
        np.testing.assert_allclose(crystal.targets["forces"], twin.targets["forces"], atol=1e-6)
        np.testing.assert_allclose(crystal.targets["stress"], twin.targets["stress"], atol=1e-5)
    assert matched > 150


# ----------------------------------------------------------------------------- ASE traj / db
@pytest.fixture(scope="module")
def oc20() -> list[Crystal]:
    return _crystals(read_ase(DATA / "oc20" / "trajectories"))


def test_oc20_trajectories_every_frame(oc20):
    from ase.io import Trajectory

    files = sorted((DATA / "oc20" / "trajectories").glob("*.traj"))
    assert len(files) == 25
    expected = sum(len(Trajectory(str(f))) for f in files)
    assert len(oc20) == expected == 4243
    assert {c.source for c in oc20} == {"oc20"}
    assert len({c.id for c in oc20}) == len(oc20)


def test_oc20_values_fixed_atoms(oc20):
    from ase.io import Trajectory

    first = next(c for c in oc20 if c.id == "random1000100:0")
    assert first.targets["energy"] == pytest.approx(-57.74908337)
    atoms = Trajectory(str(DATA / "oc20" / "trajectories" / "random1000100.traj"))[0]
    # raw DFT forces, as OC20's LMDBs store them: fixed atoms keep theirs (get_forces() zeroes them)
    np.testing.assert_array_equal(first.targets["forces"], atoms.get_forces(apply_constraint=False))
    assert np.abs(first.targets["forces"][first.arrays["fixed"]]).max() > 0.1
    fixed_index = atoms.constraints[0].get_indices()
    assert first.arrays["fixed"].sum() == 17
    assert first.arrays["fixed"][fixed_index].all()
    last = next(c for c in oc20 if c.id == "random1000100:125")
    assert last.targets["energy"] == pytest.approx(-60.58567902)


def test_frame_selection():
    assert select_frames(5, "all", 2) == [0, 2, 4]
    assert select_frames(6, "all", 4) == [0, 4, 5]
    assert select_frames(6, "first_last") == [0, 5]
    assert select_frames(1, "first_last") == [0]
    with pytest.raises(ValueError, match="frames must be"):
        select_frames(3, "middle")
    path = DATA / "oc20" / "trajectories" / "random1000100.traj"
    ids = [c.id for c in read_ase(path, frames="first_last")]
    assert ids == ["random1000100:0", "random1000100:125"]


def test_oc20_energy_referenced_to_the_relaxed_frame(oc20):
    """energy_reference="relaxed": each frame's energy minus its trajectory's last frame's (0 there),
    the total kept as energy_total, forces untouched; a database refuses the option."""
    path = DATA / "oc20" / "trajectories" / "random1000100.traj"
    referenced = _crystals(read_ase(path, every=25, energy_reference="relaxed"))
    total = {c.id: c for c in oc20 if c.id.startswith("random1000100:")}
    relaxed = total["random1000100:125"].targets["energy"]
    assert referenced[-1].id == "random1000100:125" and referenced[-1].targets["energy"] == 0.0
    for c in referenced:
        assert c.targets["energy"] == pytest.approx(total[c.id].targets["energy"] - relaxed, abs=1e-12)
        assert c.targets["energy_total"] == total[c.id].targets["energy"]
        np.testing.assert_array_equal(c.targets["forces"], total[c.id].targets["forces"])
    assert max(c.targets["energy"] for c in referenced) > 1.0  # the first frames lie eV above the end
    with pytest.raises(ValueError, match="energy_reference"):
        list(read_ase(path, energy_reference="slab"))


def test_ase_db_round_trip(tmp_path, oc20):
    import ase.db
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = [c for c in oc20 if c.id.startswith("random1000100:")][:3]
    for name in ("frames.db", "frames.json"):
        database = ase.db.connect(str(tmp_path / name))
        for crystal in frames:
            atoms = crystal.to_ase()
            atoms.calc = SinglePointCalculator(atoms, energy=crystal.targets["energy"],
                                               forces=crystal.targets["forces"],
                                               stress=np.arange(6.0) * 0.01)
            database.write(atoms, uid=crystal.id, gap=1.25, note="text")
        back = _crystals(read_ase(tmp_path / name, source="oc20"))
        assert [c.id for c in back] == [c.id for c in frames]
        for original, copy in zip(frames, back):
            np.testing.assert_allclose(copy.positions, original.positions)
            np.testing.assert_array_equal(copy.arrays["fixed"], original.arrays["fixed"])
            assert copy.targets["energy"] == original.targets["energy"]
            np.testing.assert_allclose(copy.targets["forces"], original.targets["forces"])
            assert copy.targets["band_gap"] == 1.25 and "note" not in copy.targets
            assert copy.targets["stress"][1, 2] == pytest.approx(0.03 * EV_PER_A3_IN_GPA)
