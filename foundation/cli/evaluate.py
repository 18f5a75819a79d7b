"""`foundation evaluate CKPT --data FILE --target NAME`: score a checkpoint on a labelled file, or
with `--folds N` run the MatBench protocol (fine-tune and score each fold).

    foundation evaluate runs/ft/export --data perov5_val.csv --target heat_all --out eval/
    foundation evaluate runs/pretrain/export --data matbench.json.gz --target e_form --folds 5 \
        --config configs/finetune/formation_energy.yaml max_steps=2000 --out eval/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluate import MATBENCH_RANDOM_STATE, evaluate_checkpoint, evaluate_folds, read_labelled, report_table
from ..model.export import ExportError
from ..train.run_config import RunConfig
from .finetune import config_from_args

__all__ = ["parse_args", "cli_main"]


def parse_args(argv: list[str], command: str = "evaluate") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"foundation {command}", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="export directory (or a run dir holding export/)")
    parser.add_argument("overrides", nargs="*", help="--folds only: finetune config key.path=value (YAML values)")
    parser.add_argument("--data", required=True, help="labelled structure file (any readers format, or ase:dcdft)")
    parser.add_argument("--target", required=True, help="label to score: canonical name or the file's column")
    parser.add_argument("--task", default=None, help="the checkpoint's task to use when several predict the target")
    parser.add_argument("--format", default=None, help="reader format (default: detected)")
    parser.add_argument("--limit", type=int, default=None, help="first N records of the file only")
    parser.add_argument("--derive", action="append", default=[], metavar="NAME=EXPR",
                        help="a label computed from the file's: 'key', 'log10(key)' or 'key <= 0' (repeatable)")
    parser.add_argument("--out", default="evaluation", help="output directory (default: ./evaluation)")
    parser.add_argument("--batch-size", type=int, default=64, help="structures per prediction batch")
    parser.add_argument("--device", default="cpu", help="torch device for prediction")
    parser.add_argument("--folds", type=int, default=None, help="MatBench protocol: fine-tune and score N folds")
    parser.add_argument("--config", default=None, help="--folds: configs/finetune/<name>.yaml (budget, optimiser, ...)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="--folds: part of the training folds held out for early stopping")
    parser.add_argument("--seed", type=int, default=MATBENCH_RANDOM_STATE, help="--folds: KFold random_state")
    args = parser.parse_intermixed_args(argv)
    if args.folds is None and (args.config or args.overrides):
        parser.error("--config and key=value overrides apply to --folds only")
    if args.folds is not None and args.folds < 2:
        parser.error("--folds needs N >= 2")
    if (args.limit is not None and args.limit < 1) or args.batch_size < 1:
        parser.error("--limit and --batch-size must be >= 1")
    bad = [d for d in args.derive if "=" not in d]
    if bad:
        parser.error(f"--derive takes NAME=EXPR, got {bad}")
    args.derive = dict(d.split("=", 1) for d in args.derive)
    return args


def _template(args: argparse.Namespace) -> RunConfig:
    """The fold RunConfig template, as `foundation finetune --config C --data FILE [k=v ...]`
    builds it (no config: one task for --target, 20 epochs unless the overrides set a budget)."""
    flags = dict(config=args.config, checkpoint=args.checkpoint, model=None, freeze=None, lr_decay=None, keep_heads=None,
                 run_dir=None, data=args.data, format=args.format, task_name=None, kind=None, pool=None,
                 target=None if args.config else args.target, overrides=args.overrides)
    return config_from_args(argparse.Namespace(**flags))


def cli_main(argv: list[str], command: str = "evaluate") -> int:
    args = parse_args(argv, command)
    try:
        if args.folds is None:
            data = read_labelled(args.data, args.target, args.format, limit=args.limit, derive=args.derive)
            report = evaluate_checkpoint(args.checkpoint, data, args.out, requested=args.target, task=args.task,
                                         batch_size=args.batch_size, device=args.device)
        else:
            template = _template(args)
            limit = args.limit if args.limit is not None else template.data.limit
            data = read_labelled(args.data, args.target, template.data.format, limit=limit,
                                 options=template.data.options, derive={**template.data.derive, **args.derive})
            report = evaluate_folds(args.checkpoint, data, args.out, template, requested=args.target, task=args.task,
                                    n_folds=args.folds, random_state=args.seed, val_fraction=args.val_fraction,
                                    limit=limit, batch_size=args.batch_size, device=args.device)
    except (ValueError, FileNotFoundError, ExportError) as exc:  # ConfigError is a ValueError
        print(f"foundation {command}: error: {exc}", file=sys.stderr)
        return 2
    print(report_table(report))
    print(f"wrote {Path(args.out) / 'report.json'}, {Path(args.out) / report['plot']}, "
          f"{Path(args.out) / report['predictions']}")
    return 0
