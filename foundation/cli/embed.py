"""`foundation embed CKPT FILES... --out features.npz`: frozen encoder features of structure files
(features, ids, files, n_atoms, and label_<name> for every label the files carry)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..api import LEVELS, load_encoder, progress_bar
from ..data.records import Reject
from ._structures import Record, chunks, common_args, labels, read_records, report, run_command


__all__ = ["parse_args", "cli_main"]


def _embed_main(args: argparse.Namespace) -> int:
    embedder = load_encoder(args.checkpoint, args.device)
    rejects: list[tuple[str, Reject]] = []
    kept: list[Record] = []
    parts: list[np.ndarray] = []
    found = read_records(args.files, args.format, args.limit, embedder.encoder.config.max_atomic_number, rejects)
    with progress_bar(None, None, "embed") as bar:
        for chunk in chunks(found, args.batch_size):
            parts.append(embedder.run([r.ready for r in chunk], args.level, args.batch_size, False))
            kept += chunk
            bar.update(len(chunk))
    report(len(kept), rejects)
    n_atoms = np.array([r.crystal.n_atoms for r in kept], dtype=np.int64)
    features = np.concatenate(parts) if parts else np.zeros((0, embedder.width(args.level)))
    extra = {}
    if args.level == "atom":
        extra = {"offsets": np.concatenate([[0], np.cumsum(n_atoms)]),
                 "numbers": np.concatenate([r.crystal.numbers for r in kept]) if kept else np.zeros(0, np.int64)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, features=features, level=np.array(args.level),
             ids=np.array([r.crystal.id for r in kept], dtype=str),
             files=np.array([r.file for r in kept], dtype=str), n_atoms=n_atoms, **extra, **labels(kept))
    print(f"wrote {args.level}-level features {features.shape} to {args.out}")
    return 0 if kept else 1


def parse_args(argv: list[str], command: str = "embed") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"foundation {command}", description=__doc__.splitlines()[0])
    common_args(parser)
    parser.add_argument("--out", type=Path, required=True, help=".npz to write")
    parser.add_argument("--level", choices=LEVELS, default="structure",
                        help="structure: [n, F] means of the last block's invariants; blocks: [n, F_all] the "
                             "means of the embedding's and every block's, concatenated; readout: blocks and the "
                             "mean hidden layer of every structure-level head (the richest; pretrained "
                             "checkpoints); atom: [Σ n_i, F] with offsets and numbers")
    return parser.parse_args(argv)


def cli_main(argv: list[str] | None = None, command: str = "embed") -> int:
    """`foundation embed ...`; returns the exit status."""
    return run_command(parse_args(argv, command), _embed_main, command)
