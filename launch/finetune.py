"""Fine-tuning entry point for every launcher (the same run as `foundation finetune`).

    python launch/finetune.py --config configs/finetune/dcdft.yaml                     # one process
    python launch/finetune.py --checkpoint runs/sample/export --data FILE --target NAME
    torchrun --nproc_per_node 2 launch/finetune.py --config configs/finetune/band_gap.yaml
    deepspeed --num_gpus 8 launch/finetune.py --config configs/finetune/formation_energy.yaml run_dir=/runs/x
    python launch/finetune.py --config configs/finetune/perovskites.yaml --check       # validate only

Flags (--checkpoint, --data, --target, --freeze, --lr-decay, ...) override the YAML; `key.path=value`
overrides both. A config error exits with status 2 and a message naming the field.
"""

import sys

from foundation.cli.finetune import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:], command="finetune"))
