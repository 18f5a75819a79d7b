"""JSON/CSV database readers and the `read`/`detect_format` entry point, on the real sample files.

Every record of every sample file is read (or rejected with a reason); counts are checked against
the raw file and values/units against the raw JSON/CSV.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import math
import time
import warnings

import numpy as np
import pytest
from scipy import constants

from foundation.data.crystal import Crystal
from foundation.data.readers import FORMATS, detect_format, read, read_structures
from foundation.data.readers._common import structure_from_pymatgen_dict
from foundation.data.records import Reject
from test_readers_ase import DATA

MP = DATA / "materials_project" / "summary.jsonl.gz"
MP2018 = DATA / "mp2018" / "mp2018.json.gz"
ELASTICITY = DATA / "elasticity" / "mp-binary-pbe-elasticity-2025.1.json.gz"
ELASTIC_CSV = DATA / "elastic_tensor_2015" / "elastic_tensor.csv.gz"
OQMD = DATA / "oqmd" / "formationenergy.jsonl.gz"
NOMAD = DATA / "nomad" / "entries.jsonl.gz"
CAROLINA = DATA / "carolina" / "entries.jsonl.gz"
PEROVSKITES = DATA / "perovskites" / "perov5_val.csv"
CARBON = DATA / "carbon24" / "carbon24_val.csv"


def _jsonl(path) -> list[dict]:
    with gzip.open(path, "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _split(records) -> tuple[list[Crystal], list[Reject]]:
    records = list(records)
    crystals = [r for r in records if isinstance(r, Crystal)]
    rejects = [r for r in records if isinstance(r, Reject)]
    assert len(crystals) + len(rejects) == len(records)
    return crystals, rejects


def _csv_rows(path) -> list[dict]:
    csv.field_size_limit(2**31 - 1)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as handle:
        line = handle.readline()
        if not line.startswith("#"):
            handle.seek(0)
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def mp2018():
    """The whole mp2018 file read once (raw JSON and Crystals, with the reader's wall time)."""
    with gzip.open(MP2018, "rt") as handle:
        raw = json.load(handle)
    start = time.perf_counter()
    records = list(read(MP2018))
    return raw, records, time.perf_counter() - start


# ----------------------------------------------------------------------------- Materials Project
def test_mp_summary_every_record_and_values():
    raw = _jsonl(MP)
    crystals, rejects = _split(read(MP))
    assert len(crystals) == len(raw) == 200 and not rejects
    assert [c.id for c in crystals[:2]] == ["#0", "#1"]  # the sample has no material_id
    for record, crystal in zip(raw, crystals):
        assert crystal.source == "materials_project"
        assert crystal.targets["formation_energy_per_atom"] == record["formation_energy_per_atom"]
        assert crystal.targets["band_gap"] == record["band_gap"]
        assert crystal.targets["is_metal"] == float(record["is_metal"])
        assert crystal.targets["is_stable"] == float(record["is_stable"])
        assert crystal.n_atoms == len(record["structure"]["sites"])
    xyz = np.array([s["xyz"] for s in raw[0]["structure"]["sites"]])
    np.testing.assert_allclose(crystals[0].positions, xyz, atol=1e-9)


def test_pymatgen_dict_fast_path_equals_structure_from_dict(mp2018):
    from pymatgen.core import Structure

    raw = mp2018[0]["data"][::100]  # 295 structures spread over the file
    start = time.perf_counter()
    slow = [Structure.from_dict(row[0]) for row in raw]
    t_slow = time.perf_counter() - start
    start = time.perf_counter()
    fast = [structure_from_pymatgen_dict(row[0]) for row in raw]
    t_fast = time.perf_counter() - start
    for structure, (numbers, positions, cell, pbc) in zip(slow, fast):
        np.testing.assert_array_equal(numbers, structure.atomic_numbers)
        np.testing.assert_allclose(positions, structure.cart_coords, rtol=0, atol=1e-12)
        np.testing.assert_allclose(cell, structure.lattice.matrix, rtol=0, atol=0)
        assert pbc.all()
    print(f"Structure.from_dict {t_slow:.3f} s, numpy fast path {t_fast:.3f} s for {len(raw)}")
    assert t_fast < t_slow


def test_matbench_mp2018_every_record(mp2018):
    raw, records, seconds = mp2018
    crystals, rejects = _split(records)
    assert len(crystals) == len(raw["index"]) == 29492 and not rejects
    assert [c.id for c in crystals] == raw["index"]
    first = crystals[0]
    assert first.id == "mp-1" and first.source == "matbench"
    assert first.targets["formation_energy_per_atom"] == raw["data"][0][1]  # e_form, eV/atom
    assert first.targets["band_gap"] == raw["data"][0][2]
    assert first.targets["efermi"] == raw["data"][0][3]
    # The README announces 2 missing total_magnetization values; the file has none: count as raw.
    n_mag = sum(row[4] is not None and not math.isnan(row[4]) for row in raw["data"])
    assert sum("total_magnetization" in c.targets for c in crystals) == n_mag
    print(f"mp2018: {len(crystals)} records in {seconds:.1f} s (2-core CPU, incl. json.load)")


def _matbench_file(tmp_path, rows, columns=("structure", "e_form", "gap pbe", "total_magnetization")):
    path = tmp_path / "tiny_matbench.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump({"index": [f"mb-{i}" for i in range(len(rows))], "columns": list(columns),
                   "data": rows}, handle)
    return path


