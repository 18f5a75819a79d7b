"""Labels a user names: native column names (`heat_all`, `e_form`, `gap pbe`) and derived labels.

`target_aliases()` maps the native label names the readers know to canonical targets
(`foundation.data.targets`); `derived_label(expr, labels)` computes a `data.derive` label:
"key", "log10(key)" or "key <op> number" (a 0/1 label, e.g. "band_gap <= 0").
"""

from __future__ import annotations

import math
import re
from typing import Any

from .targets import CSV_COLUMNS, KEY_ALIASES, MATBENCH_COLUMNS

__all__ = ["DERIVE", "derived_label", "check_derive", "target_aliases"]

# "key", "log10(key)", "key <op> number"
DERIVE = re.compile(r"^\s*(?:log10\(\s*(?P<log>[^()\s]+)\s*\)|(?P<key>[^()\s<>=]+)"
                    r"(?:\s*(?P<op><=|>=|==|<|>)\s*(?P<value>[-+0-9.eE]+))?)\s*$")


def check_derive(name: str, expr: str) -> None:
    """ValueError unless `expr` is 'key', 'log10(key)' or 'key <op> number'."""
    if DERIVE.match(expr) is None:
        raise ValueError(f"derive.{name}: {expr!r} is not 'key', 'log10(key)' or 'key <op> number'")


def derived_label(expr: str, labels: dict[str, Any]) -> float | None:
    """The value of `expr` on a record's `labels`; None when its key is missing, not a finite
    number, or not > 0 under log10."""
    m = DERIVE.match(expr)
    key = m["log"] or m["key"]
    value = labels.get(key)
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if m["log"]:
        return math.log10(value) if value > 0 else None
    if m["op"] is None:
        return float(value)
    bound = float(m["value"])
    ops = {"<": value < bound, "<=": value <= bound, ">": value > bound, ">=": value >= bound, "==": value == bound}
    return float(ops[m["op"]])


def target_aliases() -> dict[str, str]:
    """Native label names the readers map to canonical targets (heat_all, e_form, gap pbe, gap)."""
    return {**KEY_ALIASES, **CSV_COLUMNS, **MATBENCH_COLUMNS}
