"""What `foundation pretrain` and `foundation finetune` share: the launcher's flags, --check, and
config errors as one line on stderr with exit status 2 (before any process group starts)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from ..config import ConfigError
from ..train.deepspeed_config import deepspeed_config
from ..train.distributed import LauncherEnvError
from ..train.watchdog import EXIT_LOST_RANK, LostRankError
from ..train.resolve import describe, validate
from ..train.run import run
from ..train.run_config import RunConfig

__all__ = ["add_run_arguments", "train_main"]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher; ignore")
    parser.add_argument("--check", action="store_true",
                        help="validate the config (and checkpoint, data paths), print the DeepSpeed JSON, and exit")
    parser.add_argument("overrides", nargs="*", help="key.path=value (YAML values; tasks.0.weight=2 indexes a list)")


def train_main(args: argparse.Namespace, build: Callable[[argparse.Namespace], RunConfig], command: str) -> int:
    try:
        res = validate(build(args))
    except ConfigError as exc:
        print(f"foundation {command}: config error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(describe(res))
        print(json.dumps(deepspeed_config(res.config.distributed, res.config.optimizer), indent=1))
        return 0
    try:
        run(res, local_rank=args.local_rank)
    except ConfigError as exc:  # found once the data is read (a target the data does not carry)
        print(f"foundation {command}: config error: {exc}", file=sys.stderr)
        return 2
    except LauncherEnvError as exc:
        print(f"foundation {command}: launcher environment error: {exc}", file=sys.stderr)
        return 2
    except LostRankError as exc:  # a peer left: say which, exit in bounded time, worth a retry
        print(f"foundation {command}: lost rank: {exc}", file=sys.stderr, flush=True)
        return EXIT_LOST_RANK
    return 0