def test_matbench_missing_label_bad_record_and_options(tmp_path):
    structure = _jsonl(MP)[0]["structure"]
    broken = {"lattice": structure["lattice"], "sites": [{"species": [{"element": "Xx", "occu": 1}],
                                                           "abc": [0, 0, 0]}]}
    rows = [[structure, -0.5, 1.0, None], [broken, 0.1, 0.0, 1.0], [structure, 0.2, 2.0, 3.0]]
    path = _matbench_file(tmp_path, rows)
    assert detect_format(path) == "matbench"
    crystals, rejects = _split(read(path))
    assert [c.id for c in crystals] == ["mb-0", "mb-2"]
    assert crystals[0].targets == {"formation_energy_per_atom": -0.5, "band_gap": 1.0}
    assert len(rejects) == 1 and rejects[0].id == "mb-1" and "Xx" in rejects[0].reason
    crystals, rejects = _split(read(path, require=["total_magnetization"]))
    assert [c.id for c in crystals] == ["mb-2"]
    assert {r.id for r in rejects} == {"mb-0", "mb-1"}
    assert "total_magnetization" in next(r for r in rejects if r.id == "mb-0").reason
    crystals, _ = _split(read(path, targets=["band_gap"]))
    assert crystals[0].targets == {"band_gap": 1.0}
    crystals, _ = _split(read(path, column_map={"e_form": "formation_energy"}))
    assert crystals[1].targets["formation_energy"] == 0.2
    other = _matbench_file(tmp_path, [[structure, 7.5]], columns=("structure", "exfoliation_en"))
    assert next(iter(read(other))).targets == {"exfoliation_en": 7.5}
    with pytest.raises(ValueError, match="not among"):
        list(read(path, targets=["log10(K_VRH)"]))


# ----------------------------------------------------------------------------- elasticity
def test_mp_elasticity_every_record_and_moduli():
    with gzip.open(ELASTICITY, "rt") as handle:
        raw = json.load(handle)
    crystals, rejects = _split(read(ELASTICITY))
    assert len(crystals) == len(raw) == 3207 and not rejects
    for record, crystal in zip(raw, crystals):
        assert crystal.id == record["mp_id"]
        assert crystal.targets["bulk_modulus"] == float(record["bulk_modulus_vrh"])
        assert crystal.targets["shear_modulus"] == float(record["shear_modulus_vrh"])
        assert crystal.targets["log10_bulk_modulus"] == pytest.approx(
            math.log10(float(record["bulk_modulus_vrh"])), abs=1e-12)


