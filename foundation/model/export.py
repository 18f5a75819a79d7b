"""Portable export: `model.safetensors` (weights and buffers) + `config.json` (everything else).

config.json:
    format          "foundation-export"
    format_version  FORMAT_VERSION (an export of another version is refused, not guessed at)
    package_version foundation.__version__ that wrote it
    dtype           dtype of the stored tensors ("float32", "float64", ...)
    model_config    ModelConfig fields
    tasks           TaskSpec fields, in the model's task order
    normalization   {task: [mean list, std list]}  (also in the tensors; kept here for readers)
    element_refs    {task: {Z: value}}, non-zero entries only
    extra           caller's metadata (data sources, training run, ...)
Loading never unpickles: JSON and safetensors only; any other file (a torch.save `.pt`, a
Lightning `.ckpt`) is refused by name without being opened past its first bytes. The weights are authoritative for
normalisation and references; the JSON copy must agree with them or loading fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._version import __version__
from ..config import ConfigError, from_dict, to_dict
from ..pretrained import available, pretrained_path
from .config import ModelConfig
from .foundation_model import FoundationModel
from .tasks import TaskSpec

__all__ = ["FORMAT", "FORMAT_VERSION", "ExportError", "save_export", "load_export", "resolve_export"]

FORMAT = "foundation-export"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class ExportError(ValueError):
    """A directory is not a loadable foundation export; the message says why."""


def _head_metadata(model: FoundationModel) -> tuple[dict, dict]:
    normalization, element_refs = {}, {}
    for name, head in model.heads.items():
        if head.spec.kind == "regression":
            normalization[name] = [head.mean.tolist(), head.std.tolist()]
        refs = {str(z): float(v) for z, v in enumerate(head.element_ref.tolist()) if v != 0.0}
        if refs:
            element_refs[name] = refs
    return normalization, element_refs


def save_export(model: FoundationModel, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `directory/model.safetensors` and `directory/config.json`; returns the directory."""


    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    dtypes = {str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()}
    normalization, element_refs = _head_metadata(model)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
        "model_config": to_dict(model.config),
        "tasks": [to_dict(t) for t in model.tasks.values()],
        "normalization": normalization,
        "element_refs": element_refs,
        "extra": dict(extra or {}),
    }
    text = json.dumps(meta, indent=2, sort_keys=False)  # fails early on non-JSON extra metadata
    tags = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    save_file(state, str(directory / WEIGHTS), metadata=tags)
    (directory / CONFIG).write_text(text + "\n")
    return directory


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG
    if not path.is_file():
        raise ExportError(f"{directory}: not a foundation export (no {CONFIG})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ExportError(f"{path}: not a foundation export (format {found!r}, expected {FORMAT!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportError(
            f"{path}: export format version {version!r} (written by foundation "
            f"{meta.get('package_version', '?')}); this foundation reads version {FORMAT_VERSION} only"
        )
    missing = [k for k in ("model_config", "tasks", "normalization", "element_refs") if k not in meta]
    if missing:
        raise ExportError(f"{path}: missing field(s) {missing}")
    return meta


def _build(meta: dict[str, Any], path: Path, dtype: torch.dtype | None) -> FoundationModel:
    try:
        config = from_dict(ModelConfig, meta["model_config"], "model_config")
        tasks = [from_dict(TaskSpec, t, f"tasks[{i}]") for i, t in enumerate(meta["tasks"])]
    except (ConfigError, TypeError) as exc:
        raise ExportError(f"{path}: {exc}") from exc
    try:
        return FoundationModel(config, tasks, dtype=dtype)
    except ValueError as exc:
        raise ExportError(f"{path}: the stored model cannot be built: {exc}") from exc


def _check_state(model: FoundationModel, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} (config needs {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if shapes:
        problems.append(f"wrong shapes {shapes[:5]}{' ...' if len(shapes) > 5 else ''}")
    if problems:
        raise ExportError(f"{path}: the tensors do not match config.json: " + "; ".join(problems))


_PICKLE_MAGIC = {b"PK\x03\x04": "a zip archive (torch.save's format)", b"\x80": "a Python pickle"}


def _describe_file(path: Path) -> str:
    """What a foreign file looks like, from its first bytes only (never unpickled)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    kind = next((text for magic, text in _PICKLE_MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        return "not a foundation export file"
    return (f"{kind}, e.g. a PyTorch checkpoint: not loaded, because unpickling can run arbitrary "
            f"code; export the model with foundation.model.save_export instead")


def resolve_export(path: str | Path) -> Path:
    """The export directory that `path` names: an export directory itself, a run directory holding
    `export/`, or the `config.json` / `model.safetensors` inside an export. Raises ExportError
    naming `path` for anything else (a missing path, a pickle checkpoint, an unrelated directory).
    A name of a shipped model (`foundation.pretrained.available()`, e.g. "small-corpus") that is
    not also a path on disk names that model's export. Only checks where the export is;
    `load_export` checks its contents."""
    path = Path(path)
    if not path.exists():
        shipped = pretrained_path(path)
        if shipped is not None:
            return shipped
        if "/" not in str(path) and available():
            raise ExportError(f"{path}: no such export directory, nor a shipped model (shipped: {', '.join(available())})")
    if path.is_file():
        if path.name in (CONFIG, WEIGHTS):
            return path.parent
        raise ExportError(f"{path}: {_describe_file(path)}; a foundation checkpoint is a directory "
                          f"holding {CONFIG} and {WEIGHTS} (or a run directory holding export/)")
    if not path.is_dir():
        raise ExportError(f"{path}: no such export directory")
    if not (path / CONFIG).exists() and (path / "export" / CONFIG).is_file():
        return path / "export"
    if not (path / CONFIG).exists():
        found = sorted(p.name for p in path.iterdir())[:8]
        raise ExportError(f"{path}: not a foundation export (no {CONFIG}, nor export/{CONFIG} of a run "
                          f"directory; it holds {found or 'nothing'})")
    return path


def load_export(directory: str | Path, map_location: str | torch.device = "cpu") -> FoundationModel:
    """Rebuild the model of a `save_export` directory on `map_location`, in the stored dtype, in
    eval mode. `directory` may be any path form of `resolve_export`. Raises ExportError naming the
    problem (foreign file or directory, other format version, corrupt file, tensors that do not
    fit the config)."""

    directory = resolve_export(directory)
    meta = _read_config(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise ExportError(f"{directory}: config.json present but {WEIGHTS} is missing")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ExportError(f"{weights}: unreadable safetensors file ({exc})") from exc
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    model = _build(meta, directory / CONFIG, dtypes.pop() if len(dtypes) == 1 else None)
    _check_state(model, state, weights)
    model.load_state_dict(state, strict=True)
    normalization, element_refs = _head_metadata(model)
    try:
        stored = {k: [list(map(float, m)), list(map(float, s))] for k, (m, s) in meta["normalization"].items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise ExportError(f"{directory / CONFIG}: malformed normalization ({exc})") from exc
    if stored != normalization or meta["element_refs"] != element_refs:
        raise ExportError(f"{directory}: normalisation / element references in {CONFIG} disagree with "
                          f"the tensors in {WEIGHTS}")
    return model.to(map_location).eval()
