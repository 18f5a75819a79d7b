#!/bin/bash
# Multi-node pretraining with the `deepspeed` launcher (pdsh/ssh to every host).
# Inside a SLURM allocation it builds the hostfile from the node list; elsewhere pass HOSTFILE.
#   salloc --nodes 4 --gpus-per-node 8 bash docker/deepspeed_multinode.sh
set -euo pipefail
cd "$(dirname "$0")/.."

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
RUN_DIR=${RUN_DIR:-/runs/cluster}
HOSTFILE=${HOSTFILE:-$RUN_DIR/hostfile}
mkdir -p "$RUN_DIR"
if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/ slots=$GPUS_PER_NODE/" > "$HOSTFILE"
fi
MASTER=$(head -n 1 "$HOSTFILE" | cut -d' ' -f1)

deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER" --master_port "${MASTER_PORT:-29500}" \
    --num_gpus "$GPUS_PER_NODE" \
    launch/pretrain.py --config configs/pretrain/cluster.yaml run_dir="$RUN_DIR" "$@"
