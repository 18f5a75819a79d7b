"""`Reject`: what a reader or the validator emits instead of a `Crystal` for a bad record.

Nothing is lost silently: every record read becomes either a `Crystal` (kept) or a `Reject`
(written to `rejects.jsonl` with its id and reason), so read = written + rejected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Reject"]


@dataclass(frozen=True)
class Reject:
    id: str  # the record's id as the native file names it (or its position, "#17", if it has none)
    source: str  # database / dataset name
    reason: str  # one human sentence: what is wrong, with the offending value
    path: str = ""  # the file it came from

    def to_json(self) -> dict:
        return asdict(self)
