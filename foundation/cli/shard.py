"""`foundation shard`: read native files with a reader, validate, and write shards + manifest."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

from ..data import readers
from ..data.shards import DEFAULT_EDGE_CUTOFFS, SplitRule, write_shards
from ..data.validate import ValidationConfig

__all__ = ["cli_main", "parse_args"]


def parse_args(argv: list[str], command: str = "shard") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"foundation {command}",
                                description="Read native files, validate, write webdataset shards + manifest.json.")
    p.add_argument("--input", "-i", nargs="+", required=True, help="native file(s) of one format")
    p.add_argument("--out", "-o", required=True, help="output shard directory")
    p.add_argument("--format", "-f", default=None, help="reader (foundation.data.readers); detected if omitted")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="reader option (JSON value), repeatable")
    p.add_argument("--limit", type=int, default=None, help="first N records of each input only")
    p.add_argument("--shard-size", type=int, default=1000, help="records per shard (default 1000)")
    p.add_argument("--shard-mb", type=float, default=None, help="megabytes per shard (whichever limit comes first)")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.9, 0.05, 0.05), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0, help="split hash seed and write shuffle seed")
    p.add_argument("--group-by-prefix", action="store_true",
                   help="split (and exempt from dedup) by the id before ':' (all frames of an OC20 system together)")
    p.add_argument("--min-distance", type=float, default=0.5, help="closest allowed atom pair, Å (default 0.5)")
    p.add_argument("--require", nargs="*", default=[], metavar="TARGET", help="labels every record must have")
    p.add_argument("--elements", default=None, help="allowed atomic numbers, comma-separated (default 1..118)")
    p.add_argument("--edge-cutoffs", type=float, nargs="*", default=list(DEFAULT_EDGE_CUTOFFS),
                   help="cutoffs (Å) at which per-record edge counts are stored for max_edges packing")
    p.add_argument("--no-dedup", action="store_true", help="skip the duplicate search")
    p.add_argument("--dedup-against", nargs="*", default=[], metavar="DIR", help="other shard directories")
    p.add_argument("--drop-duplicates", action="store_true", help="reject duplicates instead of only reporting")
    p.add_argument("--dedup-within-source", action="store_true",
                   help="also compare records of one source with each other (not for MD/relaxation frames)")
    p.add_argument("--workers", type=int, default=1, help="processes for validation and fingerprints")
    p.add_argument("--write-shuffle", type=int, default=10000, help="records held to shuffle the write order")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def cli_main(argv: list[str], command: str = "shard") -> int:
    args = parse_args(argv, command)
    fmt = args.format or readers.detect_format(args.input[0])
    options = _options(args.option)

    def records():
        for path in args.input:
            yield from itertools.islice(readers.read(path, format=fmt, **options), args.limit)

    elements = None if args.elements is None else frozenset(int(z) for z in args.elements.split(","))
    start = time.perf_counter()
    manifest = write_shards(
        records(), args.out, shard_size=args.shard_size, shard_mb=args.shard_mb,
        split=SplitRule(tuple(args.fractions), args.seed, args.group_by_prefix),
        validation=ValidationConfig(args.min_distance, elements, tuple(args.require)),
        edge_cutoffs=tuple(args.edge_cutoffs), dedup=not args.no_dedup, dedup_against=tuple(args.dedup_against),
        drop_duplicates=args.drop_duplicates, dedup_within_source=args.dedup_within_source,
        workers=args.workers, write_shuffle=args.write_shuffle,
        reader={"format": fmt, "options": options, "limit": args.limit}, sources=tuple(args.input),
        overwrite=args.overwrite, progress=not args.quiet)
    c = manifest["counts"]
    splits = ", ".join(f"{s} {v['records']} ({v['shards']} shards)" for s, v in c["splits"].items())
    dup = c["duplicates"]
    print(f"{args.out}: read {c['read']}, written {c['written']}, rejected {c['rejected']} "
          f"(see rejects.jsonl); {splits}; duplicates within input {dup['within_input']}"
          + "".join(f", against {d} {n}" for d, n in dup["against"].items())
          + f" ({'dropped' if dup['dropped'] else 'kept'}); {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
