"""Pretrained models shipped with the package, loaded by name (as CHGNet and MACE ship theirs):

    foundation.load_encoder("small-corpus").embed(structures)
    foundation embed small-corpus FILE --out features.npz
    foundation finetune --config ... --checkpoint small-corpus

Each model is an ordinary export directory here (`model.safetensors` + `config.json`, the format
of `foundation.model.save_export`: no pickle) with its model card, `MODEL_CARD.md`: the data,
steps, time, machine, per-dataset validation metrics and the command that rebuilds it. A path
that exists on disk always wins over a name.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PRETRAINED_DIR", "available", "pretrained_path"]

PRETRAINED_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """The names of the shipped models."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file())


def pretrained_path(name: str | Path) -> Path | None:
    """The export directory of the shipped model `name`, or None when there is none by that name."""
    name = str(name)
    if "/" in name or name.startswith(".") or name not in available():
        return None
    return PRETRAINED_DIR / name
