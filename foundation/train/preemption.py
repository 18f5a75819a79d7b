"""Pre-emption: a scheduler's warning signal becomes a checkpoint and a clean exit (status 0).

SLURM sends SIGTERM when it pre-empts or ends a job (then SIGKILL after `KillWait`, 30 s by
default) and, with `--signal=USR1@300`, SIGUSR1 that many seconds before; torchrun forwards the
SIGTERM it receives to its workers. The handler only records the signal (nothing else is safe in a
handler); the loop all-reduces the flag with its per-step statistics, so every rank sees it at the
same optimiser step, even if only one rank got the signal; then every rank writes the checkpoint of
that step, no export and no final evaluation are made, and the run returns with `stopped_by`
"preempted". The requeued job (the same command) resumes from that checkpoint exactly.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["Preemption", "check_signal_names"]


def check_signal_names(names) -> None:
    for name in names:
        if not isinstance(name, str) or not name.startswith("SIG") or not hasattr(signal, name):
            raise ValueError(f"unknown signal {name!r} (e.g. SIGTERM, SIGUSR1)")
        if name in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"{name} cannot be caught")


class Preemption:
    """`with Preemption(["SIGTERM", "SIGUSR1"]) as p:` ... `p.requested` is the first signal's name or None."""

    def __init__(self, names=("SIGTERM", "SIGUSR1")):
        check_signal_names(names)
        self.names = list(names)
        self.requested: str | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum).name

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread only
            for name in self.names:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
