"""Label statistics and per-element reference energies, accumulated while sharding.

For every scalar regression label y of a record with n atoms and element counts c_Z, the
accumulator keeps the sufficient statistics of the least-squares system in the composition
fractions b = c / n, with z = y / n for an extensive label (eV per cell) and z = y for an
intensive one (eV/atom). From them:

- element references (energy labels only, `REFERENCE_TARGETS`): ref minimising
  Σ (y − c·ref)² for an extensive label and Σ (y − c·ref / n)² for an intensive one, plus a ridge
  λ·s·|ref − z̄|² that pulls every reference towards the mean per-atom label z̄ (s: the mean
  diagonal of the normal matrix), solved with numpy lstsq; an element never seen in the train
  split gets the ridge's prior z̄ itself (not 0: a val or test structure with an element the
  train split lacks is then predicted at the mean per-atom energy, not at 0 eV for that atom).
  λ is chosen on the val split, from its own sums (`label_sums_val`): the value of `RIDGES` with
  the least held-out per-atom squared error Σ (z − b·ref)² among those whose references all lie
  within the range of the train records' per-atom labels (`_physical`; the strongest ridge, whose
  references approach z̄, always does). An unregularised solve on a few
  hundred records (or on fewer records than elements) fits noise: the MP sample gave Si −24.6 and
  Fe +39.0 eV/atom, and the 25 OC20 systems references that missed every other system by ~100 eV,
  so the energy heads could not learn. Without held-out records the ridge is `RIDGE` when there are
  at least `MIN_RECORDS_PER_ELEMENT` records per element and `RIDGE_FEW` (strong) otherwise;
- residual statistics, the per-atom normalisation the heads use (foundation/model/heads.py):
  mean and std of (y − c·ref) / n (extensive) or y − c·ref / n (intensive), ref = 0 when the
  label has no references.

The sums are stored in the manifest, so the statistics of several shard directories feeding one
task are combined exactly (`combine`) rather than averaged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..targets import target_info
from .format import read_manifest

__all__ = ["LabelAccumulator", "REFERENCE_TARGETS", "solve_references", "combine", "summarize",
           "dataset_statistics"]

REFERENCE_TARGETS = ("energy", "formation_energy", "energy_per_atom", "formation_energy_per_atom")
RIDGE = 1e-8  # relative to the mean diagonal of the normal matrix; with enough records and no val split
RIDGE_FEW = 1.0  # the same, with fewer than MIN_RECORDS_PER_ELEMENT records per element and no val split
MIN_RECORDS_PER_ELEMENT = 5
RIDGES = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # the held-out choice
N_Z = 119


class LabelAccumulator:
    """Streaming statistics of a split's labels. `add(crystal)`, then `state()` (JSON-ready)."""

    def __init__(self) -> None:
        self.moments: dict[str, list[float]] = {}  # name -> [count, sum, sum of squares] (raw values)
        self.systems: dict[str, dict[str, Any]] = {}  # scalar regression label -> LSQ sums
        self.dropped: dict[str, int] = {}  # labels removed by validation (not finite)

    def add(self, crystal) -> None:
        numbers, counts = np.unique(crystal.numbers, return_counts=True)
        n = crystal.n_atoms
        for name, value in crystal.targets.items():
            array = np.asarray(value, dtype=np.float64)
            info = target_info(name)
            m = self.moments.setdefault(name, [0.0, 0.0, 0.0])
            if info.level == "atom":  # forces: per-component moments, counted per atom
                m[0] += array.shape[0]
                m[1] += float(array.sum()) / max(array[0].size, 1)
                m[2] += float((array**2).sum()) / max(array[0].size, 1)
                continue
            m[0] += 1
            m[1] += float(array.mean())
            m[2] += float((array**2).mean())
            if array.ndim == 0 and info.kind == "regression":
                z = float(array) / n if info.extensive else float(array)
                self._add_system(name, numbers, counts / n, z, counts, float(array))

    def _add_system(self, name, numbers, b, z, counts, y) -> None:
        s = self.systems.get(name)
        if s is None:
            s = self.systems[name] = {"n": 0, "sum_z": 0.0, "sum_z2": 0.0, "min_z": math.inf, "max_z": -math.inf,
                                      "sum_b": np.zeros(N_Z), "BtB": np.zeros((N_Z, N_Z)), "Btz": np.zeros(N_Z)}
            if name in REFERENCE_TARGETS and target_info(name).extensive:
                s["CtC"], s["Cty"] = np.zeros((N_Z, N_Z)), np.zeros(N_Z)
        s["n"] += 1
        s["min_z"], s["max_z"] = min(s["min_z"], z), max(s["max_z"], z)
        s["sum_z"] += z
        s["sum_z2"] += z * z
        s["sum_b"][numbers] += b
        s["BtB"][np.ix_(numbers, numbers)] += np.outer(b, b)
        s["Btz"][numbers] += b * z
        if "CtC" in s:
            s["CtC"][np.ix_(numbers, numbers)] += np.outer(counts, counts)
            s["Cty"][numbers] += counts * y

    def state(self) -> dict[str, Any]:
        """JSON-ready: {"moments": {...}, "systems": {name: sums over the elements seen}}."""
        systems = {}
        for name, s in self.systems.items():
            zs = np.flatnonzero(s["sum_b"] > 0)
            entry = {"n": s["n"], "sum_z": s["sum_z"], "sum_z2": s["sum_z2"], "min_z": s.get("min_z"),
                     "max_z": s.get("max_z"), "elements": zs.tolist(),
                     "sum_b": s["sum_b"][zs].tolist(), "BtB": s["BtB"][np.ix_(zs, zs)].tolist(),
                     "Btz": s["Btz"][zs].tolist()}
            if "CtC" in s:
                entry["CtC"] = s["CtC"][np.ix_(zs, zs)].tolist()
                entry["Cty"] = s["Cty"][zs].tolist()
            systems[name] = entry
        return {"moments": {k: list(v) for k, v in self.moments.items()}, "systems": systems}


