"""Streaming loader: exactly-once epochs over ranks and workers, equal batch counts, packing
budgets, temperature mixing, corrupt shards, resuming mid-epoch, and graphs cached in memory."""

import logging
import multiprocessing as mp
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shard_fixtures import synthetic

from foundation.data import Crystal
from foundation.data.graph import neighbor_graph
from foundation.data.shards.packing import SourceSizes, mixture_counts, plan_epoch, worker_batches
from foundation.data.shards import SplitRule, packing, write_shards
from foundation.data.shards.stream import GraphCache, LoaderConfig, build_loader

ALL_TRAIN = SplitRule(fractions=(1.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory):
    """25 records in 3 train shards (10, 10, 5)."""
    out = tmp_path_factory.mktemp("three")
    write_shards(synthetic(25, seed=1), out, shard_size=10, split=ALL_TRAIN, dedup=False, progress=False)
    return out


def _epoch_ids(shards, rank, world_size, workers, epoch=0):
    config = LoaderConfig(cutoff=4.0, max_atoms=30, num_workers=workers, shuffle_buffer=8)
    loader = build_loader({"synth": str(shards)}, "train", config, rank=rank, world_size=world_size, epoch=epoch)
    batches = [b.ids for b in loader]
    return len(loader), batches


def _rank_process(shards, rank, world_size, workers, queue):
    queue.put((rank, _epoch_ids(shards, rank, world_size, workers)))


def test_two_ranks_two_workers_see_every_record_once(three_shards):
    """2 spawned processes x 2 DataLoader workers = 4 slots over 3 shards."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_process, args=(three_shards, r, 2, 2, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    (len0, batches0), (len1, batches1) = results[0], results[1]
    assert len(batches0) == len(batches1) == len0 == len1
    seen = [i for b in batches0 + batches1 for i in b]
    assert sorted(seen) == sorted(f"synth:s{i}" for i in range(25))
    # the same plan in one process, no workers: the same batches in the same order
    assert _epoch_ids(three_shards, 0, 2, 2)[1] == batches0


def test_batches_hold_the_budget_and_an_oversize_structure_gets_its_own(tmp_path, caplog):
    crystals = synthetic(30, seed=2)
    largest = max(crystals, key=lambda c: c.n_atoms)
    big = Crystal.from_ase(largest.to_ase().repeat((2, 2, 2)), targets={"band_gap": 1.0}, id="big", source="synth")
    write_shards(crystals + [big], tmp_path, shard_size=7, split=ALL_TRAIN, dedup=False, progress=False)
    budget = 2 * largest.n_atoms  # every structure fits but the 8x supercell
    config = LoaderConfig(cutoff=4.0, max_atoms=budget, shuffle_buffer=5)
    with caplog.at_level(logging.WARNING, logger="foundation.data"):
        batches = list(build_loader({"x": str(tmp_path)}, "train", config))
    assert sorted(i for b in batches for i in b.ids) == sorted(c.key for c in crystals + [big])
    over = [b for b in batches if int(b.n_atoms.sum()) > budget]
    assert len(over) == 1 and over[0].ids == ["synth:big"]
    assert "synth:big" in caplog.text and "over the batch budget" in caplog.text
    assert len(batches) < 20  # packed, not one structure a batch


def test_edge_budget_uses_the_stored_upper_bound(tmp_path):
    crystals = synthetic(20, seed=3)
    manifest = write_shards(crystals, tmp_path, split=ALL_TRAIN, dedup=False, progress=False)
    edges = {c.key: neighbor_graph(c, 4.5).n_edges for c in crystals}
    config = LoaderConfig(cutoff=4.5, max_atoms=10_000, max_edges=max(edges.values()) + 50, shuffle_buffer=4)
    batches = list(build_loader({"x": str(tmp_path)}, "train", config))
    assert sorted(i for b in batches for i in b.ids) == sorted(edges)
    assert all(b.n_edges <= config.max_edges for b in batches)
    assert sum(b.n_edges for b in batches) == sum(edges.values())
    assert manifest["sizes"]["edge_cutoffs"][0] >= 4.0
    with pytest.raises(ValueError, match="none >= the loader's 9.0"):
        build_loader({"x": str(tmp_path)}, "train", LoaderConfig(cutoff=9.0, max_edges=100))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 300), max_size=40), min_size=1, max_size=4),
       st.integers(1, 6), st.integers(1, 4), st.integers(100, 700), st.integers(0, 5))
def test_plan_is_exactly_once_with_equal_counts(shards, world_size, workers, max_atoms, epoch):
    sizes = SourceSizes("a", tuple(f"s{i}" for i in range(len(shards))), tuple(np.array(s) for s in shards))
    n = sizes.n_records
    if n == 0:  # an empty split: no batch on any rank
        plan = plan_epoch([sizes], epoch=epoch, seed=0, world_size=world_size, n_workers=workers, max_atoms=max_atoms)
        assert plan.batches_per_rank == 0 and len(plan.rank_batches) == world_size
        return
    if n < world_size:
        with pytest.raises(ValueError, match="cannot give every one"):
            plan_epoch([sizes], epoch=epoch, seed=0, world_size=world_size, n_workers=workers, max_atoms=max_atoms)
        return
    plan = plan_epoch([sizes], epoch=epoch, seed=0, world_size=world_size, n_workers=workers,
                      max_atoms=max_atoms, shuffle_buffer=16)
    k = plan.batches_per_rank
    seen = []
    for rank in range(world_size):
        assert len(plan.rank_batches[rank]) == k
        served = sorted(b for w in range(workers) for b in worker_batches(plan, rank, w, workers))
        assert served == list(range(k))
        for batch, padding in zip(plan.rank_batches[rank], plan.padding[rank]):
            assert len(batch) == 1 or plan.atoms[batch].sum() <= max_atoms
            if not padding:
                seen.extend(batch.tolist())
    assert sorted(seen) == list(range(n))
    assert sorted(zip(plan.shard.tolist(), plan.record.tolist())) == [
        (s, r) for s, rec in enumerate(shards) for r in range(len(rec))]


def test_temperature_sampling_proportions(tmp_path):
    n = {"big": 120, "small": 15}
    for i, (name, count) in enumerate(n.items()):
        write_shards(synthetic(count, seed=10 + i, id_prefix=name), tmp_path / name, shard_size=40,
                     split=ALL_TRAIN, dedup=False, progress=False)
    temperature = 2.0
    p = np.array([120, 15]) ** (1 / temperature)
    p /= p.sum()
    assert mixture_counts([120, 15], temperature).tolist() == np.round(135 * p).astype(int).tolist()
    config = LoaderConfig(cutoff=4.0, max_atoms=60, temperature=temperature, shuffle_buffer=32)
    loader = build_loader({k: str(tmp_path / k) for k in n}, "train", config)
    draws = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        draws += [d for b in loader for d in b.datasets]
    frac = np.mean(np.array(draws) == "small")
    sigma = np.sqrt(p[1] * (1 - p[1]) / len(draws))
    assert abs(frac - p[1]) < 4 * sigma + 1e-9, (frac, p[1])
    assert frac > 2 * 15 / 135  # T=2 upsamples the small dataset


def test_truncated_shard_is_skipped_warned_and_counted(three_shards, tmp_path, caplog):
    broken = tmp_path / "broken"
    shutil.copytree(three_shards, broken)
    tar = broken / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])
    reference = _epoch_ids(three_shards, 0, 1, 0)
    config = LoaderConfig(cutoff=4.0, max_atoms=30, shuffle_buffer=8)
    loader = build_loader({"synth": str(broken)}, "train", config)
    with caplog.at_level(logging.WARNING, logger="foundation.data"):
        batches = [b.ids for b in loader]
    assert len(batches) == reference[0]  # the batch count never changes
    got = [i for b in batches for i in b]
    assert len(got) == len(set(got)) and set(got) < {i for b in reference[1] for i in b}
    assert loader.counters["missing_records"] == 25 - len(got) > 0
    assert loader.counters["corrupt_shards"] == 1 and any("train-000001.tar" in u for u in loader.corrupt_shards)
    assert "train-000001.tar" in caplog.text


def test_resume_mid_epoch_gives_the_remaining_batches(three_shards):
    config = LoaderConfig(cutoff=4.0, max_atoms=30, num_workers=2, shuffle_buffer=8)
    full = build_loader({"synth": str(three_shards)}, "train", config, epoch=1)
    whole = [b.ids for b in full]
    first = build_loader({"synth": str(three_shards)}, "train", config, epoch=1)
    stream = iter(first)
    head = [next(stream).ids for _ in range(3)]
    state = first.state_dict()
    assert state["position"] == 3 and state["epoch"] == 1
    resumed = build_loader({"synth": str(three_shards)}, "train", config)
    resumed.load_state_dict(state)
    assert head + [b.ids for b in resumed] == whole
    assert [b.ids for b in build_loader({"synth": str(three_shards)}, "train", config, epoch=2)] != whole


def test_brace_pattern_urls_with_and_without_a_manifest(three_shards, tmp_path):
    pattern = f"file://{three_shards}/train-{{000000..000002}}.tar"
    config = LoaderConfig(cutoff=4.0, max_atoms=30, shuffle=False)
    with_manifest = [b.ids for b in build_loader({"u": pattern}, "train", config)]
    bare = tmp_path / "bare"
    bare.mkdir()
    for tar in three_shards.glob("train-*.tar"):
        shutil.copy(tar, bare / tar.name)
    urls = [str(p) for p in sorted(bare.glob("*.tar"))]
    without = [b.ids for b in build_loader({"u": urls}, "train", config)]
    assert with_manifest == without
    assert sorted(i for b in without for i in b) == sorted(f"synth:s{i}" for i in range(25))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="max_atoms"):
        LoaderConfig(max_atoms=0)
    with pytest.raises(ValueError, match="temperature"):
        LoaderConfig(temperature=0.0)
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        build_loader({"x": "unused"}, "train", LoaderConfig(cutoff=5.0), rank=2, world_size=2)
    with pytest.raises(FileNotFoundError, match="dataset 'x': no shard manifest at /nonexistent"):
        build_loader({"x": "/nonexistent"}, "train", LoaderConfig(cutoff=5.0))


def test_batches_carry_dataset_names_and_dtype(three_shards):
    config = LoaderConfig(cutoff=4.0, max_atoms=30)
    batch = next(iter(build_loader({"mine": str(three_shards)}, "train", config, dtype=torch.float64)))
    assert set(batch.datasets) == {"mine"} and batch.positions.dtype == torch.float64
    assert batch.tags is not None and "forces" in batch.targets and batch.masks["forces"].all()


def test_a_wholly_unreadable_shard_keeps_the_batch_count(three_shards, tmp_path, caplog):
    """Batches whose every record sat in a destroyed shard repeat a good batch (counted)."""
    broken = tmp_path / "zeroed"
    shutil.copytree(three_shards, broken)
    first = broken / "train-000000.tar"
    first.write_bytes(b"\0" * first.stat().st_size)
    config = LoaderConfig(cutoff=4.0, max_atoms=30, shuffle=False, interleave=1)
    loader = build_loader({"synth": str(broken)}, "train", config)
    with caplog.at_level(logging.WARNING, logger="foundation.data"):
        batches = [b.ids for b in loader]
    assert len(batches) == len(loader) == len(build_loader({"synth": str(three_shards)}, "train", config))
    assert loader.counters["replaced_batches"] > 0 and loader.counters["missing_records"] == 10
    from webdataset.tariterators import tarfile_samples

    from foundation.data.shards.format import decode_record

    lost = {decode_record(x).key for x in tarfile_samples([{"url": str(three_shards / "train-000000.tar")}])}
    assert len(lost) == 10
    assert {i for b in batches for i in b} == {f"synth:s{i}" for i in range(25)} - lost
    assert "train-000000.tar" in caplog.text


def test_workers_read_in_windows_with_the_same_batches(tmp_path, monkeypatch):
    """Bookkeeping one window at a time (a worker's memory does not grow with the epoch): cuts
    only where every earlier item precedes every later one, and the very same batches as one window."""
    write_shards(synthetic(300, seed=4), tmp_path, shard_size=40, split=ALL_TRAIN, dedup=False, progress=False)
    config = LoaderConfig(cutoff=4.0, max_atoms=40, shuffle_buffer=16)
    loader = build_loader({"synth": str(tmp_path)}, "train", config, epoch=1)
    one_window = [b.ids for b in loader]
    plan = loader.plan
    ids = np.arange(len(loader))
    cuts, keys, last = packing.worker_windows(plan, 0, ids, window_items=30)
    assert cuts[0] == 0 and cuts[-1] == len(ids) and len(cuts) > 4 and np.all(np.diff(cuts) > 0)
    batches = plan.rank_batches[0]
    for a, b, c in zip(cuts[:-2], cuts[1:-1], cuts[2:]):
        assert batches.take(ids[a:b])[0].max() < batches.take(ids[b:c])[0].min()
    every = batches.take(ids)[0]
    for key, item in zip(keys, last):
        assert item == every[packing.reader_keys(plan, every) == key].max()
    monkeypatch.setattr(packing, "WINDOW_ITEMS", 30)
    loader.set_epoch(1)
    assert [b.ids for b in loader] == one_window
    assert sorted(i for b in one_window for i in b) == sorted(f"synth:s{i}" for i in range(300))


def _contents(loader, epoch):
    return [(b.ids, b.positions.numpy().copy(), b.edge_index.numpy().copy()) for b in loader.batches(epoch)]


def test_cached_graphs_give_the_same_batches_and_spare_the_shards(three_shards, tmp_path):
    """cache_mib: every epoch's batches as without the cache; once cached, the shards are not read."""
    copy = tmp_path / "copy"
    shutil.copytree(three_shards, copy)
    plain = build_loader({"synth": str(copy)}, "train", LoaderConfig(cutoff=4.0, max_atoms=30, shuffle_buffer=8))
    cached = build_loader({"synth": str(copy)}, "train",
                          LoaderConfig(cutoff=4.0, max_atoms=30, shuffle_buffer=8, cache_mib=1))
    expected = {epoch: _contents(plain, epoch) for epoch in (0, 1, 2)}
    first = _contents(cached, 0)
    assert cached.cache.misses == 25 and cached.cache.hits == 0 and len(cached.cache.graphs) == 25
    for tar in copy.glob("train-*.tar"):  # every record is cached: the shards are no longer needed
        tar.write_bytes(b"\0" * tar.stat().st_size)
    for epoch, got in [(0, first), (1, _contents(cached, 1)), (2, _contents(cached, 2))]:
        assert len(got) == len(expected[epoch])
        for (ids, pos, edges), (ids_e, pos_e, edges_e) in zip(got, expected[epoch]):
            assert ids == ids_e
            np.testing.assert_array_equal(pos, pos_e)
            np.testing.assert_array_equal(edges, edges_e)
    assert cached.cache.hits == 50 and cached.counters["missing_records"] == 0
    assert cached.counters["corrupt_shards"] == 0


def test_the_graph_cache_stops_at_its_budget():
    graphs = [neighbor_graph(c, 4.0) for c in synthetic(4, seed=3)]
    cache = GraphCache(max_bytes=sum(GraphCache.size(g) for g in graphs[:2]))
    for i, g in enumerate(graphs):
        cache.put((0, 0, i), g)
    assert set(cache.graphs) == {(0, 0, 0), (0, 0, 1)} and cache.bytes == cache.max_bytes
    assert cache.get((0, 0, 1)) is graphs[1] and cache.get((0, 0, 3)) is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_a_cache_needs_the_main_process():
    with pytest.raises(ValueError, match="cache_mib"):
        LoaderConfig(cache_mib=-1)
    with pytest.raises(ValueError, match="cache_mib=64 needs num_workers=0"):
        LoaderConfig(cache_mib=64, num_workers=2)
