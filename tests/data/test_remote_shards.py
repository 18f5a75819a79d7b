"""Shards from real protocol servers on loopback: a local HTTP server (with range requests, and modes
that drop a connection mid-shard, lose a shard or corrupt one) and a local S3 server (moto in server
mode). The same batches as from disk; a dropped connection is retried; a missing or corrupted shard
is skipped, warned about and its records counted."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from pathlib import Path

import pytest
from shard_fixtures import synthetic

from foundation.data.shards import SplitRule, write_shards
from foundation.data.shards.format import read_manifest
from foundation.data.shards.remote import FetchPolicy, ShardUnavailable, fetch
from foundation.data.shards.stream import LoaderConfig, build_loader

ALL_TRAIN = SplitRule(fractions=(1.0, 0.0, 0.0))
CONFIG = LoaderConfig(cutoff=4.0, max_atoms=30, shuffle_buffer=8, retry_backoff_s=0.05, retries=3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """25 records in 3 train shards (10, 10, 5), with their manifest (sha256 per shard)."""
    out = tmp_path_factory.mktemp("remote_shards")
    write_shards(synthetic(25, seed=4), out, shard_size=10, split=ALL_TRAIN, dedup=False, progress=False)
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD with single byte ranges. `server.flaky`: files whose first GET sends half the body and
    drops the connection; `server.missing`: 404; `server.corrupt`: one byte flipped."""

    def log_message(self, *args):  # quiet
        pass

    def _body(self) -> bytes | None:
        name = self.path.lstrip("/")
        path = self.server.root / name
        if name in self.server.missing or not path.is_file():
            return None
        data = path.read_bytes()
        if name in self.server.corrupt:
            data = data[:600] + bytes([data[600] ^ 0xFF]) + data[601:]
        return data

    def _head(self, data: bytes) -> tuple[int, int]:
        start, end = 0, len(data) - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[len("bytes="):].partition("-")
            start, end = int(a or 0), min(int(b) if b else len(data) - 1, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return start, end

    def do_HEAD(self):
        data = self._body()
        if data is None:
            self.send_error(404)
            return
        self._head(data)

    def do_GET(self):
        data = self._body()
        if data is None:
            self.send_error(404)
            return
        start, end = self._head(data)
        body = data[start:end + 1]
        name = self.path.lstrip("/")
        self.server.requests.append(name)
        if name in self.server.flaky and name not in self.server.dropped:
            self.server.dropped.add(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-shard
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def http_server(shards):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.root, server.flaky, server.missing, server.corrupt = Path(shards), set(), set(), set()
    server.dropped, server.requests = set(), []
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def _epoch(location: str, config: LoaderConfig = CONFIG):
    loader = build_loader({"synth": location}, "train", config)
    batches = [(b.ids, b.numbers.tolist(), b.positions.tolist()) for b in loader]
    return loader, batches


def test_http_shards_give_the_same_batches_as_disk(shards, http_server):
    _, local = _epoch(str(shards))
    loader, remote = _epoch(http_server.url)
    assert remote == local
    assert loader.counters["missing_records"] == 0 and loader.counters.get("fetch_retries", 0) == 0
    assert {"train-000000.tar", "train-000001.tar", "train-000002.tar"} <= set(http_server.requests)


def test_a_connection_dropped_mid_shard_is_retried(shards, http_server, caplog):
    http_server.flaky.add("train-000001.tar")
    _, local = _epoch(str(shards))
    with caplog.at_level(logging.WARNING, logger="foundation.data"):
        loader, remote = _epoch(http_server.url)
    assert "train-000001.tar" in http_server.dropped
    assert remote == local
    assert loader.counters["fetch_retries"] >= 1 and loader.counters["missing_records"] == 0
    assert "retry 1 of 3" in caplog.text and "train-000001.tar" in caplog.text


@pytest.mark.parametrize("fault, counter", [("missing", "unreachable_shards"), ("corrupt", "checksum_failures")])
def test_a_missing_or_corrupt_shard_is_skipped_and_counted(shards, http_server, caplog, fault, counter):
    getattr(http_server, fault).add("train-000001.tar")
    _, local = _epoch(str(shards))
    with caplog.at_level(logging.WARNING, logger="foundation.data"):
        loader, remote = _epoch(http_server.url)
    assert len(remote) == len(local)  # the batch count never changes
    got = {i for ids, _, _ in remote for i in ids}
    everything = {i for ids, _, _ in local for i in ids}
    assert got < everything and len(got) == 15  # the 10 records of that shard are missing
    assert loader.counters["missing_records"] == 10 and loader.counters[counter] == 1
    assert loader.counters["corrupt_shards"] == 1
    assert "skipping shard" in caplog.text and "train-000001.tar" in caplog.text and "10 records" in caplog.text


def test_fetch_refuses_a_checksum_mismatch_and_gives_up_on_an_unreachable_host(shards, http_server):
    manifest = read_manifest(str(shards))
    entry = manifest["shards"]["train"][0]
    url = f"{http_server.url}/{entry['file']}"
    with fetch(url, entry["sha256"], FetchPolicy(retries=0)) as stream:
        assert stream.read() == (shards / entry["file"]).read_bytes()
    with pytest.raises(ShardUnavailable, match="sha256") as info:
        fetch(url, "0" * 64, FetchPolicy(retries=1, backoff_s=0.01))
    assert info.value.kind == "checksum"
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ShardUnavailable, match="after 2 attempts") as info:
        fetch(f"http://127.0.0.1:{port}/train-000000.tar", None, FetchPolicy(retries=1, backoff_s=0.01))
    assert info.value.kind == "unreachable"


# -- S3 --------------------------------------------------------------------------------------------

@pytest.fixture
def s3_bucket(shards, monkeypatch):
    """A moto S3 server on loopback with the shard directory uploaded to s3://shards/synth/."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    import fsspec
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    # what FSSPEC_S3_ENDPOINT_URL sets when exported before the run starts
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="shards")
    for path in Path(shards).iterdir():
        client.upload_file(str(path), "shards", f"synth/{path.name}")
    fsspec.filesystem("s3").invalidate_cache()
    yield client
    server.stop()


def test_s3_shards_give_the_same_batches_as_disk(shards, s3_bucket):
    _, local = _epoch(str(shards))
    loader, remote = _epoch("s3://shards/synth")
    assert remote == local and loader.counters["missing_records"] == 0


def test_a_shard_missing_from_the_bucket_is_skipped_and_counted(shards, s3_bucket, caplog):
    s3_bucket.delete_object(Bucket="shards", Key="synth/train-000002.tar")
    with caplog.at_level(logging.WARNING, logger="foundation.data"):
        loader, remote = _epoch("s3://shards/synth")
    got = {i for ids, _, _ in remote for i in ids}
    assert len(got) == 20 and loader.counters["missing_records"] == 5
    assert loader.counters["unreachable_shards"] == 1 and "train-000002.tar" in caplog.text


# -- a training run over HTTP ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_pretraining_run_over_http_reports_what_a_lost_shard_cost(shards, http_server, tmp_path):
    import json
    import os
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[2]
    http_server.missing.add("train-000001.tar")
    config = {"model": str(root / "configs/model/tiny.yaml"), "max_steps": 3, "cache_dir": str(tmp_path / "cache"),
              "run_dir": str(tmp_path / "run"), "loader": {"max_atoms": 40, "retry_backoff_s": 0.05, "retries": 2},
              "datasets": {"synth": {"shards": http_server.url}},
              "tasks": [{"name": "energy", "target": "energy"}],
              "distributed": {"device": "cpu"}, "eval": {"every": 3}, "log": {"progress": False}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    proc = subprocess.run([sys.executable, str(root / "launch/pretrain.py"), "--config", str(tmp_path / "config.yaml")],
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300, cwd=root)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    data = json.loads((tmp_path / "run/summary.json").read_text())["data"]
    assert data["unreachable_shards"] >= 1 and data["missing_records"] >= 10 and data["missing_records"] % 10 == 0
    assert "records missing from" in out and "train-000001.tar" in out
