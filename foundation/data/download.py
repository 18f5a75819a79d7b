"""`foundation download`: public databases fetched and converted to shards in one command.

OPTIMADE databases (OQMD, Materials Project, NOMAD, Alexandria, JARVIS, or any `--base-url`) are
queried with the `optimade` package's client (paging by the server's `next` links, its retries):
every page's entries are appended to `<out>/raw/structures.jsonl` and the next page's URL saved in
`<out>/raw/state.json` after each page, so an interrupted download resumes at the page it reached
(entries written twice by a page cut off between the two writes are dropped by id). When the last
page is in, the entries are converted to crystals (a disordered or partially occupied site, a
missing lattice vector or a structure that fails validation is rejected with the reason and counted
in `rejects.jsonl`) and written as shards to `<out>/shards` (split, statistics, manifest with sha256).

Labels: an entry's provider-specific fields (`_<prefix>_<name>`) become targets when `<name>` is
one of the aliases below (OQMD's `_oqmd_delta_e` is a formation energy per atom, `_oqmd_stability`
the energy above the hull); `--field _x_y=target` names others. Which fields a database serves is
its own (`/info/structures`); a field that is absent leaves its target out of that record.

Single files (a MatBench task's json.gz, an OC20/OC22 archive) are fetched by `download_file`:
resumed from the bytes already on disk by an HTTP range request, and refused when their MD5 or
sha256 differs from the published one (the file is kept as `*.bad`, never converted).

Without network every command fails within seconds, naming the host it could not reach.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from .crystal import Crystal
from .public import MATBENCH_TASKS, OC_ARCHIVES, OPTIMADE_DATABASES, TARGET_ALIASES
from .readers import read
from .records import Reject

__all__ = ["OPTIMADE_DATABASES", "MATBENCH_TASKS", "OC_ARCHIVES", "archive_records", "DownloadError", "ChecksumMismatch", "check_reachable", "download_file",
           "download_optimade", "optimade_records", "TARGET_ALIASES"]

log = logging.getLogger("foundation.data")

_ALIAS = {alias: target for target, aliases in TARGET_ALIASES.items() for alias in aliases}


class DownloadError(RuntimeError):
    """A download that cannot go on: unreachable host, a server error after the retries."""


class ChecksumMismatch(DownloadError):
    """A file whose MD5/sha256 differs from the published value (refused, kept as *.bad)."""


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """A TCP connection to the URL's host within `timeout` s, or a DownloadError naming the host."""
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        raise DownloadError(f"{url!r} is not a URL with a host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise DownloadError(f"cannot reach {host}:{port} ({type(exc).__name__}: {exc}); "
                            "check the network or the URL") from None


# -- single files -----------------------------------------------------------------------------------

def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(url: str, dest: str | Path, md5: str | None = None, sha256: str | None = None,
                  retries: int = 4, backoff_s: float = 1.0, timeout: float = 60.0) -> Path:
    """`url` to `dest`, resumable: bytes go to `dest.part`, and a new call (or a retry after a
    dropped connection) continues from its size with a range request. The finished file is checked
    against `md5`/`sha256`; a mismatch renames it `*.bad` and raises ChecksumMismatch."""
    import requests

    dest = Path(dest)
    if dest.is_file() and _matches(dest, md5, sha256):
        return dest
    check_reachable(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(30.0, backoff_s * 2 ** (attempt - 1)))
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
                if response.status_code == 416:  # nothing left to send: the part is whole
                    break
                if response.status_code not in (200, 206):
                    error = f"HTTP {response.status_code}"
                    if response.status_code in (401, 403, 404, 410):
                        raise DownloadError(f"{url}: {error}")
                    continue
                mode = "ab" if response.status_code == 206 else "wb"  # 200: the server ignored the range
                if have and mode == "ab":
                    log.info("resuming %s at byte %d", url, have)
                with open(part, mode) as fh:
                    for chunk in response.iter_content(1 << 16):
                        fh.write(chunk)
                expected = response.headers.get("Content-Range", "").rpartition("/")[2] or \
                    response.headers.get("Content-Length")
            if expected and expected.isdigit() and part.stat().st_size < int(expected):
                error = f"transfer ended at byte {part.stat().st_size} of {expected}"
                continue
            break
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("%s: %s; retrying (%d of %d) from byte %d", url, error, attempt + 1, retries,
                        part.stat().st_size if part.exists() else 0)
    else:
        raise DownloadError(f"{url}: {error} after {retries + 1} attempts (partial file kept: {part})")
    if not _matches(part, md5, sha256):
        bad = dest.with_name(dest.name + ".bad")
        os.replace(part, bad)
        raise ChecksumMismatch(f"{url}: checksum differs from the published one ({'md5 ' + md5 if md5 else ''}"
                               f"{'sha256 ' + sha256 if sha256 else ''}); refused, kept as {bad}")
    os.replace(part, dest)
    return dest


