"""The `foundation` command line: one subcommand per job, each implemented next to its code.

    foundation shard     --format X --input PATH --out DIR     (foundation.data.shards)
    foundation pretrain  --config configs/pretrain/sample.yaml (foundation.train.pretrain)
    foundation finetune  --checkpoint CKPT --data FILE ...     (foundation.train.finetune)
    foundation predict   CKPT FILES... --out predictions.csv   (foundation.api)
    foundation embed     CKPT FILES... --out features.npz      (foundation.api)
    foundation evaluate  CKPT --data FILE --target NAME        (foundation.evaluate)

Each subcommand module exposes `cli_main(argv: list[str]) -> int`; imports are deferred so that
`foundation --help` is instant and a subcommand never pays for another's imports.
"""

from __future__ import annotations

import importlib
import sys

_COMMANDS = {
    "shard": ("foundation.data.shards", "read native files, validate, write webdataset shards"),
    "pretrain": ("foundation.train.pretrain", "multi-dataset pretraining (DeepSpeed, torchrun or python)"),
    "finetune": ("foundation.train.finetune", "fine-tune a pretrained checkpoint on a new property"),
    "predict": ("foundation.api", "predict every task of a checkpoint for structure files"),
    "embed": ("foundation.api", "per-structure or per-atom encoder features to .npz"),
    "evaluate": ("foundation.evaluate", "MAE/RMSE/R2 or ROC-AUC, parity plot, MatBench folds"),
}


def _usage() -> str:
    lines = ["usage: foundation <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in _COMMANDS.items()]
    lines += ["", "Run `foundation <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from foundation import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS:
        print(f"foundation: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[name][0])
    return int(module.cli_main(rest, command=name) or 0)


if __name__ == "__main__":
    sys.exit(main())
