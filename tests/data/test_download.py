"""`foundation download` against real servers on loopback: the `optimade` reference server (its
in-memory mongomock backend, loaded with Materials Project records of the sample data, one of them
made invalid) and a local HTTP server for single files. An interrupted download resumes, a checksum
mismatch is refused, an invalid record is rejected and counted; without a server it fails in seconds
naming the host."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import itertools
import json
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("optimade.server")
pytest.importorskip("optimade.client")

ROOT = Path(__file__).resolve().parents[2]
MP = ROOT.parent / "shared/data/materials_project/summary.jsonl.gz"
N = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _optimade_jsonl(path: Path) -> None:
    """N sample MP structures as OPTIMADE entries (optimade's own pymatgen adapter), with the MP
    formation energy as provider field `_fdn_formation_energy_per_atom`; entry 7's only site is
    made disordered (two chemical symbols), which no crystal model can read."""
    from optimade.adapters import Structure
    from pymatgen.core import Structure as PymatgenStructure

    lines = [{"x-optimade": {"meta": {"api_version": "1.1.0"}}}]
    with gzip.open(MP, "rt") as fh:
        for i, line in enumerate(itertools.islice(fh, N)):
            row = json.loads(line)
            entry = json.loads(Structure.ingest_from(PymatgenStructure.from_dict(row["structure"])).entry
                               .model_dump_json(exclude_none=True))
            attrs = entry["attributes"]
            attrs.update(formation_energy_per_atom=row["formation_energy_per_atom"],  # served as _fdn_...
                        
                         last_modified="2024-01-01T00:00:00Z", immutable_id=f"mp-{i}")
            if i == 7:
                attrs["species"][0]["chemical_symbols"] = [attrs["species"][0]["chemical_symbols"][0], "X"]
                attrs["species"][0]["concentration"] = [0.5, 0.5]
            lines.append({**entry, "id": f"mp-{i}", "type": "structures"})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


@pytest.fixture(scope="module")
def optimade_server(tmp_path_factory):
    import uvicorn
    from optimade.server.config import ServerConfig
    from optimade.server.create_app import create_app

    data = tmp_path_factory.mktemp("optimade") / "structures.jsonl"
    _optimade_jsonl(data)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    config = ServerConfig(insert_test_data=False, insert_from_jsonl=data, base_url=base,
                          provider={"prefix": "fdn", "name": "foundation tests", "description": "sample data",
                                    "homepage": None},
                          provider_fields={"structures": ["formation_energy_per_atom"]})
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline, "the OPTIMADE server did not start"
        time.sleep(0.05)
    yield base
    server.should_exit = True
    thread.join(timeout=10)


def test_an_interrupted_optimade_download_resumes_and_converts(optimade_server, tmp_path, capsys):
    from foundation.cli.download import cli_main
    from foundation.data.shards.format import read_manifest

    args = ["mp_sample", "--base-url", optimade_server, "--out", str(tmp_path), "--filter", "nsites>=1",
            "--page-limit", "15", "--quiet"]
    assert cli_main([*args, "--max-pages", "1"]) == 0  # stops after one page, as an interruption would
    first = json.loads(capsys.readouterr().out)
    assert first["download"]["pages"] == 1 and first["download"]["entries"] == 15
    assert not first["download"]["complete"] and not (tmp_path / "shards").exists()
    state = json.loads((tmp_path / "raw/state.json").read_text())
    assert "page_offset=15" in state["next"]
    assert cli_main(args) == 0  # the same command: continues at page 2
    report = json.loads(capsys.readouterr().out)
    assert report["download"]["complete"] and report["download"]["entries"] == N
    assert report["download"]["pages"] == 3
    assert report["fields"] == {"_fdn_formation_energy_per_atom": "formation_energy_per_atom"}
    ids = [json.loads(line)["id"] for line in (tmp_path / "raw/structures.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(f"mp-{i}" for i in range(N))  # every entry once: nothing lost or repeated
    assert report["counts"]["read"] == N and report["counts"]["rejected"] == 1
    assert report["counts"]["written"] == N - 1
    rejects = [json.loads(line) for line in (tmp_path / "shards/rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["id"] == "mp-7" and "disordered" in rejects[0]["reason"]
    manifest = read_manifest(str(tmp_path / "shards"))
    assert "formation_energy_per_atom" in manifest["targets"]  # labelled from the provider field


def test_the_filter_is_the_servers(optimade_server, tmp_path, capsys):
    from foundation.cli.download import cli_main

    assert cli_main(["mp_sample", "--base-url", optimade_server, "--out", str(tmp_path), "--filter",
                     "nelements=1", "--no-convert"]) == 0
    report = json.loads(capsys.readouterr().out)
    entries = [json.loads(line) for line in (tmp_path / "raw/structures.jsonl").read_text().splitlines()]
    assert report["download"]["complete"] and 0 < len(entries) < N
    assert all(e["attributes"]["nelements"] == 1 for e in entries)


def test_without_a_server_it_fails_in_seconds_naming_the_host(tmp_path, capsys):
    from foundation.cli.download import cli_main

    port = _free_port()
    t0 = time.time()
    assert cli_main(["x", "--base-url", f"http://127.0.0.1:{port}/optimade", "--out", str(tmp_path)]) == 1
    assert time.time() - t0 < 10
    assert f"cannot reach 127.0.0.1:{port}" in capsys.readouterr().err
    t0 = time.time()
    assert cli_main(["x", "--base-url", "https://no-such-host.invalid/optimade", "--out", str(tmp_path / "b")]) == 1
    assert time.time() - t0 < 15
    assert "cannot reach no-such-host.invalid:443" in capsys.readouterr().err


# -- single files ---------------------------------------------------------------------------------

class _Files(http.server.BaseHTTPRequestHandler):
    """Serves server.files {name: bytes} with ranges; the first GET of a name in server.cut sends a
    third of the body and closes."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng[len("bytes="):].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.server.ranges.append(start)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.server.cut:
            self.server.cut.discard(name)
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def file_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.files, server.cut, server.ranges = {}, set(), []
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def test_an_interrupted_file_transfer_resumes_and_is_checked(file_server, tmp_path):
    from foundation.data.download import download_file

    data = MP.read_bytes() * 8  # ~400 kB: the cut comes after a few 64 kB chunks
    file_server.files["summary.jsonl.gz"] = data
    file_server.cut.add("summary.jsonl.gz")
    md5 = hashlib.md5(data).hexdigest()
    path = download_file(f"{file_server.url}/summary.jsonl.gz", tmp_path / "summary.jsonl.gz", md5=md5, backoff_s=0.01)
    assert path.read_bytes() == data
    # resumed from the last whole chunk written before the cut, not restarted
    assert file_server.ranges[0] == 0 and 0 < file_server.ranges[1] <= len(data) // 3


def test_a_checksum_mismatch_is_refused(file_server, tmp_path):
    from foundation.data.download import ChecksumMismatch, download_file

    file_server.files["task.json.gz"] = b"not the published file"
    with pytest.raises(ChecksumMismatch, match="checksum differs"):
        download_file(f"{file_server.url}/task.json.gz", tmp_path / "task.json.gz", md5="0" * 32, backoff_s=0.01)
    assert not (tmp_path / "task.json.gz").exists() and (tmp_path / "task.json.gz.bad").exists()


def test_a_matbench_task_is_fetched_checked_and_sharded(file_server, tmp_path, capsys, monkeypatch):
    """The MatBench entry's published sha256 is enforced: the sample's mp2018 file served under the
    task's name is refused (it is not the published file); with the sample's own sha256 (a mirror of
    a different file, as a test stands in for the real one) it is read by the matbench reader and sharded."""
    from foundation.cli.download import cli_main
    from foundation.data import download

    sample = ROOT.parent / "shared/data/mp2018/mp2018.json.gz"
    file_server.files["matbench_mp_e_form.json.gz"] = sample.read_bytes()
    url = f"{file_server.url}/matbench_mp_e_form.json.gz"
    args = ["matbench_mp_e_form", "--url", url, "--out", str(tmp_path), "--limit", "300", "--quiet"]
    assert cli_main(args) == 1
    assert "checksum differs from the published one" in capsys.readouterr().err
    digest = hashlib.sha256(sample.read_bytes()).hexdigest()
    monkeypatch.setitem(download.MATBENCH_TASKS, "matbench_mp_e_form", (url, digest, 0))
    assert cli_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["read"] == 300 and report["counts"]["written"] + report["counts"]["rejected"] == 300
    assert (tmp_path / "shards/manifest.json").is_file()


def _archive_entry(monkeypatch, name: str, url: str, data: bytes) -> None:
    from foundation.data import download

    layout, source = download.OC_ARCHIVES[name][2:]
    monkeypatch.setitem(download.OC_ARCHIVES, name, (url, hashlib.md5(data).hexdigest(), layout, source))


def test_an_open_catalyst_s2ef_archive_is_checked_streamed_and_sharded(file_server, tmp_path, capsys, monkeypatch):
    """An archive in the S2EF layout (N.extxyz.xz + N.txt.xz) made of the sample's OC20-format
    trajectory: refused while its MD5 is not the published one, then streamed into shards with the
    frames of one file in one split."""
    import io
    import lzma
    import tarfile

    from foundation.cli.download import cli_main

    frames = (ROOT.parent / "shared/data/oc20_format/toy_c3h8_relax.extxyz").read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in (("0.extxyz.xz", lzma.compress(frames)), ("1.extxyz.xz", lzma.compress(frames)),
                              ("0.txt.xz", lzma.compress(b"random1,frame0,-1.0\n"))):
            info = tarfile.TarInfo(f"s2ef_train_200K/s2ef_train_200K/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = buffer.getvalue()
    file_server.files["s2ef_train_200K.tar"] = data
    url = f"{file_server.url}/s2ef_train_200K.tar"
    args = ["oc20_s2ef_200k", "--url", url, "--out", str(tmp_path), "--quiet"]
    assert cli_main(args) == 1  # the published MD5 is the real archive's, not this one's
    assert "checksum differs from the published one" in capsys.readouterr().err
    _archive_entry(monkeypatch, "oc20_s2ef_200k", url, data)
    assert cli_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["read"] == 202 and report["counts"]["written"] == 202
    splits = {s: v["records"] for s, v in report["counts"]["splits"].items()}
    assert sorted(splits.values()) in ([0, 101, 101], [0, 0, 202])  # each file's 101 frames in one split
    assert not list((tmp_path / "raw/work").iterdir())  # members are removed once read


def test_an_open_catalyst_lmdb_archive_is_read_through_the_restricted_unpickler(file_server, tmp_path, capsys,
                                                                                monkeypatch):
    import io
    import tarfile

    from foundation.cli.download import cli_main
    from foundation.data.readers.oc20_lmdb import oc22_pkl_to_lmdb

    lmdb_path = oc22_pkl_to_lmdb(ROOT.parent / "shared/data/oc22/oc22_pickle16_val.pkl", tmp_path / "data.0000.lmdb")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(lmdb_path, arcname="s2ef_total_train_val_test_lmdbs/data/oc22/s2ef-total/val_id/data.0000.lmdb")
    data = buffer.getvalue()
    file_server.files["s2ef_total_train_val_test_lmdbs.tar.gz"] = data
    url = f"{file_server.url}/s2ef_total_train_val_test_lmdbs.tar.gz"
    _archive_entry(monkeypatch, "oc22_s2ef_total", url, data)
    assert cli_main(["oc22_s2ef_total", "--url", url, "--out", str(tmp_path / "oc22"), "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["read"] > 0 and report["counts"]["written"] == report["counts"]["read"]
