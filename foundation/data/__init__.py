"""Data layer: the `Crystal` record, readers, validation, shards and streaming loaders."""

from .crystal import Crystal
from .graph import Batch, Graph, collate, neighbor_graph
from .targets import TARGETS, TargetInfo, target_info

__all__ = ["Crystal", "Batch", "Graph", "collate", "neighbor_graph", "TARGETS", "TargetInfo", "target_info"]
