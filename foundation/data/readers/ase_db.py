"""ASE databases (`.db`, `.json`) and trajectories (`.traj`, or a directory of them, as OC20 ships
its DFT relaxations).

An ASE `.traj` file is ASE's own "ulm" binary format (a header, then per-frame numpy arrays and
JSON-encoded dicts, read with `ase.io.ulm`), **not a pickle**: reading one never runs code from the
file (constraints are rebuilt only from `ase.constraints`' own classes), so no restricted
unpickler is needed here. `.db` (SQLite) and `.json` databases are read with
`ase.db.connect`, which is also pickle-free.

Per frame: `energy` (eV), `forces` (eV/Å) and `stress` (ASE: eV/Å^3, tensile positive -> GPa)
from the attached calculator (`ase_labels.atoms_labels`). Forces are the raw stored values, as
OC20's LMDBs hold them: fixed atoms keep their DFT forces (`atoms.get_forces()` would zero them
through the `FixAtoms` constraint; mask with `arrays["fixed"]` when training). `tags` (OC20:
0 subsurface, 1 surface, 2 adsorbate) and `FixAtoms` -> `arrays["tags"]`, `arrays["fixed"]`
(done by `Crystal.from_ase`).
For database rows, numeric `key_value_pairs` become targets too (renamed by `KEY_ALIASES` where the
canonical name is known, e.g. `gap` -> `band_gap`; kept as-is otherwise). Note: the 25 OC20
trajectories in `../shared/data/oc20/trajectories` carry all-zero tags (so no `tags` array), but a
`FixAtoms` constraint (16-129 atoms of the slab) in every frame.

Relaxation frames are highly correlated: `frames="first_last"` (or "first", "last") and `every=k`
(every k-th frame, the last one always kept) thin them. Ids are `<file stem>:<frame index in the
file>`, so a thinned read keeps the same ids as a full one.

Per-system energy references (`energy_reference="relaxed"`, trajectories only): each frame's
`energy` becomes E(frame) − E(the trajectory's last, relaxed frame), the energy above the relaxed
end point, and `energy_total` keeps E. Why: the total energy of an OC20 slab is Σ over its ~50-200
atoms of element energies, and the 25 sample systems share almost no metal (40 elements, 20 train
systems), so no per-element fit can predict the total energy of an unseen system: the references
missed every validation system by ~100 eV and the head could not learn. The energy relative to the
system's relaxed state is what a relaxation needs, is learnable from geometry, and leaves forces
(−dE/dx) unchanged, since the reference is a constant of the system. OC20's own S2EF energies are
referenced per system too (adsorption energies: minus the clean slab and gas-phase references),
which the trajectories here cannot give: their clean-slab energies are not in the sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from foundation.data.readers.ase_labels import LabelConvention, atoms_labels
from foundation.data.readers.extxyz import frame_to_crystal
from foundation.data.records import Reject
from foundation.data.targets import KEY_ALIASES

__all__ = ["read_ase", "select_frames", "KEY_ALIASES"]

_ID_KEYS = ("uid", "name", "structure_id", "sid")


def select_frames(n_frames: int, frames: str = "all", every: int = 1) -> list[int]:
    """Indices of the frames to read from a trajectory of `n_frames` (sorted, unique)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if n_frames == 0:
        return []
    match frames:
        case "all":
            chosen = list(range(0, n_frames, every))
            if chosen[-1] != n_frames - 1:
                chosen.append(n_frames - 1)  # the relaxed end point is the most useful frame
            return chosen
        case "first_last":
            return sorted({0, n_frames - 1})
        case "first":
            return [0]
        case "last":
            return [n_frames - 1]
    raise ValueError(f"frames must be 'all', 'first_last', 'first' or 'last', got {frames!r}")


def _default_source(path: Path) -> str:
    folder = path if path.is_dir() else path.parent
    return folder.parent.name if folder.name == "trajectories" else folder.name


ENERGY_REFERENCES = ("none", "relaxed")