def test_mp_elasticity_python_repr_strings(tmp_path):
    """The published layout: structure as a Python-repr string, moduli as strings."""
    with gzip.open(ELASTICITY, "rt") as handle:
        raw = json.load(handle)[:3]
    published = [{"mp_id": r["mp_id"], "formula": r["formula"], "structure": repr(r["structure"]),
                  "bulk_modulus_vrh": str(r["bulk_modulus_vrh"]), "shear_modulus_vrh": "-1.5"}
                 for r in raw]
    published[2]["structure"] = "__import__('os').system('echo pwned')"  # never evaluated
    path = tmp_path / "elasticity.json"
    path.write_text(json.dumps(published))
    crystals, rejects = _split(read(path, format="mp_elasticity"))
    expected = _split(read(ELASTICITY))[0][0]
    np.testing.assert_allclose(crystals[0].positions, expected.positions, atol=1e-12)
    assert crystals[0].targets["bulk_modulus"] == float(raw[0]["bulk_modulus_vrh"])
    # A negative modulus keeps its GPa value and has no log10.
    assert crystals[0].targets["shear_modulus"] == -1.5
    assert "log10_shear_modulus" not in crystals[0].targets
    assert len(rejects) == 1 and rejects[0].id == raw[2]["mp_id"]


def test_matminer_elastic_csv_every_row_and_tensor_frame():
    rows = _csv_rows(ELASTIC_CSV)
    crystals, rejects = _split(read(ELASTIC_CSV))
    assert len(crystals) == len(rows) == 1181 and not rejects
    for row, crystal in zip(rows, crystals):
        assert crystal.id == row["material_id"] and crystal.n_atoms == int(row["nsites"])
        assert crystal.targets["bulk_modulus"] == float(row["K_VRH"])
        assert crystal.targets["shear_modulus"] == float(row["G_VRH"])
        tensor = crystal.targets["elastic_tensor"]
        assert tensor.shape == (6, 6)
        # Voigt bulk modulus of the stiffness tensor = K_Voigt column (GPa).
        assert tensor[:3, :3].sum() / 9 == pytest.approx(float(row["K_Voigt"]), rel=1e-4)
    cif = _split(read(ELASTIC_CSV, structure_column="structure", tensor_column=None))[0]
    for a, b in zip(crystals[::50], cif[::50]):
        assert a.n_atoms == b.n_atoms and "elastic_tensor" not in b.targets
        assert abs(a.volume) == pytest.approx(abs(b.volume), rel=1e-4)


# ----------------------------------------------------------------------------- OQMD / NOMAD / Carolina
def test_oqmd_every_record_and_fractional_sites():
    raw = _jsonl(OQMD)
    crystals, rejects = _split(read(OQMD))
    assert len(crystals) == len(raw) == 200 and not rejects
    for record, crystal in zip(raw, crystals):
        assert crystal.id == str(record["entry_id"]) and crystal.n_atoms == record["natoms"]
        assert crystal.targets["formation_energy_per_atom"] == record["delta_e"]
        if record["stability"] is not None:
            assert crystal.targets["e_above_hull"] == record["stability"]
        frac = np.array([[float(x) for x in s.split("@")[1].split()] for s in record["sites"]])
        np.testing.assert_allclose(crystal.positions @ np.linalg.inv(crystal.cell), frac, atol=1e-12)
    assert sum("band_gap" not in c.targets for c in crystals) == sum(r["band_gap"] is None for r in raw)


