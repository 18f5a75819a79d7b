"""Shards: validated records in webdataset tars with a manifest, written once, streamed by every rank.

    format.py      the tar members and manifest.json (read_manifest, read_split, encode/decode_record)
    prepare.py     per-record validation, edge counts and duplicate fingerprint (one neighbour search)
    write.py       write_shards: records -> split -> tars + manifest (+ rejects.jsonl)
    statistics.py  label statistics and per-element references accumulated while writing
    sources.py     where a dataset's shards are (directories, URLs, brace patterns)
    packing.py     the epoch plan: equal batches on every rank, packed to an atom/edge budget
    stream.py      build_loader: the streaming DataLoader of one rank
"""

from .format import decode_record, encode_record, read_manifest, read_split
from .statistics import dataset_statistics
from .stream import LoaderConfig, build_loader
from .write import DEFAULT_EDGE_CUTOFFS, SplitRule, TrainSubset, sha256_file, write_shards

__all__ = ["decode_record", "encode_record", "read_manifest", "read_split", "dataset_statistics", "LoaderConfig",
           "build_loader", "DEFAULT_EDGE_CUTOFFS", "SplitRule", "TrainSubset", "sha256_file", "write_shards"]
