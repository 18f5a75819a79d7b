"""The `foundation` command line: one subcommand per job, one module per subcommand in this package.

    foundation shard     --format X --input PATH --out DIR     (cli/shard.py)
    foundation download  oqmd --out DIR --filter 'nelements<=3' (cli/download.py)
    foundation pretrain  --config configs/pretrain/sample.yaml (cli/pretrain.py)
    foundation finetune  --checkpoint CKPT --data FILE ...     (cli/finetune.py)
    foundation predict   CKPT FILES... --out predictions.csv   (cli/predict.py)
    foundation embed     CKPT FILES... --out features.npz      (cli/embed.py)
    foundation evaluate  CKPT --data FILE --target NAME        (cli/evaluate.py)

Each subcommand module exposes `cli_main(argv: list[str], command: str) -> int`. A subcommand's
module is imported when that subcommand runs (`importlib`, by the name in `COMMANDS`): importing
torch and the model takes seconds, and `foundation --help` must answer at once.
"""

from __future__ import annotations

import importlib
import sys

from .._version import __version__

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "shard": "read native files, validate, write webdataset shards",
    "download": "fetch a public database (OPTIMADE) or file and convert it to shards",
    "pretrain": "multi-dataset pretraining (DeepSpeed, torchrun or python)",
    "finetune": "fine-tune a pretrained checkpoint (or a fresh model) on a property",
    "predict": "predict every task of a checkpoint for structure files",
    "embed": "per-structure or per-atom encoder features to .npz",
    "evaluate": "MAE/RMSE/R2 or ROC-AUC, parity plot, MatBench folds",
}


def _usage() -> str:
    lines = ["usage: foundation <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, help_ in COMMANDS.items()]
    lines += ["", "Run `foundation <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"foundation: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"foundation.cli.{name}")
    return int(module.cli_main(rest, command=name) or 0)


if __name__ == "__main__":
    sys.exit(main())
