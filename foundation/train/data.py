"""Training-side data plumbing: an endless batch stream over loader epochs, with a resumable position.

The loader (`foundation.data.shards.stream.build_loader`) yields one epoch for one rank with the same
number of batches on every rank; this stream chains epochs so every rank rolls over together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["EpochStream"]


class EpochStream:
    """`next()` gives the next training batch of this rank; `state_dict()` = (epoch, index).

    `make(epoch, skip)` returns that epoch's batches for this rank starting after `skip` batches
    (a loader that cannot skip cheaply may draw and drop them: the batches are deterministic in
    the epoch, so the resumed sequence is the same either way).
    """

    def __init__(self, make: Callable[[int, int], Iterable], epoch: int = 0, index: int = 0,
                 static: dict[str, Any] | None = None):
        self.make = make
        self.epoch, self.index = epoch, index
        self.static = dict(static or {})  # saved with the position (world size, workers, seed)
        self.loader = None  # the loader behind `make`, when the caller keeps it here
        self._it: Iterator | None = None

    def __iter__(self):
        return self

    def __next__(self):
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.make(self.epoch, self.index))
            batch = next(self._it, None)
            if batch is not None:
                self.index += 1
                return batch
            if self.index == 0:
                break
            self.epoch, self.index, self._it = self.epoch + 1, 0, None
        raise RuntimeError(f"epoch {self.epoch} of the training data has no batch for this rank")

    def state_dict(self) -> dict[str, Any]:
        return {**self.static, "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index, self._it = int(state["epoch"]), int(state["index"]), None
