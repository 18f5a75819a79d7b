"""The model: `ModelConfig`, `TaskSpec`, the shared `Encoder`, task heads, `FoundationModel`,
and the portable export (`save_export` / `load_export`)."""

from .config import ModelConfig
from .encoder import Encoder
from .export import load_export, save_export
from .foundation_model import FoundationModel
from .heads import TaskHead, forces_from_energy
from .tasks import TaskSpec, TaskStats

__all__ = [
    "ModelConfig", "TaskSpec", "TaskStats", "Encoder", "TaskHead", "forces_from_energy", "FoundationModel",
    "save_export", "load_export",
]