def _dense(entry: dict[str, Any]) -> dict[str, Any]:
    zs = np.asarray(entry["elements"], dtype=np.int64)
    out = {"n": entry["n"], "sum_z": entry["sum_z"], "sum_z2": entry["sum_z2"],
           "min_z": entry.get("min_z"), "max_z": entry.get("max_z")}
    out["sum_b"] = np.zeros(N_Z)
    out["sum_b"][zs] = entry["sum_b"]
    for key in ("BtB", "CtC"):
        if key in entry:
            out[key] = np.zeros((N_Z, N_Z))
            out[key][np.ix_(zs, zs)] = entry[key]
    for key in ("Btz", "Cty"):
        if key in entry:
            out[key] = np.zeros(N_Z)
            out[key][zs] = entry[key]
    return out


def combine(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge accumulator states (e.g. of several shard directories) into one, exactly."""
    moments: dict[str, list[float]] = {}
    systems: dict[str, dict[str, Any]] = {}
    for state in states:
        for name, m in state["moments"].items():
            acc = moments.setdefault(name, [0.0, 0.0, 0.0])
            for i in range(3):
                acc[i] += m[i]
        for name, entry in state["systems"].items():
            dense = _dense(entry)
            if name not in systems:
                systems[name] = dense
                continue
            acc = systems[name]
            for key, value in dense.items():  # same label name: same keys (CtC only for energies)
                if key in ("min_z", "max_z"):
                    pick = min if key == "min_z" else max
                    acc[key] = None if value is None or acc.get(key) is None else pick(acc[key], value)
                else:
                    acc[key] = acc[key] + value if key in acc else value
    acc = LabelAccumulator()
    acc.moments = moments
    for name, s in systems.items():
        acc.systems[name] = s
    return acc.state()


def _held_out_error(x: np.ndarray, holdout: dict[str, Any]) -> float:
    """Σ (z − b·x)² over the held-out records, from their sums (x dense [N_Z])."""
    return holdout["sum_z2"] - 2.0 * float(x @ holdout["Btz"]) + float(x @ holdout["BtB"] @ x)


PHYSICAL_MARGIN = 0.1  # of the span of the train records' per-atom labels


def _physical(refs: np.ndarray, entry: dict[str, Any]) -> bool:
    """Every reference within the per-atom labels of the train records (widened by
    PHYSICAL_MARGIN of their span): an element's energy cannot lie far above or below the
    energies of every compound it forms (MP's Fe at +39 eV/atom, above all MP compounds, is a fit
    of noise). True when the sums predate the range (no min_z / max_z)."""
    low, high = entry.get("min_z"), entry.get("max_z")
    if low is None or high is None or not math.isfinite(low) or not math.isfinite(high):
        return True
    margin = PHYSICAL_MARGIN * (high - low) + 1e-9
    return bool(np.all(refs >= low - margin) and np.all(refs <= high + margin))


def solve_references(entry: dict[str, Any], name: str, holdout: dict[str, Any] | None = None,
                     report: dict[str, Any] | None = None) -> dict[int, float]:
    """Per-element references {Z: ref} of label `name` from its stored train sums `entry`, shrunk
    towards the mean per-atom label with the ridge chosen on `holdout` (the val split's sums of the
    same label; see the module docstring). `report`, if given, receives the choice."""
    dense = _dense(entry)
    extensive = target_info(name).extensive
    matrix, rhs = (dense["CtC"], dense["Cty"]) if extensive else (dense["BtB"], dense["Btz"])
    zs = np.asarray(entry["elements"], dtype=np.int64)
    if len(zs) == 0:
        return {}
    a, b = matrix[np.ix_(zs, zs)], rhs[zs]
    scale = float(np.trace(a)) / len(zs)
    prior = dense["sum_z"] / max(dense["n"], 1)  # z̄: the mean per-atom label

    def solve(ridge: float) -> np.ndarray:
        x, *_ = np.linalg.lstsq(a + ridge * scale * np.eye(len(zs)), b + ridge * scale * prior, rcond=None)
        full = np.full(N_Z, prior)  # elements the train split lacks: the prior
        full[0] = 0.0
        full[zs] = x
        return full

    held = _dense(holdout) if holdout is not None and holdout.get("n", 0) > 0 else None
    if held is not None:
        solutions = {ridge: solve(ridge) for ridge in RIDGES}
        physical = [r for r in RIDGES if _physical(solutions[r][zs], entry)] or [RIDGES[-1]]
        errors = {ridge: _held_out_error(solutions[ridge], held) for ridge in physical}
        ridge = min(physical, key=lambda r: (errors[r], -r))  # ties: the stronger ridge
        chosen = {"ridge": ridge, "chosen_on": "val", "held_out_records": int(held["n"]),
                  "held_out_rmse_per_atom": math.sqrt(max(errors[ridge], 0.0) / held["n"]),
                  "physical_ridges": physical}
    else:
        ridge = RIDGE if entry["n"] >= MIN_RECORDS_PER_ELEMENT * len(zs) else RIDGE_FEW
        chosen = {"ridge": ridge, "chosen_on": "records per element"}
    if report is not None:
        report.update(chosen, records=int(entry["n"]), elements=len(zs))
    x = solve(ridge)
    return {z: float(x[z]) for z in range(1, N_Z)}


def summarize(state: dict[str, Any], holdout: dict[str, Any] | None = None) -> dict[str, Any]:
    """Manifest sections from an accumulator state (the train split's; `holdout`: the val
    split's, to choose the reference ridge): targets (mean, std, count, unit, level),
    element_references (and how their ridge was chosen) and residual statistics (per-atom, what
    the heads normalise with)."""
    targets = {}
    for name, (count, total, squares) in sorted(state["moments"].items()):
        info = target_info(name)
        mean = total / count if count else float("nan")
        entry = {"unit": info.unit, "level": info.level, "count": int(count)}
        if info.level == "atom":  # forces: the per-component RMS is the scale
            entry.update(mean=mean, std=math.sqrt(squares / count) if count else float("nan"), rms=True)
        else:
            entry.update(mean=mean, std=math.sqrt(max(squares / count - mean * mean, 0.0)) if count else float("nan"))
        targets[name] = entry
    references, residuals, fits = {}, {}, {}
    held = (holdout or {}).get("systems", {})
    for name, entry in sorted(state["systems"].items()):
        report: dict[str, Any] = {}
        refs = solve_references(entry, name, held.get(name), report) if name in REFERENCE_TARGETS else {}
        if refs:
            references[name], fits[name] = refs, report
        residuals[name] = residual_statistics(entry, refs)
    return {"targets": targets, "element_references": references, "element_reference_fits": fits,
            "residuals": residuals}


def residual_statistics(entry: dict[str, Any], refs: dict[int, float]) -> dict[str, float]:
    """Mean and std of the per-atom residual z − b·ref (see the module docstring)."""
    dense = _dense(entry)
    x = np.zeros(N_Z)
    for z, v in refs.items():
        x[int(z)] = v
    n = dense["n"]
    mean = (dense["sum_z"] - float(dense["sum_b"] @ x)) / n
    second = (dense["sum_z2"] - 2.0 * float(x @ dense["Btz"]) + float(x @ dense["BtB"] @ x)) / n
    return {"mean": mean, "std": math.sqrt(max(second - mean * mean, 0.0)), "count": int(n)}


def dataset_statistics(manifests, tasks=None) -> tuple[dict[str, tuple[float, float]], dict[str, dict[int, float]]]:
    """(normalization {key: (mean, std)}, element_refs {key: {Z: ref}}): the numbers that
    `foundation.train.normalization.task_statistics` turns into each task's `TaskStats`.

    `manifests`: {dataset name: manifest dict or shard directory} (or a list of them). The train
    splits' label sums are combined exactly. Without `tasks` the keys are target names; with
    `tasks` (TaskSpec-like: name, target, level, kind, datasets, forces_of) they are task names,
    each task using the datasets it names (all when it names none). Entries follow heads.py:
    per-atom residual mean/std of a scalar regression label after the element references
    (references for energy labels only); (0, component RMS) for an atom-level label such as
    forces; a force task (forces_of) or a classification task gets no entry (the model refuses
    one); a std that is 0 (one record) becomes 1.
    """


    named = manifests.items() if isinstance(manifests, dict) else enumerate(manifests)
    loaded = {name: m if isinstance(m, dict) else read_manifest(m) for name, m in named}
    if tasks is None:
        keys = {t: (t, None) for m in loaded.values() for t in m.get("label_sums", {}).get("moments", {})}
    else:
        keys = {t.name: (t.target, t) for t in tasks
                if t.kind == "regression" and getattr(t, "forces_of", None) is None}
    normalization, element_refs = {}, {}
    for key, (target, task) in sorted(keys.items()):
        chosen = [m for name, m in loaded.items()
                  if task is None or not task.datasets or name in task.datasets]
        state = combine([m["label_sums"] for m in chosen if "label_sums" in m])
        held = [m["label_sums_val"] for m in chosen if m.get("label_sums_val", {}).get("moments")]
        holdout = combine(held)["systems"].get(target) if held else None
        moments = state["moments"].get(target)
        if moments is None or moments[0] == 0:
            continue
        info = target_info(target)
        if state["systems"].get(target) is not None:
            entry = state["systems"][target]
            refs = solve_references(entry, target, holdout) if target in REFERENCE_TARGETS else {}
            stats = residual_statistics(entry, refs)
            if refs:
                element_refs[key] = refs
            mean, std = stats["mean"], stats["std"]
        elif info.level == "atom":
            mean, std = 0.0, math.sqrt(moments[2] / moments[0])
        else:  # array-valued structure label (stress, elastic tensor): over all components
            mean = moments[1] / moments[0]
            std = math.sqrt(max(moments[2] / moments[0] - mean * mean, 0.0))
        normalization[key] = (float(mean), float(std) if std > 0 and math.isfinite(std) else 1.0)
    return normalization, element_refs