def _matches(path: Path, md5: str | None, sha256: str | None) -> bool:
    return (md5 is None or _digest(path, "md5") == md5.lower()) and \
        (sha256 is None or _digest(path, "sha256") == sha256.lower())


# -- OPTIMADE ---------------------------------------------------------------------------------------

@dataclass
class OptimadeState:
    base_url: str
    filter: str
    next: str | None = None  # the next page's URL; None before the first page
    pages: int = 0
    entries: int = 0
    done: bool = False
    started: float = field(default_factory=time.time)

    @classmethod
    def load(cls, path: Path) -> "OptimadeState | None":
        return cls(**json.loads(path.read_text())) if path.is_file() else None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        os.replace(tmp, path)


def _next_link(page: dict) -> str | None:
    link = (page.get("links") or {}).get("next")
    if isinstance(link, dict):
        link = link.get("href")
    return link or None


def download_optimade(base_url: str, out: str | Path, filter: str = "", limit: int | None = None,
                      page_limit: int | None = None, max_pages: int | None = None) -> OptimadeState:
    """Entries of `base_url`'s structures matching `filter` appended to `<out>/raw/structures.jsonl`,
    page by page, resumable (`<out>/raw/state.json`). `limit`: at most this many entries in all;
    `max_pages`: stop after this many pages in this call (the next call continues)."""
    from optimade.client import OptimadeClient

    raw = Path(out) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    state_path, entries_path = raw / "state.json", raw / "structures.jsonl"
    state = OptimadeState.load(state_path)
    if state is not None and (state.base_url, state.filter) != (base_url, filter):
        raise DownloadError(f"{raw} holds a download of {state.base_url} with filter {state.filter!r}; "
                            f"use another --out for {base_url} with {filter!r}")
    state = state or OptimadeState(base_url, filter)
    if state.done:
        return state
    check_reachable(base_url)
    budget = None if limit is None else max(0, limit - state.entries)
    if budget == 0:
        state.done = True
        state.save(state_path)
        return state

    class _Stop(Exception):
        pass

    def on_page(url: str, page: dict) -> dict | None:
        data = page.get("data") or []
        if budget is not None:
            data = data[: max(0, budget - (state.entries - start_entries))]
        with open(entries_path, "a") as fh:
            for entry in data:
                fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        state.pages += 1
        state.entries += len(data)
        state.next = _next_link(page)
        finished = state.next is None or (budget is not None and state.entries - start_entries >= budget)
        state.done = finished
        state.save(state_path)
        log.info("%s: page %d, %d entries so far", base_url, state.pages, state.entries)
        if finished or (max_pages is not None and state.pages - start_pages >= max_pages):
            raise _Stop
        return None

    start_entries, start_pages = state.entries, state.pages
    client = OptimadeClient(base_urls=[base_url], max_results_per_provider=0 if limit is None else limit,
                            silent=True, use_async=False, callbacks=[on_page], max_attempts=5)
    try:
        client.get_one(endpoint="structures", filter=filter, base_url=base_url, page_limit=page_limit,
                       override_url=state.next)
    except _Stop:
        pass
    except Exception as exc:  # the client wraps callback exceptions and server errors alike
        if not _caused_by(exc, _Stop):
            raise DownloadError(f"{base_url}: {type(exc).__name__}: {exc} (resume with the same command: "
                                f"{state.pages} pages, {state.entries} entries kept)") from exc
    if state.next is None and not state.done:
        state.done = True
        state.save(state_path)
    return state


