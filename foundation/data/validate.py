"""Validation of one `Crystal` before it is written to a shard.

`validate(crystal, config)` (or keywords) returns the crystal (possibly with unusable optional labels removed)
or a `Reject` whose reason names the offending value. The checks, in order:

1. at least one atom;
2. finite positions and a finite cell;
3. the cell along periodic directions: the periodic rows must be linearly independent (length,
   area or volume above `min_cell_measure` relative to the product of their lengths) and, when all
   three directions are periodic, right-handed (det > 0; a left-handed cell is rejected rather
   than silently mirrored, which would flip chirality);
4. known elements: 1 <= Z <= 118, and in `allowed_elements` when given;
5. no two atoms closer than `min_distance`, measured with periodic images (vesin), which also
   catches an atom too close to its own image in a tiny cell;
6. required labels present and finite, and atom-level labels shaped `[n_atoms, ...]`.

Non-periodic directions need nothing: their cell rows may be zero, short, or anything, because
no image is ever built along them (the neighbour graph replaces such rows for vesin). This is
what molecules (pbc all False, zero cell) and slabs with a zero or arbitrary vacuum row need.

A label that is present but not finite and was not required is removed from the returned
crystal (a NaN label is a missing label; the shard writer counts the removals per target).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .crystal import Crystal
from .graph import PairSearch
from .records import Reject
from .targets import TARGETS

__all__ = ["ValidationConfig", "validate", "min_pair_distance"]

MAX_Z = 118
SEARCH_CUTOFF = 2.0  # Å, smallest neighbour-search radius of the distance check (speed only)


@dataclass(frozen=True)
class ValidationConfig:
    min_distance: float = 0.5  # Å, closest allowed pair distance (with periodic images)
    allowed_elements: frozenset[int] | None = None  # atomic numbers accepted; None = 1..118
    required_targets: tuple[str, ...] = ()  # labels every record must carry, finite
    min_cell_measure: float = 1e-6  # periodic rows' length/area/volume over the product of their lengths

    def __post_init__(self):
        if not self.min_distance >= 0:
            raise ValueError(f"min_distance must be >= 0 Å, got {self.min_distance}")
        if self.allowed_elements is not None:
            bad = sorted(z for z in self.allowed_elements if not 1 <= int(z) <= MAX_Z)
            if bad:
                raise ValueError(f"allowed_elements holds atomic numbers outside 1..{MAX_Z}: {bad}")
            object.__setattr__(self, "allowed_elements", frozenset(int(z) for z in self.allowed_elements))
        object.__setattr__(self, "required_targets", tuple(self.required_targets))


def validate(crystal: Crystal, config: ValidationConfig | None = None, *, min_distance: float = 0.5,
             required_targets: tuple[str, ...] = (), allowed_elements=None, path: str = "",
             search: PairSearch | None = None) -> Crystal | Reject:
    """The crystal if it passes every check (see the module docstring), else a `Reject`.

    The thresholds come from `config`, or when it is None from the keywords (min_distance Å,
    required_targets, allowed_elements: atomic numbers or None for 1..118). `search`: the
    crystal's PairSearch when the caller needs neighbours too (one search serves both)."""
    if config is None:
        config = ValidationConfig(min_distance, None if allowed_elements is None else frozenset(allowed_elements),
                                  tuple(required_targets))
    for check in (_check_atoms, _check_finite, _check_cell, _check_elements, _check_arrays):
        reason = check(crystal, config)
        if reason:
            return Reject(crystal.id, crystal.source, reason, path)
    if config.min_distance > 0:
        found = min_pair_distance(crystal, config.min_distance, search)
        if found is not None:
            i, j, d = found
            return Reject(crystal.id, crystal.source,
                          f"atoms {i} (Z={crystal.numbers[i]}) and {j} (Z={crystal.numbers[j]}) are "
                          f"{d:.4g} Å apart (periodic images included), closer than "
                          f"min_distance={config.min_distance} Å", path)
    return _check_labels(crystal, config, path)


def _check_atoms(c: Crystal, config: ValidationConfig) -> str:
    return "" if c.n_atoms > 0 else "no atoms"


