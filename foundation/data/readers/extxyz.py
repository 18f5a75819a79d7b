"""Extended XYZ reader (LiPS, ColabFit exports, the OC20 S2EF layout), streaming.

The file is split into frames by their atom-count lines and each frame is parsed by ASE's extxyz
parser (`ase.io.read(..., format="extxyz")`), so one malformed frame becomes a `Reject` and the
next frame is still read; only an unreadable atom-count line ends the file (with a `Reject` for
the rest). Labels are taken from the calculator ASE builds, `atoms.info` or `atoms.arrays`
(`ase_labels.atoms_labels`). The OC20 S2EF layout's `tags` and `move_mask` (ASE turns
`move_mask` into a `FixAtoms` constraint) become `arrays["tags"]` and
`arrays["fixed"] = ~move_mask`.

Units (measured on the sample files, `../shared/data`):
- `lips/frames.extxyz`: total energy in eV, forces in eV/Å (ΔE between the two close frames
  agrees with the force work to 0.1%).
- `oc20_format/toy_c3h8_relax.extxyz`: total energy, forces eV/Å (ΔE/work = 1.0005 over 90
  consecutive relaxation steps). Toy labels (empirical potential), not DFT.
- `colabfit/frames.extxyz` (Cu): the `energy=` key is **per atom** (about -4.05 "eV" for a 108-atom
  cell) and `stress=` (3x3, 9 values) is in **kbar with the VASP sign** (positive = compressive):
  over 302 pairs of frames related by a small homogeneous strain (|ε| ≤ 1.5%, same fractional
  coordinates), n_atoms·Δe / (V σ:Δε) has median -5.5e-4 (eV per kbar·Å^3 is 6.24e-4, with a
  negative sign: compressive convention; GPa would be 6.24e-3, eV/Å^3 would be 1).
  Its shear entries are misplaced: the file is mlearn's Cu set, whose 6-vectors are ordered
  (xx, yy, zz, xy, xz, yz), written into the 3x3 as if ordered like ASE's Voigt (xx, yy, zz, yz,
  xz, xy), so xy and yz are swapped (lower triangle only). Evidence: in the 58 frames whose cell
  is sheared in one plane only, the largest shear stress sits in the "xy" slot for all 22 yz
  shears, "yz" for all 17 xy shears, "xz" for all 19 xz shears.
  Its defaults are therefore `energy="per_atom", stress_unit="kbar", stress_sign="compressive",
  voigt_order="xx yy zz xy xz yz"` (applied to ASE's Voigt reading of the file's 3x3).
- Anything else: ASE's conventions (total energy eV, stress eV/Å^3, positive = tensile).
Output: `energy` eV (total), `forces` `[n_atoms, 3]` eV/Å, `stress` `[3, 3]` GPa, ASE sign.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from foundation.data.crystal import Crystal
from foundation.data.readers.ase_labels import LabelConvention, atoms_labels
from foundation.data.records import Reject

__all__ = ["read_extxyz", "SOURCE_CONVENTIONS"]

# Per-source label conventions measured on the sample data (see the module docstring).
SOURCE_CONVENTIONS = {
    "colabfit": LabelConvention(
        energy="per_atom", stress_unit="kbar", stress_sign="compressive",
        voigt_order="xx yy zz xy xz yz",
    ),
}
_ID_KEYS = ("id", "config_id", "structure_id", "name")


def _frames(handle) -> Iterator[tuple[int, str | None, str]]:
    """Yield `(index, text or None, reason)` per frame; None text means the file cannot go on."""
    index = 0
    while True:
        line = handle.readline()
        if not line:
            return
        if not line.strip():
            continue  # blank lines between frames
        try:
            n_atoms = int(line.split()[0])
        except ValueError:
            yield index, None, f"atom-count line is not an integer: {line.strip()[:80]!r}"
            return
        lines = [line]
        for _ in range(n_atoms + 1):  # comment line + one line per atom
            more = handle.readline()
            if not more:
                break
            lines.append(more)
        if len(lines) != n_atoms + 2:
            got = len(lines) - 2
            yield index, None, f"file ends inside the frame ({got} of {n_atoms} atom lines)"
            return
        yield index, "".join(lines), ""
        index += 1


def _fixed_mask(atoms) -> np.ndarray:
    """`[n_atoms]` bool: FixAtoms (from `move_mask`), FixCartesian fixing all three directions."""
    fixed = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        name = type(constraint).__name__
        if name == "FixAtoms":
            fixed[constraint.get_indices()] = True
        elif name == "FixCartesian" and np.all(constraint.mask):
            fixed[constraint.get_indices()] = True
    if "fixed" in atoms.arrays:
        fixed |= np.asarray(atoms.arrays["fixed"]).astype(bool).reshape(-1)
    return fixed


def frame_to_crystal(atoms, frame_id: str, source: str, convention: LabelConvention) -> Crystal:
    """One ASE frame -> `Crystal` with canonical labels (ValueError on malformed labels)."""
    crystal = Crystal.from_ase(atoms, targets=atoms_labels(atoms, convention), id=frame_id,
                               source=source)
    fixed = _fixed_mask(atoms)
    if fixed.any():
        crystal.arrays["fixed"] = fixed
    return crystal


def read_extxyz(path, source: str | None = None, **options) -> Iterator[Crystal | Reject]:
    """Stream an extended XYZ file as `Crystal`s (or `Reject`s for frames that cannot be parsed).

    Args:
        path: the `.extxyz`/`.xyz` file.
        source: dataset name; default the parent folder's name ("lips", "colabfit", "oc20_format").
        options: `energy` ("total"|"per_atom"), `stress_unit` ("eV/A^3"|"GPa"|"kbar"|"bar"),
            `stress_sign` ("tensile"|"compressive"), `voigt_order` (e.g. "xx yy zz yz xz xy")
            override the source's convention (`SOURCE_CONVENTIONS`, else ASE's).
    Ids: the frame's `id`/`config_id`/`structure_id`/`name` info key if present, else
    `<file stem>:<frame index>`.
    """
    from ase.io import read

    path = Path(path)
    source = source or path.parent.name
    base = SOURCE_CONVENTIONS.get(source, LabelConvention())
    unknown = set(options) - {"energy", "stress_unit", "stress_sign", "voigt_order"}
    if unknown:
        raise ValueError(f"read_extxyz: unknown options {sorted(unknown)}")
    convention = LabelConvention(
        energy=options.get("energy", base.energy),
        stress_unit=options.get("stress_unit", base.stress_unit),
        stress_sign=options.get("stress_sign", base.stress_sign),
        voigt_order=options.get("voigt_order", base.voigt_order),
    )
    with open(path, encoding="utf-8", errors="replace") as handle:
        for index, text, reason in _frames(handle):
            frame_id = f"{path.stem}:{index}"
            if text is None:
                yield Reject(frame_id, source, reason, str(path))
                return
            try:
                atoms = read(io.StringIO(text), format="extxyz")
                native = next((atoms.info[k] for k in _ID_KEYS if k in atoms.info), None)
                if native is not None:
                    frame_id = str(native)
                yield frame_to_crystal(atoms, frame_id, source, convention)
            except Exception as error:  # one bad frame must not end the file
                yield Reject(frame_id, source, f"{type(error).__name__}: {error}", str(path))