def test_nomad_every_record_si_to_ev_angstrom():
    raw = _jsonl(NOMAD)
    crystals, rejects = _split(read(NOMAD))
    assert len(crystals) == len(raw) == 200 and not rejects
    assert len({c.id for c in crystals}) == 200  # material_id repeats; ids stay unique
    for record, crystal in zip(raw, crystals):
        joules = record["energies"]["total"]["value"]
        assert crystal.targets["energy"] == pytest.approx(joules / constants.e, rel=1e-14)
        # NOMAD's own eV bookkeeping agrees with the exact SI elementary charge.
        assert crystal.targets["energy"] == pytest.approx(
            record["relative_energy"] + record["reference_energy"], rel=1e-7)
        assert crystal.targets["efermi"] == pytest.approx(record["energies"]["fermi"] / constants.e)
        struct = record["properties"]["structures"]["structure_original"]
        np.testing.assert_allclose(crystal.cell, np.array(struct["lattice_vectors"]) * 1e10, rtol=1e-14)
        assert abs(crystal.volume) == pytest.approx(struct["cell_volume"] * 1e30, rel=1e-9)
        assert crystal.pbc.all()
    assert 1.0 < abs(crystals[0].cell[0, 0]) < 20.0  # Å, not m


def _symmetry_closed(frac: np.ndarray, numbers: np.ndarray, operations: list[str]) -> bool:
    """Whether every symmetry operation maps the (fractional) site set onto itself."""
    from pymatgen.core.operations import SymmOp

    for op in operations:
        images = SymmOp.from_xyz_str(op.strip("'")).operate_multi(frac)
        for image, number in zip(images, numbers):
            delta = frac[numbers == number] - image
            delta -= np.round(delta)
            if np.min(np.linalg.norm(delta, axis=1)) > 1e-3:
                return False
    return True


def test_carolina_cart_coords_are_fractional():
    raw = _jsonl(CAROLINA)
    crystals, rejects = _split(read(CAROLINA))
    assert len(crystals) == len(raw) == 100 and not rejects
    for record, crystal in zip(raw, crystals):
        assert crystal.id == record["origin_file"].removesuffix(".cif")
        assert crystal.targets["formation_energy_per_atom"] == record["energy"]
        assert abs(crystal.volume) == pytest.approx(float(record["_cell_volume"]), rel=1e-6)
        coords = np.array(record["cart_coords"])
        np.testing.assert_allclose(crystal.positions @ np.linalg.inv(crystal.cell), coords, atol=1e-10)
        assert coords.min() >= 0 and coords.max() <= 1
    # The entry's own symmetry operations map the coordinates onto
    # themselves read as fractional; read as Cartesian Å they do not.
    checked = 0
    for record, crystal in zip(raw, crystals):
        operations = list(record["symmetry_dict"].values())
        if len(operations) < 4:
            continue
        numbers = crystal.numbers
        assert _symmetry_closed(np.array(record["cart_coords"]), numbers, operations)
        as_cartesian = np.array(record["cart_coords"]) @ np.linalg.inv(crystal.cell)
        assert not _symmetry_closed(as_cartesian, numbers, operations)
        checked += 1
        if checked == 5:
            break
    assert checked == 5


# ----------------------------------------------------------------------------- CSV with CIF strings
def test_perovskites_and_carbon24_every_row():
    rows = _csv_rows(PEROVSKITES)
    start = time.perf_counter()
    crystals, rejects = _split(read(PEROVSKITES))
    seconds = time.perf_counter() - start
    print(f"perovskites: {len(crystals)} CIFs in {seconds:.1f} s")
    assert len(crystals) == len(rows) == 3787 and not rejects
    assert all(c.n_atoms == 5 and c.source == "perovskites" for c in crystals)
    for row, crystal in zip(rows[:50], crystals):
        assert crystal.id == row["material_id"]
        assert crystal.targets["formation_energy"] == float(row["heat_all"])  # eV per 5-atom cell
        assert crystal.targets["band_gap"] == float(row["ind_gap"])
        assert crystal.targets["direct_band_gap"] == float(row["dir_gap"])
    rows = _csv_rows(CARBON)
    crystals, rejects = _split(read(CARBON))
    assert len(crystals) == len(rows) == 2032 and not rejects
    assert all((c.numbers == 6).all() and c.source == "carbon24" for c in crystals)
    assert crystals[0].targets == {"energy_per_atom": float(rows[0]["energy_per_atom"])}


