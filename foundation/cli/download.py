"""`foundation download NAME --out DIR`: a public database fetched and converted to shards in one command.

    foundation download oqmd --out data/oqmd --filter 'nelements<=3' --limit 100000
    foundation download alexandria --out data/alex --filter 'nsites<=20'
    foundation download mydb --base-url https://host/optimade --out data/mydb --field _mydb_ef=formation_energy_per_atom
    foundation download matbench_perovskites --out data/perovskites   # a MatBench task: file, sha256, shards
    foundation download oc20_s2ef_200k --out data/oc20_200k            # an Open Catalyst archive: MD5, shards
    foundation download file --url https://host/task.json.gz --md5 HEX --out data/task   # one file, resumable

Run the same command again after an interruption: it resumes where it stopped (OPTIMADE: at the
page reached; files: at the byte reached), and converts once everything is in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data import readers
from ..data.download import (MATBENCH_TASKS, OC_ARCHIVES, OPTIMADE_DATABASES, DownloadError, archive_records,
                             describe, download_file, download_optimade, field_map, optimade_records)
from ..data.shards import SplitRule, write_shards

__all__ = ["cli_main", "parse_args"]


def parse_args(argv: list[str], command: str = "download") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"foundation {command}", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help=f"an OPTIMADE database ({', '.join(OPTIMADE_DATABASES)}), a MatBench task "
                                f"({', '.join(MATBENCH_TASKS)}), an Open Catalyst archive ({', '.join(OC_ARCHIVES)}), "
                                "any name with --base-url, or 'file' with --url")
    p.add_argument("--out", "-o", required=True, help="directory: raw/ (the download), shards/ (the result)")
    p.add_argument("--base-url", default=None, help="an OPTIMADE base URL (instead of the named database's)")
    p.add_argument("--filter", default="", help="OPTIMADE filter, e.g. 'nelements<=3 AND nsites<=40'")
    p.add_argument("--limit", type=int, default=None, help="at most this many structures")
    p.add_argument("--page-limit", type=int, default=None, help="entries per page asked of the server")
    p.add_argument("--max-pages", type=int, default=None, help="stop after this many pages (run again to go on)")
    p.add_argument("--field", action="append", default=[], metavar="FIELD=TARGET",
                   help="a provider field to keep as a target, e.g. _oqmd_delta_e=formation_energy_per_atom")
    p.add_argument("--url", default=None, help="with 'file': the file to fetch; with a MatBench task or an archive: "
                                                "a mirror of it")
    p.add_argument("--md5", default=None, help="with 'file': its published MD5")
    p.add_argument("--sha256", default=None, help="with 'file': its published sha256")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--fractions", type=float, nargs=3, default=(0.9, 0.05, 0.05), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--no-convert", action="store_true", help="download only")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _fields(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, target = pair.partition("=")
        if not sep or not key.startswith("_"):
            raise SystemExit(f"--field expects _prefix_name=target, got {pair!r}")
        out[key] = target
    return out


def _matbench(args: argparse.Namespace, out: Path) -> int:
    """The task's published file (or --url, a mirror), its sha256 checked, read and sharded."""
    url, sha256, n = MATBENCH_TASKS[args.name]
    path = download_file(args.url or url, out / "raw" / f"{args.name}.json.gz", sha256=sha256)
    report = {"file": str(path), "sha256": sha256, "published_records": n}
    if not args.no_convert:
        records = readers.read(str(path), format="matbench")
        if args.limit:
            import itertools

            records = itertools.islice(records, args.limit)
        manifest = write_shards(records, out / "shards", shard_size=args.shard_size,
                                split=SplitRule(fractions=tuple(args.fractions)), progress=not args.quiet,
                                overwrite=True, reader={"format": "matbench", "url": url}, sources=(str(path),))
        report.update(shards=str(out / "shards"), counts=manifest.get("counts"))
    print(json.dumps(report, indent=1, default=str))
    return 0


def _archive(args: argparse.Namespace, out: Path) -> int:
    """An Open Catalyst archive (or --url, a mirror): fetched with resume, its MD5 checked, streamed
    member by member into shards (frames of one file kept in one split)."""
    url, md5, layout, source = OC_ARCHIVES[args.name]
    name = Path(url).name
    path = download_file(args.url or url, out / "raw" / name, md5=md5)
    report = {"file": str(path), "md5": md5}
    if not args.no_convert:
        records = archive_records(path, layout, source, out / "raw" / "work")
        if args.limit:
            import itertools

            records = itertools.islice(records, args.limit)
        manifest = write_shards(records, out / "shards", shard_size=args.shard_size,
                                split=SplitRule(fractions=tuple(args.fractions), group_by_prefix=layout == "s2ef"),
                                progress=not args.quiet, overwrite=True, dedup=False,
                                reader={"archive": name, "layout": layout, "url": url}, sources=(str(path),))
        report.update(shards=str(out / "shards"), counts=manifest.get("counts"))
    print(json.dumps(report, indent=1, default=str))
    return 0


def cli_main(argv: list[str], command: str = "download") -> int:
    args = parse_args(argv, command)
    out = Path(args.out)
    try:
        if args.name in MATBENCH_TASKS:
            return _matbench(args, out)
        if args.name in OC_ARCHIVES:
            return _archive(args, out)
        if args.name == "file":
            if not args.url:
                raise SystemExit("foundation download file: --url is required")
            if not (args.md5 or args.sha256):
                print("warning: no --md5/--sha256 given: the file is not checked", file=sys.stderr)
            path = download_file(args.url, out / "raw" / Path(args.url.split("?")[0]).name, args.md5, args.sha256)
            print(json.dumps({"file": str(path), "bytes": path.stat().st_size}))
            return 0
        base = args.base_url or OPTIMADE_DATABASES.get(args.name)
        if base is None:
            print(f"foundation {command}: unknown database {args.name!r} (known: {', '.join(OPTIMADE_DATABASES)}; "
                  "or give --base-url)", file=sys.stderr)
            return 2
        state = download_optimade(base, out, args.filter, args.limit, args.page_limit, args.max_pages)
    except DownloadError as exc:
        print(f"foundation {command}: {exc}", file=sys.stderr)
        return 1
    report = {"download": describe(state)}
    if state.done and not args.no_convert:
        fields = field_map(out / "raw" / "structures.jsonl", _fields(args.field))
        manifest = write_shards(optimade_records(out, args.name, fields), out / "shards", shard_size=args.shard_size,
                                split=SplitRule(fractions=tuple(args.fractions)), progress=not args.quiet,
                                overwrite=True)
        report.update(fields=fields, shards=str(out / "shards"), counts=manifest.get("counts"))
    elif not state.done:
        report["next"] = "run the same command again to continue"
    print(json.dumps(report, indent=1, default=str))
    return 0