def _caused_by(exc: BaseException, kind: type) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind) or kind.__name__ in str(type(exc).__name__):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _crystal(entry: dict, source: str, fields: dict[str, str]) -> Crystal | Reject:
    """One OPTIMADE structure entry as a Crystal (or a Reject saying why not)."""
    ident = str(entry.get("id", "?"))
    attrs = entry.get("attributes") or {}
    try:
        species = {s["name"]: s for s in attrs.get("species") or []}
        symbols = []
        for name in attrs["species_at_sites"]:
            spec = species.get(name)
            if spec is None:
                return Reject(ident, source, f"site species {name!r} is not in 'species'")
            chem = spec.get("chemical_symbols") or []
            if len(chem) != 1 or chem[0] in ("X", "vacancy") or any(c != 1.0 for c in spec.get("concentration", [1.0])):
                return Reject(ident, source, f"disordered or partially occupied site {name!r} ({chem}): not a crystal "
                                             "this model can read")
            symbols.append(chem[0])
        lattice = attrs.get("lattice_vectors")
        dims = attrs.get("dimension_types") or [1, 1, 1]
        if lattice is None or any(v is None or any(x is None for x in v) for v in lattice):
            return Reject(ident, source, "lattice_vectors missing or unknown")
        positions = attrs["cartesian_site_positions"]
        if any(p is None or any(x is None for x in p) for p in positions):
            return Reject(ident, source, "a cartesian site position is unknown")
        from ase.data import atomic_numbers

        numbers = [atomic_numbers[s] for s in symbols]
        targets = {}
        for key, target in fields.items():
            value = attrs.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                targets[target] = float(value)
        return Crystal(numbers, np.asarray(positions, float), np.asarray(lattice, float), [bool(d) for d in dims],
                       targets, id=ident, source=source)
    except (KeyError, TypeError, ValueError) as exc:
        return Reject(ident, source, f"{type(exc).__name__}: {exc}")


def field_map(entries_path: Path, explicit: dict[str, str] | None = None) -> dict[str, str]:
    """{provider field: target}: the fields of the first entries whose name after `_<prefix>_` is an
    alias in TARGET_ALIASES, then the explicit ones (which win)."""
    found: dict[str, str] = {}
    with open(entries_path) as fh:
        for i, line in enumerate(fh):
            if i >= 200:
                break
            for key in (json.loads(line).get("attributes") or {}):
                if key.startswith("_") and key.count("_") >= 2:
                    name = key[1:].split("_", 1)[1]
                    if name in _ALIAS:
                        found[key] = _ALIAS[name]
    found.update(explicit or {})
    return found


def optimade_records(out: str | Path, source: str, fields: dict[str, str]) -> Iterator[Crystal | Reject]:
    """The downloaded entries as crystals, each id once (a page written twice by an interruption)."""
    seen: set[str] = set()
    with open(Path(out) / "raw" / "structures.jsonl") as fh:
        for line in fh:
            entry = json.loads(line)
            ident = str(entry.get("id"))
            if ident in seen:
                continue
            seen.add(ident)
            yield _crystal(entry, source, fields)


def archive_records(path: str | Path, layout: str, source: str, work: str | Path) -> Iterator[Crystal | Reject]:
    """The frames of an Open Catalyst archive, member by member (the archive is streamed, never
    unpacked whole: S2EF-All is 1.1 TB uncompressed). "s2ef": each `N.extxyz.xz` is decompressed to
    `work/N.extxyz`, read (ids `N:<frame>`, so the frames of one file share a prefix: shard with
    group-by-prefix to keep a trajectory chunk in one split), and removed. "lmdb": each `.lmdb` is
    written to `work`, read with the restricted unpickler, and removed. The energies are the archive's
    (S2EF: adsorption-referenced as released; the `.txt.xz` reference energies are not applied)."""
    import lzma
    import shutil
    import tarfile

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            name = Path(member.name).name
            if not member.isfile():
                continue
            if layout == "s2ef" and name.endswith(".extxyz.xz"):
                target = work / name[: -len(".xz")]
                with tar.extractfile(member) as src, lzma.open(src) as xz, open(target, "wb") as out:
                    shutil.copyfileobj(xz, out)
                options = {"source": source}
                fmt = "extxyz"
            elif layout == "lmdb" and name.endswith(".lmdb"):
                target = work / f"{Path(member.name).parent.name}_{name}"
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                options = {"source": source}
                fmt = "oc20_lmdb"
            else:
                continue
            try:
                yield from read(str(target), format=fmt, **options)
            finally:
                target.unlink(missing_ok=True)


def describe(state: OptimadeState) -> dict[str, Any]:
    return {"base_url": state.base_url, "filter": state.filter, "pages": state.pages, "entries": state.entries,
            "complete": state.done}