def _check_finite(c: Crystal, config: ValidationConfig) -> str:
    bad = ~np.isfinite(c.positions).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return f"non-finite coordinates: atom {i} at {c.positions[i].tolist()} ({int(bad.sum())} atom(s))"
    if not np.isfinite(c.cell).all():
        return f"non-finite cell: {c.cell.tolist()}"
    return ""


def _check_cell(c: Crystal, config: ValidationConfig) -> str:
    rows = c.cell[c.pbc]  # [n_periodic, 3] Å
    if len(rows) == 0:
        return ""
    lengths = np.linalg.norm(rows, axis=1)
    if (lengths == 0).any():
        k = int(np.flatnonzero(c.pbc)[np.flatnonzero(lengths == 0)[0]])
        return f"periodic cell vector {k} is zero: cell {c.cell.tolist()}, pbc {c.pbc.tolist()}"
    measure = float(np.sqrt(max(np.linalg.det(rows @ rows.T), 0.0)))  # length, area or |volume|
    if measure <= config.min_cell_measure * float(np.prod(lengths)):
        return (f"singular cell along the periodic directions (measure {measure:.4g} Å^{len(rows)}): "
                f"cell {c.cell.tolist()}, pbc {c.pbc.tolist()}")
    if len(rows) == 3 and c.volume < 0:
        return f"negative cell volume {c.volume:.6g} Å^3 (left-handed lattice vectors): cell {c.cell.tolist()}"
    return ""


def _check_elements(c: Crystal, config: ValidationConfig) -> str:
    unknown = (c.numbers < 1) | (c.numbers > MAX_Z)
    if unknown.any():
        return f"unknown element Z={int(c.numbers[unknown][0])} (atomic numbers must be 1..{MAX_Z})"
    if config.allowed_elements is not None:
        outside = sorted(set(c.numbers.tolist()) - config.allowed_elements)
        if outside:
            return f"element(s) Z={outside} not in the allowed set"
    return ""


def _check_arrays(c: Crystal, config: ValidationConfig) -> str:
    for name, value in c.arrays.items():
        if len(value) != c.n_atoms:
            return f"per-atom array {name!r} has {len(value)} entries for {c.n_atoms} atoms"
    return ""


def _check_labels(c: Crystal, config: ValidationConfig, path: str) -> Crystal | Reject:
    for name in config.required_targets:
        if c.targets.get(name) is None:
            return Reject(c.id, c.source, f"missing required label {name!r} (has {sorted(c.targets)})", path)
    unusable = []
    for name, value in c.targets.items():
        if value is None:
            unusable.append(name)
            continue
        array = np.asarray(value, dtype=np.float64)
        info = TARGETS.get(name)
        if info is not None and info.level == "atom" and (array.ndim < 1 or array.shape[0] != c.n_atoms):
            return Reject(c.id, c.source, f"label {name!r} has shape {array.shape}, expected "
                          f"({c.n_atoms}, ...) for {c.n_atoms} atoms", path)
        if not np.isfinite(array).all():
            if name in config.required_targets:
                shown = value if array.ndim == 0 else f"an array with {int((~np.isfinite(array)).sum())} non-finite entries"
                return Reject(c.id, c.source, f"required label {name!r} is not finite: {shown}", path)
            unusable.append(name)
    if unusable:
        return c.replace(targets={k: v for k, v in c.targets.items() if k not in unusable})
    return c


def min_pair_distance(crystal: Crystal, threshold: float,
                      search: PairSearch | None = None) -> tuple[int, int, float] | None:
    """The closest pair (i, j, distance Å) among pairs closer than `threshold`, periodic images
    included (an atom and its own image count), or None if no pair is that close. `search`: a
    PairSearch of the crystal to reuse (its radius must reach `threshold`)."""
    if search is None:
        # vesin's cell list has cells of the cutoff's size: at 0.5 Å a 1000 Å^3 cell has 8000 of them
        # (430 µs a mp2018 record); searching to 2 Å and filtering costs 110 µs (measured)
        search = PairSearch(crystal, max(float(threshold), SEARCH_CUTOFF))
    i, j, d = search.pairs(threshold)
    if len(d) == 0:
        return None
    k = int(np.argmin(d))
    return int(i[k]), int(j[k]), float(d[k])
