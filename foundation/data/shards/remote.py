"""Shards wherever they live: local paths, http(s)://, s3:// (and any other fsspec protocol), pipe: commands.

A shard is fetched whole into a spooled temporary file (memory up to `spool_mb`, disk beyond), its
sha256 checked against the manifest's, then read. Why whole: a tar stream cut off mid-transfer
would otherwise be decoded up to the cut and the rest lost; fetched whole, a dropped connection is
resumed from the byte it reached (an HTTP/S3 range request) and a shard is either read completely
and verified or not at all. Failures are retried with exponential backoff; a shard still
unreachable, or failing its checksum, after `retries` attempts raises `ShardUnavailable`, which the
loader turns into a skipped shard: logged with its URL and the reason, its records counted as
missing (`loader.counters`, and the run's summary). fsspec (with s3fs for s3://) does the protocol
work; `pipe:` commands go through webdataset's `gopen` (no resume there: a retry reruns the command).

Credentials and endpoints are fsspec's: `AWS_*` variables or `FSSPEC_S3_ENDPOINT_URL` for an
S3-compatible store (MinIO, Ceph, a moto server in the tests).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import IO

__all__ = ["FetchPolicy", "ShardUnavailable", "fetch", "is_remote", "DEFAULT_POLICY"]

log = logging.getLogger("foundation.data")

_CHUNK = 4 << 20


@dataclass(frozen=True)
class FetchPolicy:
    retries: int = 4  # attempts after the first
    backoff_s: float = 0.5  # wait before retry k: backoff_s * 2**k (capped at 30 s)
    verify: str = "remote"  # sha256 against the manifest: "remote" shards only, "always", "never"
    spool_mb: int = 256  # a fetched shard stays in memory up to this size, then spills to a temp file

    def __post_init__(self):
        if self.retries < 0 or self.backoff_s < 0 or self.spool_mb < 0:
            raise ValueError(f"retries, backoff_s and spool_mb must be >= 0, got {self}")
        if self.verify not in ("remote", "always", "never"):
            raise ValueError(f"verify must be 'remote', 'always' or 'never', got {self.verify!r}")


DEFAULT_POLICY = FetchPolicy()


class ShardUnavailable(OSError):
    """A shard that could not be fetched or verified after every retry; `kind`: unreachable | checksum."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or ("://" in url and not url.startswith("file://"))


def _local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def _copy_from(url: str, out: IO[bytes]) -> None:
    """Append the bytes of `url` from `out.tell()` on (a range request where the protocol has them)."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        out.seek(0)
        out.truncate()
        with gopen(url, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                out.write(chunk)
        return
    import fsspec

    offset = out.tell()
    with fsspec.open(url, "rb") as stream:
        if offset:
            try:
                stream.seek(offset)
            except (OSError, ValueError):  # no ranges: start again
                out.seek(0)
                out.truncate()
        while chunk := stream.read(_CHUNK):
            out.write(chunk)


def _sha256(stream: IO[bytes]) -> str:
    stream.seek(0)
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


def fetch(url: str, sha256: str | None = None, policy: FetchPolicy = DEFAULT_POLICY,
          counters: dict | None = None) -> IO[bytes]:
    """A readable binary file holding the whole shard at `url`, checked against `sha256` per the policy.

    `counters` (a dict) gets "fetch_retries" and "fetch_bytes" added. Raises ShardUnavailable."""
    counters = {} if counters is None else counters
    remote = is_remote(url)
    check = sha256 if (policy.verify == "always" or (policy.verify == "remote" and remote)) else None
    if not remote:
        path = _local_path(url)
        try:
            stream = open(path, "rb")
        except OSError as exc:
            raise ShardUnavailable(f"{url}: {exc.strerror or exc}", "unreachable") from exc
        if check and _sha256(stream) != check:
            stream.close()
            raise ShardUnavailable(f"{url}: sha256 differs from the manifest's", "checksum")
        return stream
    out = tempfile.SpooledTemporaryFile(max_size=policy.spool_mb << 20)
    reason, kind = "", "unreachable"
    for attempt in range(policy.retries + 1):
        if attempt:
            counters["fetch_retries"] = counters.get("fetch_retries", 0) + 1
            wait = min(30.0, policy.backoff_s * 2 ** (attempt - 1))
            log.warning("shard %s: %s; retry %d of %d in %.1f s (from byte %d)", url, reason, attempt,
                        policy.retries, wait, out.tell())
            time.sleep(wait)
        try:
            _copy_from(url, out)
        except Exception as exc:  # noqa: BLE001 -- network errors come in many types; all retried
            # (a 404 too: fsspec reports a refused connection as FileNotFoundError as well)
            cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
            reason, kind = f"{type(exc).__name__}: {exc}{cause}", "unreachable"
            continue
        size = out.tell()
        if check and _sha256(out) != check:
            reason, kind = f"sha256 of the {size} bytes fetched differs from the manifest's", "checksum"
            out.seek(0)
            out.truncate()
            continue
        counters["fetch_bytes"] = counters.get("fetch_bytes", 0) + size
        out.seek(0)
        return out
    out.close()
    raise ShardUnavailable(f"{url}: {reason} (after {policy.retries + 1} attempts)", kind)
