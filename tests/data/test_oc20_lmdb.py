"""OC20/OC22 LMDB reader: real OC22 records round trip, restricted unpickling, bad records."""

from __future__ import annotations

import os
import pickle
import pickletools
from pathlib import Path

import lmdb
import numpy as np
import pytest

from foundation.data.readers.oc20_lmdb import (
    dumps_record,
    oc22_pkl_to_lmdb,
    read_oc20_lmdb,
    write_oc20_lmdb,
)
from foundation.data.readers.safe_unpickle import ALLOWED_GLOBALS, data_attributes, safe_loads
from foundation.data.crystal import Crystal
from foundation.data.records import Reject

OC22 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "oc22"
SPLITS = ("train", "val")


def _globals(data: bytes) -> set[str]:
    """Every global a pickle names (STACK_GLOBAL after two strings, or GLOBAL), never loading it."""
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings = (strings + [arg])[-2:]
        elif op.name == "BINGET" or op.name == "LONG_BINGET":
            strings = (strings + [None])[-2:]
        elif op.name == "STACK_GLOBAL" and None not in strings:
            names.add(".".join(strings))
        elif op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
    return names


@pytest.fixture(scope="module")
def raw_records() -> list[dict]:
    out = []
    for split in SPLITS:
        records = safe_loads((OC22 / f"oc22_pickle16_{split}.pkl").read_bytes())
        out += [data_attributes(r) for r in records]
    return out


@pytest.fixture(scope="module")
def lmdb_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("oc22_lmdb")
    for split in SPLITS:
        oc22_pkl_to_lmdb(OC22 / f"oc22_pickle16_{split}.pkl", folder / f"{split}.lmdb")
    return folder


def test_real_records_use_only_allowed_globals():
    for split in SPLITS:
        names = _globals((OC22 / f"oc22_pickle16_{split}.pkl").read_bytes())
        assert "torch_geometric.data.data.Data" in names
        assert names - {"_edge_attr_cls.DataEdgeAttr", "_tensor_attr_cls.DataTensorAttr"} <= set(
            ALLOWED_GLOBALS
        )


def test_lmdb_from_real_oc22_records_reads_back_all(lmdb_dir, raw_records):
    crystals = list(read_oc20_lmdb(lmdb_dir, source="oc22"))
    assert len(crystals) == 32 == len(raw_records)
    assert all(isinstance(c, Crystal) for c in crystals)
    by_id = {c.id: c for c in crystals}
    assert len(by_id) == 32
    for raw in raw_records:
        crystal = by_id[f"{raw['sid']}:{raw['fid']}"]
        assert crystal.source == "oc22"
        assert crystal.targets["energy"] == raw["y"]
        np.testing.assert_array_equal(crystal.targets["forces"], raw["force"].double().numpy())
        np.testing.assert_array_equal(crystal.positions, raw["pos"].double().numpy())
        np.testing.assert_array_equal(crystal.cell, raw["cell"][0].double().numpy())
        np.testing.assert_array_equal(crystal.numbers, raw["atomic_numbers"].long().numpy())
        np.testing.assert_array_equal(crystal.arrays["tags"], raw["tags"].long().numpy())
        assert crystal.n_atoms == raw["natoms"]
    first = by_id["17914:24"]  # the first train record
    assert first.targets["energy"] == pytest.approx(-566.62288864)
    assert np.bincount(first.arrays["tags"]).tolist() == [95, 11, 3]


def test_lmdb_layout_matches_the_release(lmdb_dir):
    env = lmdb.open(str(lmdb_dir / "train.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        assert safe_loads(txn.get(b"length")) == 16
        keys = sorted(k for k, _ in txn.cursor())
        record = txn.get(b"0")
    env.close()
    assert keys == sorted([str(i).encode() for i in range(16)] + [b"length"])
    original = _globals((OC22 / "oc22_pickle16_train.pkl").read_bytes())
    assert _globals(record) == original  # same class paths as the published pickles


def test_malicious_record_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    good = dumps_record(safe_loads((OC22 / "oc22_pickle16_train.pkl").read_bytes())[0])
    path = write_oc20_lmdb(tmp_path / "bad.lmdb", [good, pickle.dumps(Exploit()), good])
    records = list(read_oc20_lmdb(path))
    assert [type(r).__name__ for r in records] == ["Crystal", "Reject", "Crystal"]
    reject = records[1]
    assert reject.id == "1" and reject.path == str(path)
    assert "bad.lmdb[1]" in reject.reason and "refused global" in reject.reason
    assert "system" in reject.reason  # posix.system on Linux
    assert not marker.exists()


def test_malicious_storage_bytes_are_refused(tmp_path):
    """A tensor's storage bytes are loaded with torch's weights-only unpickler, not a plain load."""
    import torch.storage

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class EvilStorage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (pickle.dumps(Exploit(), protocol=2),))

    with pytest.raises(pickle.UnpicklingError):
        safe_loads(pickle.dumps(EvilStorage()))
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="refused global builtins.eval"):
        safe_loads(pickle.dumps(eval))


def test_truncated_record_is_a_reject(tmp_path):
    good = dumps_record(safe_loads((OC22 / "oc22_pickle16_val.pkl").read_bytes())[3])
    path = write_oc20_lmdb(tmp_path / "cut.lmdb", [good, good[: len(good) // 2], b"", good])
    records = list(read_oc20_lmdb(path, source="oc22"))
    assert [type(r).__name__ for r in records] == ["Crystal", "Reject", "Reject", "Crystal"]
    assert all(isinstance(r, Reject) and r.source == "oc22" for r in records[1:3])
    assert "cut.lmdb[1]" in records[1].reason


def test_missing_field_and_pyg1_layout(tmp_path):
    from foundation.data.readers.safe_unpickle import Data

    record = safe_loads((OC22 / "oc22_pickle16_val.pkl").read_bytes())[0]
    attributes = data_attributes(record)
    legacy = Data()  # PyG 1.x kept the fields in the Data instance itself
    legacy.__dict__.update({k: v for k, v in attributes.items() if k != "atomic_numbers"})
    complete = Data()
    complete.__dict__.update(attributes)
    path = write_oc20_lmdb(tmp_path / "v1.lmdb", [dumps_record(legacy), dumps_record(complete)])
    missing, crystal = list(read_oc20_lmdb(path))
    assert isinstance(missing, Reject) and "atomic_numbers" in missing.reason
    assert crystal.id == f"{attributes['sid']}:{attributes['fid']}"
    assert crystal.targets["energy"] == attributes["y"]
