"""Pretraining entry point for every launcher (the same run as `foundation pretrain`).

    python launch/pretrain.py --config configs/pretrain/sample.yaml            # one process
    torchrun --nproc_per_node 2 launch/pretrain.py --config configs/pretrain/sample.yaml
    deepspeed --num_gpus 8 launch/pretrain.py --config configs/pretrain/cluster.yaml run_dir=/runs/x
    python launch/pretrain.py --config configs/pretrain/cluster.yaml --check  # validate, print DS JSON

Overrides are `key.path=value` (YAML values): `max_steps=50 distributed.zero_stage=2`.
A config error exits with status 2 and a message naming the field, before any process group.
"""

import sys

from foundation.cli.pretrain import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:], command="pretrain"))