def test_user_cif_csv_options_and_bad_row(tmp_path):
    cifs = [r["cif"] for r in _csv_rows(PEROVSKITES)[:2]]
    path = tmp_path / "mine.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "structure_cif", "y", "note"])
        writer.writerow(["a", cifs[0], "1.5", "x"])
        writer.writerow(["b", "data_broken\n_cell_length_a 1\n", "2.5", "x"])
        writer.writerow(["c", cifs[1], "", "x"])
    with pytest.raises(ValueError, match="CIF column"):
        list(read(path, format="cif_csv"))
    crystals, rejects = _split(read(path, format="cif_csv", cif_column="structure_cif",
                                    id_column="name", targets={"y": "band_gap"}))
    assert [c.id for c in crystals] == ["a", "c"] and crystals[0].source == "mine"
    assert crystals[0].targets == {"band_gap": 1.5} and crystals[1].targets == {}
    assert [r.id for r in rejects] == ["b"]


# ----------------------------------------------------------------------------- ComputedStructureEntry
def test_cse_json_alexandria_layouts(tmp_path):
    from pymatgen.core import Structure
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    raw = _jsonl(MP)[:5]
    entries = []
    for i, record in enumerate(raw):
        structure = Structure.from_dict(record["structure"])
        energy = record["uncorrected_energy_per_atom"] * len(structure)
        entry = ComputedStructureEntry(structure, energy, correction=-0.3, entry_id=f"agm{i:05d}",
                                       data={"e_form": record["formation_energy_per_atom"],
                                             "band_gap_ind": record["band_gap"], "e_above_hull": 0.0})
        entries.append(entry.as_dict())
    entries[3]["structure"] = {"lattice": entries[3]["structure"]["lattice"], "sites": []}
    dumped = tmp_path / "alexandria_000.json.bz2"
    with bz2.open(dumped, "wt") as handle:
        json.dump({"entries": entries}, handle)
    listed = tmp_path / "entries.json.gz"
    with gzip.open(listed, "wt") as handle:
        json.dump(entries, handle)
    for path in (dumped, listed):
        assert detect_format(path) == "cse_json"
        crystals, rejects = _split(read(path))
        assert [c.id for c in crystals] == ["agm00000", "agm00001", "agm00002", "agm00004"]
        assert [r.id for r in rejects] == ["agm00003"] and "no sites" in rejects[0].reason
        first, record = crystals[0], raw[0]
        assert first.source == "alexandria"
        per_atom = record["uncorrected_energy_per_atom"]
        assert first.targets["energy"] == pytest.approx(per_atom * first.n_atoms)
        assert first.targets["energy_per_atom"] == pytest.approx(record["uncorrected_energy_per_atom"])
        assert first.targets["formation_energy_per_atom"] == record["formation_energy_per_atom"]
        assert first.targets["band_gap"] == record["band_gap"] and first.targets["e_above_hull"] == 0.0