def _read_traj(path: Path, source: str, frames: str, every: int, energy_reference: str = "none") -> Iterator:
    from ase.io import Trajectory

    try:
        trajectory = Trajectory(str(path), "r")
        n_frames = len(trajectory)
    except Exception as error:
        yield Reject(path.stem, source, f"cannot open trajectory: {type(error).__name__}: {error}",
                     str(path))
        return
    with trajectory:
        reference = None
        if energy_reference == "relaxed":
            try:
                reference = float(atoms_labels(trajectory[n_frames - 1])["energy"])
            except Exception as error:  # no relaxed energy: none of this system's frames is usable
                reason = (f"energy_reference='relaxed' needs the last frame's energy: "
                          f"{type(error).__name__}: {error}")
                for index in select_frames(n_frames, frames, every):
                    yield Reject(f"{path.stem}:{index}", source, reason, str(path))
                return
        for index in select_frames(n_frames, frames, every):
            frame_id = f"{path.stem}:{index}"
            try:
                atoms = trajectory[index]
                crystal = frame_to_crystal(atoms, frame_id, source, LabelConvention())
                if reference is not None and "energy" in crystal.targets:
                    crystal.targets["energy_total"] = crystal.targets["energy"]
                    crystal.targets["energy"] = crystal.targets["energy"] - reference
                yield crystal
            except Exception as error:  # one bad frame must not end the file
                yield Reject(frame_id, source, f"{type(error).__name__}: {error}", str(path))


def _row_targets(row, atoms) -> dict:
    targets = atoms_labels(atoms)
    for key, value in row.key_value_pairs.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            continue  # strings are metadata, not labels
        name = KEY_ALIASES.get(key, key)
        if name in ("energy", "forces", "stress") or key in _ID_KEYS:
            continue  # the calculator's values are the labels; ids are not targets
        targets[name] = float(value)
    return targets


def _read_db(path: Path, source: str, frames: str, every: int) -> Iterator:
    import ase.db

    try:
        database = ase.db.connect(str(path))
        rows = list(database.select())  # row objects are light: arrays decode on access
    except Exception as error:
        reason = f"cannot open ASE database: {type(error).__name__}: {error}"
        yield Reject(path.stem, source, reason, str(path))
        return
    for index in select_frames(len(rows), frames, every):
        row = rows[index]
        frame_id = f"{path.stem}:{row.id}"
        try:
            native = next((row.key_value_pairs[k] for k in _ID_KEYS if k in row.key_value_pairs),
                          None)
            if native is not None:
                frame_id = str(native)
            atoms = row.toatoms()
            crystal = frame_to_crystal(atoms, frame_id, source, LabelConvention())
            crystal.targets = _row_targets(row, atoms)
            yield crystal
        except Exception as error:  # one bad row must not end the database
            yield Reject(frame_id, source, f"{type(error).__name__}: {error}", str(path))


def read_ase(path, source: str | None = None, frames: str = "all", every: int = 1,
             energy_reference: str = "none", **options) -> Iterator:
    """Read an ASE database, trajectory or directory of trajectories as `Crystal`s / `Reject`s.

    Args:
        path: a `.db`/`.json` ASE database, a `.traj` file, or a directory of `.traj` files
            (read in sorted name order).
        source: default the folder's name, or its parent's when the folder is `trajectories`
            (`../shared/data/oc20/trajectories` -> "oc20").
        frames: "all" | "first_last" | "first" | "last" per trajectory / database.
        every: keep every k-th frame (with "all"; the last frame is always kept).
        energy_reference: "none" (total energies) or "relaxed" (trajectories: each frame's energy
            minus its trajectory's last frame's; see the module docstring).
    """
    if options:
        raise ValueError(f"read_ase: unknown options {sorted(options)}")
    if energy_reference not in ENERGY_REFERENCES:
        raise ValueError(f"read_ase: energy_reference must be one of {ENERGY_REFERENCES}, got {energy_reference!r}")
    path = Path(path)
    source = source or _default_source(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".traj")
        if not files:
            raise ValueError(f"{path}: directory holds no .traj files")
        for file in files:
            yield from _read_traj(file, source, frames, every, energy_reference)
        return
    match path.suffix:
        case ".traj":
            yield from _read_traj(path, source, frames, every, energy_reference)
        case ".db" | ".json":
            if energy_reference != "none":
                raise ValueError(f"{path}: energy_reference={energy_reference!r} needs trajectories (.traj)")
            yield from _read_db(path, source, frames, every)
        case _:
            raise ValueError(f"{path}: expected a .traj, .db or .json file or a directory of .traj")
