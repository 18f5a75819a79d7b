"""A lost rank ends the run in bounded time instead of hanging it: heartbeats through the rendezvous store.

Why not the collective timeout alone: a rank blocked in a gloo or NCCL collective whose peer was
killed (its node lost, OOM-killed, pre-empted without warning) can wait for the whole process-group
timeout (30 minutes by default; measured here: two loopback nodes, one killed, the other still
waiting 90 s later), and that timeout cannot be short, because legitimate waits are long (rank 0
builds the shards or scores the export while the others wait in a barrier).

How: every rank adds 1 to its own counter in the store every `interval` seconds from a daemon
thread, which keeps beating while the main thread computes or waits in a collective. Each rank
watches one other (the next in a ring, so the store sees O(world size) operations per interval, not
O(world size²)); a counter that has not moved for `timeout` seconds (by the watcher's own clock:
no clock agreement between nodes is needed) means that rank is gone. The watcher writes a verdict
into the store, which every other rank polls, so all ranks stop with the same message naming the
lost rank and its host, then exit with status `EXIT_LOST_RANK` (75, EX_TEMPFAIL: worth a retry;
the checkpoints written before are sealed and valid, and the same command resumes from them).
A store that stays unreachable for `timeout` seconds means the master node (which hosts it) is lost.

The process must exit with `os._exit`: the main thread may be inside a C++ collective that no
Python exception can interrupt. A rank that finishes normally marks itself done and stops beating
(`stop`), so its peers, which leave the run within milliseconds of it, are not alarmed; a peer still
running `timeout` seconds after a rank finished is reported as such (a collective mismatch).

The client is a second connection to the launcher's store (MASTER_ADDR:MASTER_PORT: the torchrun
agent's store, or rank 0's under the DeepSpeed launcher), made with torch's own TCPStore.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
import threading
import time

import torch

__all__ = ["Heartbeat", "LostRankError", "EXIT_LOST_RANK", "looks_distributed"]

log = logging.getLogger("foundation.train")

EXIT_LOST_RANK = 75
_PREFIX = "foundation_heartbeat"


class LostRankError(RuntimeError):
    """A collective failed because a rank left the run; the message names it."""


def looks_distributed(exc: BaseException) -> bool:
    """True for the errors a collective raises when a peer disappears (gloo: "Connection reset by
    peer", "Connection closed by peer"; torch's DistError family)."""
    if isinstance(exc, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(k in text for k in ("gloo", "Gloo", "NCCL", "Connection reset",
                                                                      "Connection closed", "Broken pipe"))


class Heartbeat:
    """Start with `start()` after the process group exists; `stop()` before it is destroyed."""

    def __init__(self, rank: int, world_size: int, timeout_s: float, interval_s: float | None = None,
                 host: str | None = None, port: int | None = None):
        self.rank, self.world_size, self.timeout = rank, world_size, float(timeout_s)
        self.interval = float(interval_s) if interval_s else max(0.2, min(5.0, self.timeout / 6))
        self.host = host or os.environ["MASTER_ADDR"]
        self.port = int(port or os.environ["MASTER_PORT"])
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted group starts afresh
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
        self.prefix = f"{_PREFIX}/{run_id}/{attempt}"
        self.watched = (rank + 1) % world_size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store = None

    def _key(self, what: str, rank: int | None = None) -> str:
        return f"{self.prefix}/{what}" + ("" if rank is None else f"/{rank}")

    def start(self) -> "Heartbeat":
        if self.world_size < 2 or self.timeout <= 0:
            return self
        self._store = torch.distributed.TCPStore(
            self.host, self.port, is_master=False, timeout=datetime.timedelta(seconds=max(self.interval, 1.0)),
            wait_for_workers=False)
        self._store.set(self._key("host", self.rank), socket.gethostname())
        self._store.add(self._key("beat", self.rank), 1)
        self._thread = threading.Thread(target=self._run, name="foundation-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """This rank leaves the run normally: say so, stop beating."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=2 * self.interval + 5)
        self._thread = None
        try:
            self._store.set(self._key("done", self.rank), "1")
        except Exception:  # the store's host may already have left: nothing to tell
            pass

    def diagnose(self, wait_s: float | None = None) -> str | None:
        """After a collective failed: which rank left? Every live rank keeps beating (this thread
        runs on), so a rank whose counter does not move for 3 intervals is gone. None: all alive."""
        if self._store is None:
            return None
        others = [r for r in range(self.world_size) if r != self.rank]

        def read() -> dict[int, int]:
            return {r: self._store.add(self._key("beat", r), 0) for r in others}

        try:
            if self._store.check([self._key("verdict")]):
                return self._store.get(self._key("verdict")).decode()
            first = read()
            deadline = time.monotonic() + (wait_s if wait_s is not None else min(self.timeout, 3 * self.interval + 1))
            silent = set(others)
            while time.monotonic() < deadline and silent:
                time.sleep(self.interval / 2)
                now = read()
                silent = {r for r in silent if now[r] == first[r]}
        except Exception as exc:
            return (f"the rendezvous store at {self.host}:{self.port} (on the master node, rank 0's) does not "
                    f"answer ({type(exc).__name__}): the master node is lost")
        if not silent:
            return None
        lost = min(silent)
        done = self._store.check([self._key("done", lost)])
        hosts = []
        for r in sorted(silent):
            try:
                hosts.append(f"{r} (host {self._store.get(self._key('host', r)).decode()})")
            except Exception:
                hosts.append(str(r))
        verb = "finished its run while this rank was still in it" if done else "has stopped (killed, crashed or its node is down)"
        return f"rank{'s' if len(silent) > 1 else ''} {', '.join(hosts)} {verb}"

    # -- the watching thread ------------------------------------------------------------------
    def _run(self) -> None:
        last_value, last_change = -1, time.monotonic()
        store_ok = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                self._store.add(self._key("beat", self.rank), 1)
                if self._store.check([self._key("verdict")]):
                    message = self._store.get(self._key("verdict")).decode()
                    self._die(f"{message} (reported by a peer; this is rank {self.rank})")
                value = self._store.add(self._key("beat", self.watched), 0)
                store_ok = now
            except Exception as exc:  # the store (on the master node) did not answer
                if self._stop.is_set():
                    return
                if now - store_ok > self.timeout:
                    self._die(f"the rendezvous store at {self.host}:{self.port} (on the master node, rank 0's) "
                              f"has not answered for {now - store_ok:.0f} s ({type(exc).__name__}: {exc}): "
                              f"the master node is lost")
                continue
            if value != last_value:
                last_value, last_change = value, now
                continue
            silent = now - last_change
            if silent <= self.timeout or self._stop.is_set():
                continue
            host = self._peer_host()
            if self._store.check([self._key("done", self.watched)]):
                what = (f"rank {self.watched} (host {host}) finished its run {silent:.0f} s ago while rank "
                        f"{self.rank} is still in it: the ranks ran different collectives")
            else:
                what = (f"rank {self.watched} (host {host}) has sent no heartbeat for {silent:.0f} s "
                        f"(limit {self.timeout:g} s): it was killed, crashed or its node is down")
            try:
                self._store.compare_set(self._key("verdict"), "", what)  # first verdict wins
            except Exception:
                pass
            self._die(what)

    def _peer_host(self) -> str:
        try:
            return self._store.get(self._key("host", self.watched)).decode()
        except Exception:
            return "unknown"

    def _die(self, reason: str) -> None:
        message = (f"lost rank: {reason}. Stopping rank {self.rank} now instead of waiting on it (exit "
                   f"{EXIT_LOST_RANK}); the sealed checkpoints in the run directory are valid, and the same "
                   f"command resumes from the newest.")
        log.error(message)
        if not logging.getLogger().handlers:  # logging not set up: say it anyway
            print(f"ERROR foundation.train: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_LOST_RANK)