# ----------------------------------------------------------------------------- entry point
@pytest.mark.parametrize("relative, expected", [
    ("materials_project/summary.jsonl.gz", "mp_summary"),
    ("mp2018/mp2018.json.gz", "matbench"),
    ("elasticity/mp-binary-pbe-elasticity-2025.1.json.gz", "mp_elasticity"),
    ("elastic_tensor_2015/elastic_tensor.csv.gz", "matminer_csv"),
    ("oqmd/formationenergy.jsonl.gz", "oqmd"),
    ("nomad/entries.jsonl.gz", "nomad"),
    ("carolina/entries.jsonl.gz", "carolina"),
    ("perovskites/perov5_val.csv", "cif_csv"),
    ("carbon24/carbon24_val.csv", "cif_csv"),
    ("lips/frames.extxyz", "extxyz"),
    ("colabfit/frames.extxyz", "extxyz"),
    ("oc20_format/toy_c3h8_relax.extxyz", "extxyz"),
    ("oc20/trajectories", "ase"),
    ("oc20/trajectories/random1000100.traj", "ase"),
    *[(f"mlearn/{el}/id_prop.json.gz", "jarvis") for el in ("Cu", "Ge", "Li", "Mo", "Ni", "Si")],
])
def test_detect_format_on_every_shared_file(relative, expected):
    assert detect_format(DATA / relative) == expected


def test_detect_format_refusals_and_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        detect_format(DATA / "oc22" / "oc22_pickle16_val.pkl")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(ValueError, match="no reader knows"):
        detect_format(odd)
    with pytest.raises(ValueError, match="mp_summary"):  # lists FORMATS
        read(MP, format="nonsense")
    assert {"mp_summary", "matbench", "cse_json", "extxyz", "jarvis", "ase", "oc20_lmdb"} <= set(FORMATS)


def test_bad_jsonl_line_is_rejected_and_reading_goes_on(tmp_path):
    lines = gzip.open(OQMD, "rt").read().splitlines()[:3]
    record = json.loads(lines[2])
    record["sites"][0] = "Qq @ 0 0 0"
    path = tmp_path / "oqmd.jsonl"
    path.write_text("\n".join([lines[0], "{not json", json.dumps(record), lines[1]]) + "\n")
    crystals, rejects = _split(read(path, format="oqmd", source="oqmd_test"))
    assert len(crystals) == 2 and crystals[0].source == "oqmd_test"
    assert [r.id for r in rejects] == ["#1", str(record["entry_id"])]
    assert "not valid JSON" in rejects[0].reason and "Qq" in rejects[1].reason


def test_read_structures_single_files_and_databases(tmp_path):
    crystal = next(iter(read(OQMD)))
    structure = crystal.to_pymatgen()
    cif = tmp_path / "one.cif"
    structure.to(filename=str(cif))
    poscar = tmp_path / "POSCAR"
    structure.to(filename=str(poscar), fmt="poscar")
    xyz = tmp_path / "one.extxyz"
    crystal.to_ase().write(str(xyz))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = list(read_structures([cif, poscar, xyz, CAROLINA]))
    assert len(got) == 3 + 100
    for single in got[:3]:
        assert single.n_atoms == crystal.n_atoms
        assert abs(single.volume) == pytest.approx(abs(crystal.volume), rel=1e-6)
    assert [c.id for c in got[:2]] == ["one", "POSCAR"]
    junk = tmp_path / "junk.dat"
    junk.write_text("nothing here")
    with pytest.raises(ValueError, match="junk.dat"):
        list(read_structures(junk))


def test_a_file_nothing_can_read_is_a_reject_with_each_reader_s_reason(tmp_path):
    from foundation.data.readers import read_any

    junk, empty = tmp_path / "junk.cif", tmp_path / "empty.cif"
    junk.write_text("junk here\nnot a cif\n")
    empty.write_text("")
    (reject,) = list(read_any(junk))
    assert isinstance(reject, Reject) and reject.path == str(junk)
    assert reject.reason.startswith("cannot read a structure (pymatgen: ") and "; ASE: " in reject.reason
    assert "AssertionError: )" not in reject.reason and "StopIteration" not in reject.reason
    assert list(read_any(empty))[0].reason == "cannot read a structure (the file is empty)"
    assert list(read_any(tmp_path / "missing.cif"))[0].reason == "no such file or directory"
    with pytest.raises(ValueError, match=r"junk\.cif: cannot read a structure \(pymatgen"):
        list(read_structures(junk))
