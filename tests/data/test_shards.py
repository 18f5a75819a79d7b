"""Shard writer: real-data round trip, rejects, split stability, duplicates, statistics, CLI."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from foundation.data.crystal import Crystal
from foundation.data.records import Reject
from foundation.data.shards.format import decode_record
from foundation.cli.shard import cli_main
from foundation.data.shards import SplitRule, dataset_statistics, read_manifest, read_split, sha256_file, write_shards
from foundation.data.validate import validate

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
OQMD = DATA / "oqmd" / "formationenergy.jsonl.gz"
LIPS = DATA / "lips" / "frames.extxyz"
OC20_XYZ = DATA / "oc20_format" / "toy_c3h8_relax.extxyz"


def read_shard_dir(out: Path) -> dict[str, tuple[str, Crystal]]:
    """{key: (split, crystal)} of every record in a shard directory, via tarfile (not our reader)."""
    manifest = read_manifest(out)
    found = {}
    for split, entries in manifest["shards"].items():
        for entry in entries:
            assert sha256_file(out / entry["file"]) == entry["sha256"]
            with tarfile.open(out / entry["file"]) as tar:
                samples: dict[str, dict] = {}
                for member in tar.getmembers():
                    key, _, suffix = member.name.partition(".")
                    assert suffix.endswith((".npy", ".json")), member.name  # never pickle
                    samples.setdefault(key, {"__key__": key})[suffix] = tar.extractfile(member).read()
            assert len(samples) == entry["records"]
            for sample in samples.values():
                c = decode_record(sample)
                assert c.key not in found
                found[c.key] = (split, c)
    return found


def assert_same(a: Crystal, b: Crystal) -> None:
    np.testing.assert_array_equal(a.numbers, b.numbers)
    for name in ("positions", "cell", "pbc"):
        got, want = getattr(a, name), getattr(b, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert sorted(a.targets) == sorted(b.targets) and sorted(a.arrays) == sorted(b.arrays)
    for name, value in b.targets.items():
        assert np.array_equal(np.asarray(a.targets[name], np.float64), np.asarray(value, np.float64)), name
    for name, value in b.arrays.items():
        assert np.array_equal(a.arrays[name], value), name


@pytest.mark.parametrize("path", [OQMD, LIPS, OC20_XYZ], ids=["oqmd", "lips", "oc20_extxyz"])
def test_real_file_round_trip_is_exact(tmp_path, path):
    from foundation.data import readers

    records = list(readers.read(path))
    manifest = write_shards(records, tmp_path, shard_size=64, progress=False, sources=(str(path),),
                            reader={"format": readers.detect_format(path)})
    c = manifest["counts"]
    rejected = [json.loads(line) for line in open(tmp_path / "rejects.jsonl")]
    assert c["read"] == len(records) == c["written"] + c["rejected"] and c["rejected"] == len(rejected)
    assert sum(s["records"] for s in c["splits"].values()) == c["written"]
    found = read_shard_dir(tmp_path)
    assert len(found) == c["written"]
    rejected_keys = {f"{r['source']}:{r['id']}" for r in rejected}
    for original in records:
        if original.key in rejected_keys:
            continue
        assert_same(found[original.key][1], validate(original))
    assert manifest["sources"][0]["files"][0]["sha256"] == sha256_file(path)
    train_atoms = sum(c.n_atoms for split, c in found.values() if split == "train")
    assert sum(s["atoms"] for s in manifest["shards"]["train"]) == train_atoms == c["splits"]["train"]["atoms"]
    for split in ("train", "val", "test"):  # read_split: a whole split through our reader, the same records
        records_of_split = list(read_split(tmp_path, split))
        assert sorted(r.key for r in records_of_split) == sorted(k for k, (s, _) in found.items() if s == split)
        for record in records_of_split:
            assert_same(record, found[record.key][1])
    with pytest.raises(ValueError, match="no split 'valid'"):
        next(read_split(tmp_path, "valid"))


def crystal(numbers, positions, cell=8.0, key="x", source="syn", **targets) -> Crystal:
    return Crystal(numbers=np.asarray(numbers), positions=np.asarray(positions, dtype=float),
                   cell=np.eye(3) * cell, pbc=np.array([True, True, True]), targets=targets, id=key, source=source)


def test_bad_records_go_to_rejects_with_reasons(tmp_path):
    good = crystal([14, 14], [[0, 0, 0], [2.3, 0, 0]], key="good", energy=-10.0)
    records = [
        good,
        crystal([14, 14], [[0, 0, 0], [np.nan, 0, 0]], key="nan"),
        crystal([14, 14], [[0, 0, 0], [0.21, 0, 0]], key="overlap"),
        crystal([14, 14], [[0, 0, 0], [7.9, 0, 0]], key="image_overlap"),  # 0.1 Å through the boundary
        crystal([14, 0], [[0, 0, 0], [2, 0, 0]], key="z0"),
        crystal([14, 200], [[0, 0, 0], [2, 0, 0]], key="z200"),
        crystal([], np.zeros((0, 3)), key="empty"),
        Reject("unparsable", "syn", "reader: bad JSON", "in.json"),
        crystal([14, 14], [[0, 0, 0], [2.3, 0, 0]], key="nolabel"),
    ]
    manifest = write_shards(records, tmp_path, required_targets=("energy",), progress=False)
    assert manifest["counts"]["read"] == 9 and manifest["counts"]["written"] == 1
    reasons = {r["id"]: r["reason"] for r in map(json.loads, open(tmp_path / "rejects.jsonl"))}
    assert "non-finite coordinates" in reasons["nan"] and "nan" in reasons["nan"]
    assert "0.21 Å apart" in reasons["overlap"] and "min_distance=0.5" in reasons["overlap"]
    assert "0.1 Å apart" in reasons["image_overlap"]
    assert "Z=0" in reasons["z0"] and "Z=200" in reasons["z200"]
    assert reasons["empty"] == "no atoms" and reasons["unparsable"] == "reader: bad JSON"
    assert "missing required label 'energy'" in reasons["nolabel"]


def test_splits_are_stable_when_data_is_added_and_groups_stay_together(tmp_path):
    rule = SplitRule((0.6, 0.2, 0.2), seed=3)
    frames = [crystal([1], [[0, 0, 0]], key=f"sys{i // 10}:{i % 10}") for i in range(200)]
    first = {c.key: rule.assign(c) for c in frames[:100]}
    assert {c.key: rule.assign(c) for c in frames[:100]} == first  # pure function of key and seed
    counts = {s: list(first.values()).count(s) for s in ("train", "val", "test")}
    assert 40 <= counts["train"] <= 80 and counts["val"] > 5 and counts["test"] > 5
    grouped = SplitRule((0.6, 0.2, 0.2), seed=3, group_by_prefix=True)
    for g in range(20):
        assert len({grouped.assign(c) for c in frames[10 * g:10 * g + 10]}) == 1
    small = write_shards(frames[:100], tmp_path / "a", fractions=(0.6, 0.2, 0.2), seed=3, dedup=False,
                         progress=False, shard_size=7)
    big = write_shards(frames, tmp_path / "b", fractions=(0.6, 0.2, 0.2), seed=3, dedup=False,
                       progress=False, shard_size=7)
    a, b = read_shard_dir(tmp_path / "a"), read_shard_dir(tmp_path / "b")
    assert all(b[k][0] == a[k][0] == first[k] for k in a)
    assert small["split_rule"]["seed"] == 3 and big["counts"]["written"] == 200


def test_element_references_and_per_atom_statistics_recover_synthetic_truth(tmp_path):
    rng = np.random.default_rng(1)
    refs = {3: -1.9, 8: -4.9, 26: -8.3, 14: -5.4}
    records = []
    for i in range(300):
        n = int(rng.integers(2, 9))
        numbers = rng.choice(list(refs), n)
        positions = np.stack(np.meshgrid(*[np.arange(2)] * 3), -1).reshape(-1, 3)[:n] * 2.5
        base = sum(refs[int(z)] for z in numbers)
        noise = rng.normal(0, 0.01)
        forces = rng.normal(0, 0.3, (n, 3))
        records.append(crystal(numbers, positions, cell=5.0, key=str(i), energy=base + n * noise,
                               formation_energy_per_atom=base / n + noise, forces=forces))
    manifest = write_shards(records, tmp_path, fractions=(1, 0, 0), progress=False, dedup=False)
    for target in ("energy", "formation_energy_per_atom"):
        got = manifest["element_references"][target]
        assert max(abs(got[z] - ref) for z, ref in refs.items()) < 5e-3, (target, got)
        assert abs(manifest["residuals"][target]["mean"]) < 3e-3
        assert abs(manifest["residuals"][target]["std"] - 0.01) < 2e-3
    assert abs(manifest["targets"]["forces"]["std"] - 0.3) < 0.02  # component RMS
    normalization, element_refs = dataset_statistics({"syn": tmp_path})
    assert element_refs["energy"].keys() == set(range(1, 119))
    mean_per_atom = np.mean([r.targets["energy"] / r.n_atoms for r in records])
    assert element_refs["energy"][50] == pytest.approx(mean_per_atom)  # unseen element: the prior z̄
    assert normalization["forces"][0] == 0.0 and normalization["energy"][1] == pytest.approx(0.01, abs=2e-3)

    from foundation.model.tasks import TaskSpec

    tasks = [TaskSpec.for_target("energy", name="e"), TaskSpec.for_target("forces", name="f", forces_of="e"),
             TaskSpec.for_target("formation_energy_per_atom", name="ef", datasets=("other",))]
    normalization, element_refs = dataset_statistics({"syn": tmp_path}, tasks)
    assert set(normalization) == {"e"} and set(element_refs) == {"e"}  # f: from e; ef: no data


def test_element_references_of_few_noisy_records_are_shrunk_by_the_held_out_ridge(tmp_path):
    """Fewer train records than elements with large label noise (the MP sample's case): an
    unregularised solve gives references far off; the ridge chosen on the val split keeps every
    reference near the truth, and its held-out error is below the unregularised one's."""
    from foundation.data.shards.statistics import _dense, _held_out_error, solve_references

    rng = np.random.default_rng(4)
    truth = {z: float(rng.uniform(-9, -2)) for z in range(3, 43)}  # 40 elements
    zs = list(truth)
    records = []
    for i in range(60):
        numbers = rng.choice(zs, int(rng.integers(2, 5)))
        positions = np.stack(np.meshgrid(*[np.arange(2)] * 3), -1).reshape(-1, 3)[:len(numbers)] * 2.5
        e = float(np.mean([truth[int(z)] for z in numbers]) + rng.normal(0, 0.5))
        records.append(crystal(numbers, positions, cell=5.0, key=f"r{i}", formation_energy_per_atom=e))
    manifest = write_shards(records, tmp_path, fractions=(0.5, 0.5, 0.0), progress=False, dedup=False)
    fit = manifest["element_reference_fits"]["formation_energy_per_atom"]
    assert fit["chosen_on"] == "val" and fit["ridge"] > 1e-6 and fit["held_out_records"] > 15
    train = manifest["label_sums"]["systems"]["formation_energy_per_atom"]
    held = _dense(manifest["label_sums_val"]["systems"]["formation_energy_per_atom"])
    chosen = solve_references(train, "formation_energy_per_atom", manifest["label_sums_val"]["systems"]["formation_energy_per_atom"])
    bare = solve_references({**train, "n": 10**6}, "formation_energy_per_atom")  # enough records: ridge 1e-8
    as_dense = [np.bincount(list(r), weights=list(r.values()), minlength=119) for r in (chosen, bare)]
    assert _held_out_error(as_dense[0], held) < _held_out_error(as_dense[1], held)
    spread = max(truth.values()) - min(truth.values())
    assert max(abs(chosen[z] - t) for z, t in truth.items()) < spread  # within the physical range
    assert max(abs(bare[z] - t) for z, t in truth.items()) > spread  # the unregularised solve is not
    _, element_refs = dataset_statistics({"few": tmp_path})
    assert element_refs["formation_energy_per_atom"] == pytest.approx(chosen)


# The sample's energy labels as the pretraining configs read them: (reader path, format, options,
# group_by_prefix, label). OC20: energies above each system's relaxed frame (configs/pretrain/*.yaml).
SAMPLE_ENERGIES = {
    "mp": (DATA / "materials_project" / "summary.jsonl.gz", "mp_summary", {}, False, "energy_per_atom"),
    "carbon24": (DATA / "carbon24" / "carbon24_val.csv", "cif_csv", {}, False, "energy_per_atom"),
    "mlearn_si": (DATA / "mlearn" / "Si" / "id_prop.json.gz", "jarvis", {}, False, "energy"),
    "mlearn_cu": (DATA / "mlearn" / "Cu" / "id_prop.json.gz", "jarvis", {}, False, "energy"),
    "lips": (LIPS, "extxyz", {}, False, "energy"),
    "colabfit": (DATA / "colabfit" / "frames.extxyz", "extxyz", {}, False, "energy"),
    "oc20": (DATA / "oc20" / "trajectories", "ase", {"every": 10, "energy_reference": "relaxed"}, True, "energy"),
    "oc22": (None, "oc20_lmdb", {"source": "oc22"}, False, "energy"),
}


@pytest.mark.parametrize("name", list(SAMPLE_ENERGIES))
def test_sample_energy_references_are_physical_and_beat_the_mean_predictor(name, tmp_path):
    """Every energy label of the sample pretraining: each element reference lies within the range of
    the per-atom energies of the train records (the old unregularised solve put MP's Fe at +39 eV/atom,
    above every MP compound), and the references alone predict the val split better than the mean
    predictor (mean per-atom energy times the atoms; the mean for a per-atom label) where the
    compositions vary, and no worse where they do not. That the trained heads then beat the mean
    predictor is the pretraining run's verdict column (tests/integration/test_pretrain.py)."""
    import itertools

    from foundation.data import readers
    from foundation.data.readers.oc20_lmdb import oc22_pkl_to_lmdb
    from foundation.data.targets import target_info

    path, fmt, options, grouped, label = SAMPLE_ENERGIES[name]
    if name == "oc22":
        path = tmp_path / "lmdb"
        path.mkdir()
        for part in ("train", "val"):
            oc22_pkl_to_lmdb(DATA / "oc22" / f"oc22_pickle16_{part}.pkl", path / f"{part}.lmdb")
    records = list(itertools.islice(readers.read(path, format=fmt, **options), 600))
    fractions = (0.8, 0.2, 0.0) if name == "oc22" else (0.8, 0.1, 0.1)
    write_shards(records, tmp_path / "shards", fractions=fractions, seed=0, group_by_prefix=grouped,
                 progress=False, dedup=False)
    normalization, refs = dataset_statistics({name: tmp_path / "shards"})
    refs, (residual_mean, _) = refs[label], normalization[label]
    extensive = target_info(label).extensive
    split = {"train": [], "val": []}
    for which, c in read_shard_dir(tmp_path / "shards").values():
        if which in split and label in c.targets:
            split[which].append(c)

    def per_atom(c):
        return float(c.targets[label]) / (c.n_atoms if extensive else 1)

    low, high = min(map(per_atom, split["train"])), max(map(per_atom, split["train"]))
    seen = {int(z) for c in split["train"] for z in c.numbers}
    margin = 0.1 * (high - low) + 0.1
    assert all(low - margin <= refs[z] <= high + margin for z in seen), (name, low, high, {z: refs[z] for z in seen})
    z_mean = float(np.mean([per_atom(c) for c in split["train"]]))

    def by_refs(c):
        value = sum(refs[int(z)] for z in c.numbers) / (1 if extensive else c.n_atoms)
        return value + residual_mean * (c.n_atoms if extensive else 1)

    def by_mean(c):
        return z_mean * (c.n_atoms if extensive else 1)

    truth = np.array([float(c.targets[label]) for c in split["val"]])
    mae_refs = np.abs(np.array([by_refs(c) for c in split["val"]]) - truth).mean()
    mae_mean = np.abs(np.array([by_mean(c) for c in split["val"]]) - truth).mean()
    if name in ("mp", "oc22"):  # many compositions: the references carry what the mean cannot
        assert mae_refs < (0.9 if name == "mp" else 0.97) * mae_mean, (name, mae_refs, mae_mean)
    else:  # one composition (mlearn, ColabFit, LiPS) or per-system referenced (OC20): the references
        assert mae_refs <= 1.01 * mae_mean + 1e-9, (name, mae_refs, mae_mean)  # are the mean; never worse


def test_statistics_of_two_directories_combine_exactly(tmp_path):
    rng = np.random.default_rng(2)
    records = [crystal(rng.choice([1, 8], 3), [[0, 0, 0], [1.5, 0, 0], [0, 1.5, 0]], key=str(i),
                       energy=float(rng.normal(-10, 2)), band_gap=float(rng.random())) for i in range(80)]
    kwargs = dict(fractions=(1, 0, 0), progress=False, dedup=False)
    write_shards(records[:30], tmp_path / "a", **kwargs)
    write_shards(records[30:], tmp_path / "b", **kwargs)
    write_shards(records, tmp_path / "all", **kwargs)
    (norm_split, refs_split), (norm_all, refs_all) = (
        dataset_statistics({"a": tmp_path / "a", "b": tmp_path / "b"}), dataset_statistics({"all": tmp_path / "all"}))
    assert norm_split.keys() == norm_all.keys() == {"energy", "band_gap"}
    for key in norm_all:
        np.testing.assert_allclose(norm_split[key], norm_all[key], rtol=1e-9, atol=1e-12)
    assert refs_split["energy"].keys() == refs_all["energy"].keys() == set(range(1, 119))
    for z in (1, 8, 26):  # 26: unseen, the prior
        assert refs_split["energy"][z] == pytest.approx(refs_all["energy"][z], rel=1e-9)


def test_duplicates_across_databases_are_found_and_optionally_dropped(tmp_path):
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.operations import SymmOp

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    write_shards([Crystal.from_pymatgen(nacl, id="mp-22862", source="mp"),
                  Crystal.from_pymatgen(cscl, id="mp-573", source="mp")], tmp_path / "mp", progress=False)
    other = nacl.get_primitive_structure()
    other.scale_lattice(other.volume * 1.02)  # another code's relaxation, primitive cell, rotated order
    other.apply_operation(SymmOp.from_axis_angle_and_translation([1, 1, 0], 33.0))
    polymorph = Structure.from_spacegroup("F-43m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    records = [Crystal.from_pymatgen(other, id="1", source="oqmd"),
               Crystal.from_pymatgen(polymorph, id="2", source="oqmd")]
    manifest = write_shards(records, tmp_path / "oqmd", dedup_against=(str(tmp_path / "mp"),), progress=False)
    against = manifest["counts"]["duplicates"]["against"]
    assert against == {str(tmp_path / "mp"): 1} and manifest["counts"]["written"] == 2
    listed = [json.loads(line) for line in open(tmp_path / "oqmd" / "duplicates.jsonl")]
    assert [(d["key"], d["duplicate_of"]) for d in listed] == [("oqmd:1", "mp:mp-22862")]
    dropped = write_shards(records, tmp_path / "oqmd2", dedup_against=(str(tmp_path / "mp"),),
                           drop_duplicates=True, progress=False)
    assert dropped["counts"]["written"] == 1 and dropped["counts"]["rejected"] == 1


def test_cli_shards_a_real_file(tmp_path, capsys):
    out = tmp_path / "oqmd"
    assert cli_main(["--format", "oqmd", "--input", str(OQMD), "--out", str(out), "--shard-size", "50",
                     "--quiet"], "shard") == 0
    manifest = read_manifest(out)
    assert manifest["counts"]["read"] == 200 and manifest["reader"]["format"] == "oqmd"
    assert "read 200" in capsys.readouterr().err
    with pytest.raises(FileExistsError):
        cli_main(["--format", "oqmd", "--input", str(OQMD), "--out", str(out), "--quiet"], "shard")
    sizes = np.load(out / "sizes.npz", allow_pickle=False)
    first = manifest["shards"]["train"][0]["file"]
    assert len(sizes[f"{first}/n_atoms"]) == manifest["shards"]["train"][0]["records"]


def test_real_files_stream_back_exactly_through_the_loader(tmp_path):
    """OQMD + LiPS: read, shard, stream every split back (float64): same structures and labels,
    each record once, nothing lost."""
    import torch

    from foundation.data import readers
    from foundation.data.graph import neighbor_graph
    from foundation.data.shards.stream import LoaderConfig, build_loader

    originals = {}
    for name, path in (("oqmd", OQMD), ("lips", LIPS)):
        records = list(readers.read(path))
        write_shards(records, tmp_path / name, shard_size=64, progress=False)
        originals.update({c.key: (name, validate(c)) for c in records})
    config = LoaderConfig(cutoff=4.0, max_atoms=400, shuffle_buffer=50)
    seen = []
    for split in ("train", "val", "test"):
        loader = build_loader({n: str(tmp_path / n) for n in ("oqmd", "lips")}, split, config,
                              dtype=torch.float64)
        for batch in loader:
            starts = np.concatenate([[0], np.cumsum(batch.n_atoms.numpy())])
            for g, key in enumerate(batch.ids):
                name, want = originals[key]
                atoms = slice(starts[g], starts[g + 1])
                assert batch.datasets[g] == name
                np.testing.assert_array_equal(batch.numbers[atoms].numpy(), want.numbers)
                assert np.array_equal(batch.positions[atoms].numpy(), want.positions)
                assert np.array_equal(batch.cell[g].numpy(), want.cell)
                for target, value in want.targets.items():
                    got = batch.targets[target][atoms] if np.ndim(value) == 2 and target == "forces" \
                        else batch.targets[target][g]
                    assert np.array_equal(got.numpy(), np.asarray(value, np.float64)), (key, target)
                edges = int(((batch.edge_index[0] >= starts[g]) & (batch.edge_index[0] < starts[g + 1])).sum())
                assert edges == neighbor_graph(want, 4.0).n_edges
            seen.extend(batch.ids)
    assert sorted(seen) == sorted(originals) and len(originals) == 400


def test_duplicates_within_one_source_on_request(tmp_path):
    from pymatgen.core import Lattice, Structure

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    primitive = nacl.get_primitive_structure()
    primitive.scale_lattice(primitive.volume * 1.03)
    records = [Crystal.from_pymatgen(nacl, id="a:1", source="db"), Crystal.from_pymatgen(primitive, id="b:1", source="db"),
               Crystal.from_pymatgen(primitive, id="a:2", source="db")]
    default = write_shards(records, tmp_path / "default", progress=False)
    assert default["counts"]["duplicates"]["within_input"] == 0 and not default["counts"]["duplicates"]["within_source"]
    within = write_shards(records, tmp_path / "within", dedup_within_source=True, progress=False)
    assert within["counts"]["duplicates"]["within_input"] == 2 and within["counts"]["written"] == 3
    listed = [json.loads(line) for line in open(tmp_path / "within" / "duplicates.jsonl")]
    assert [(d["key"], d["duplicate_of"]) for d in listed] == [("db:b:1", "db:a:1"), ("db:a:2", "db:a:1")]
    # frames of one group (id prefix "a") are never compared with each other
    grouped = write_shards(records, tmp_path / "grouped", dedup_within_source=True, group_by_prefix=True,
                           progress=False)
    assert [json.loads(line)["key"] for line in open(tmp_path / "grouped" / "duplicates.jsonl")] == ["db:b:1"]
    assert grouped["counts"]["duplicates"]["within_input"] == 1


def test_one_neighbour_search_per_record_serves_validation_edges_and_fingerprint(tmp_path, monkeypatch):
    """The shard writer searches each record's neighbours once (PairSearch), at the largest radius
    that validation, the edge counts and the fingerprint need; the results equal separate searches."""
    import foundation.data.graph as graph
    from foundation.data import readers
    from foundation.data.fingerprint import fingerprint, fingerprint_reach, pair_distances
    from foundation.data.shards.prepare import prepare
    from foundation.data.validate import ValidationConfig

    records = [r for r in readers.read(OQMD, "oqmd")][:20]
    calls = []
    real = graph.NeighborList

    class Counting(real):
        def compute(self, *args, **kwargs):
            calls.append(1)
            return super().compute(*args, **kwargs)

    monkeypatch.setattr(graph, "NeighborList", Counting)
    prepared = [prepare(r, ValidationConfig(), (4.0, 5.0, 6.0), True) for r in records]
    assert len(calls) == len(records)
    monkeypatch.setattr(graph, "NeighborList", real)
    for crystal, edges, fp, _ in prepared:
        d = pair_distances(crystal, 6.0)
        assert edges == [2 * int((d < c).sum()) for c in (4.0, 5.0, 6.0)]
        reach = max(6.0, fingerprint_reach(crystal))
        assert fp.curve.tolist() == pytest.approx(fingerprint(crystal, pair_distances(crystal, reach)).curve.tolist(),
                                                  abs=1e-12)


def test_a_train_subset_keeps_val_and_test_and_rejects_the_rest_with_a_reason(tmp_path):
    """Learning curves: the first N train records, val and test exactly the full split's."""
    from foundation.data import readers
    from foundation.data.shards import TrainSubset

    records = [r for r in readers.read(OQMD, "oqmd")]
    full = write_shards(records, tmp_path / "full", dedup=False, progress=False, fractions=(0.6, 0.2, 0.2))
    rule = TrainSubset(SplitRule((0.6, 0.2, 0.2)), 25)
    part = write_shards(records, tmp_path / "part", dedup=False, progress=False, split=rule)
    assert part["counts"]["splits"]["train"]["records"] == 25
    for split in ("val", "test"):
        assert part["counts"]["splits"][split] == full["counts"]["splits"][split]
    left = full["counts"]["splits"]["train"]["records"] - 25
    assert part["counts"]["rejected"] == full["counts"]["rejected"] + left
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "part" / "rejects.jsonl").read_text().splitlines()]
    assert sum("beyond the first 25 training records" in r for r in reasons) == left
    assert part["split_rule"]["max_train"] == 25
