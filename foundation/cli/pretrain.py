"""`foundation pretrain --config X.yaml [a.b=value ...]`: multi-dataset pretraining, the same run as
`launch/pretrain.py` under `deepspeed`, `torchrun` or one plain `python` process."""

from __future__ import annotations

import argparse

from ..train.run_config import RunConfig, load_config
from ._training import add_run_arguments, train_main

__all__ = ["parse_args", "cli_main"]


def parse_args(argv: list[str], command: str = "pretrain") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"foundation {command}", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/pretrain/<name>.yaml")
    add_run_arguments(parser)
    return parser.parse_intermixed_args(argv)


def _config(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides, recipe="pretrain")


def cli_main(argv: list[str], command: str = "pretrain") -> int:
    return train_main(parse_args(argv, command), _config, command)
