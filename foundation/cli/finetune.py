"""`foundation finetune`: fine-tune a pretrained checkpoint (or a fresh model) on a property of any
readable file; the same run as `launch/finetune.py`.

    foundation finetune --checkpoint runs/sample/export --data perov5_val.csv --target heat_all
    foundation finetune --config configs/finetune/band_gap.yaml --freeze first:1 --lr-decay 0.5
    foundation finetune --data perov5_val.csv --target heat_all --model configs/model/small.yaml
    torchrun --nproc_per_node 2 launch/finetune.py --config configs/finetune/dcdft.yaml

Flags override the YAML; `key.path=value` overrides override both.
"""

from __future__ import annotations

import argparse

from ..config import ConfigError, apply_overrides, load_yaml
from ..train.run_config import RunConfig, config_from_mapping
from ._training import add_run_arguments, train_main

__all__ = ["parse_args", "config_from_args", "cli_main"]


def parse_args(argv: list[str], command: str = "finetune") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"foundation {command}", description=__doc__.splitlines()[0],
                                     epilog="Flags override the YAML; key.path=value overrides override both.")
    parser.add_argument("--config", help="configs/finetune/<name>.yaml (optional with --data and --target)")
    parser.add_argument("--checkpoint", help="pretrained export: directory, run directory, or a file in it")
    parser.add_argument("--model", help="a fresh model of this ModelConfig YAML instead of a checkpoint")
    parser.add_argument("--data", help="data file or directory (or ase:dcdft); resets the config's format/options")
    parser.add_argument("--format", help="reader of --data (default: detected)")
    parser.add_argument("--target", help="label to fine-tune on (replaces the config's tasks)")
    parser.add_argument("--task-name", help="name of the new head (default: the target)")
    parser.add_argument("--kind", choices=("regression", "classification"))
    parser.add_argument("--pool", choices=("contributions", "features"),
                        help="an intensive task's readout: the mean of per-atom predictions (default) or "
                             "the head on the mean of the atoms' features (CGCNN's)")
    parser.add_argument("--freeze", help="none | encoder | first:K")
    parser.add_argument("--lr-decay", type=float, help="layer-wise learning-rate decay D in (0, 1]")
    heads = parser.add_mutually_exclusive_group()
    heads.add_argument("--keep-heads", dest="keep_heads", action="store_true", default=None,
                       help="keep the checkpoint's other heads in the export")
    heads.add_argument("--drop-heads", dest="keep_heads", action="store_false", help="drop them (default)")
    parser.add_argument("--run-dir")
    add_run_arguments(parser)
    return parser.parse_intermixed_args(argv)


def _data_section(data: dict, args: argparse.Namespace) -> dict:
    section = data.get("data") if isinstance(data.get("data"), dict) else {}
    if args.data is not None:
        section = {k: v for k, v in section.items() if k not in ("format", "options", "name")}
        section["path"] = args.data
    if args.format is not None:
        section["format"] = args.format
    return section


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The YAML (if any), then the flags, then the key=value overrides."""
    data = load_yaml(args.config) if args.config else {}
    for key, value in (("checkpoint", args.checkpoint), ("model", args.model), ("freeze", args.freeze),
                       ("lr_decay", args.lr_decay), ("keep_heads", args.keep_heads), ("run_dir", args.run_dir)):
        if value is not None:
            data[key] = value
    if args.model is not None and args.checkpoint is None:
        data.pop("checkpoint", None)
    if args.data is not None or args.format is not None:
        data["data"] = _data_section(data, args)
    named = {k: v for k, v in (("name", args.task_name), ("kind", args.kind), ("pool", args.pool)) if v is not None}
    if args.target is not None:
        data["tasks"] = [{"target": args.target, **named}]
    elif named:
        tasks = data.get("tasks") or []
        if len(tasks) != 1:
            raise ConfigError(f"--task-name/--kind/--pool apply to one task; the config has {len(tasks)}: "
                              "give --target, or tasks.N.pool=... overrides")
        data["tasks"] = [{**tasks[0], **named}]
    if not args.config and "max_steps" not in data and "epochs" not in data:
        data["epochs"] = 20.0
    return config_from_mapping(apply_overrides(data, args.overrides), recipe="finetune")


def cli_main(argv: list[str], command: str = "finetune") -> int:
    return train_main(parse_args(argv, command), config_from_args, command)
