#!/usr/bin/env bash
# Launch fr-train with DeepSpeed's launcher: the backbone in a DeepSpeed engine (ZeRO 0/1/2), the Partial FC head
# outside it (docs/distributed.md, "DeepSpeed").
#   single node:  launch/deepspeed.sh 8 launch/ds_zero2.json configs/ms1mv3_r50.py [key=value ...]
#   multi-node:   HOSTFILE=launch/hostfile launch/deepspeed.sh 8 launch/ds_zero1.json CONFIG [key=value ...]
#                 (run once, on the first host: the launcher starts every host of the hostfile over ssh (pdsh);
#                 hostfile lines are "HOST slots=N"; MASTER_ADDR defaults to the first host, MASTER_PORT to 29500)
# On a machine without GPUs set DS_ACCELERATOR=cpu (fr does so itself for train.device=cpu); the launcher then
# starts N CPU processes joined with gloo.
# fr fills the JSON's batch sizes, gradient accumulation and clipping from its own config (a JSON value that
# disagrees is an error); the JSON chooses the ZeRO stage and the precision.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 GPUS_PER_NODE DS_CONFIG.json CONFIG [key=value ...]" >&2
  exit 2
fi
nproc=$1; ds_config=$2; shift 2
if [ ! -f "$ds_config" ]; then
  echo "$0: error: $ds_config: no such file" >&2
  exit 2
fi
hosts=()
if [ -n "${HOSTFILE:-}" ]; then
  hosts=(--hostfile="$HOSTFILE")
  [ -n "${MASTER_ADDR:-}" ] && hosts+=(--master_addr="$MASTER_ADDR")
fi
exec deepspeed "${hosts[@]}" --num_gpus="$nproc" --master_port="${MASTER_PORT:-29500}" \
  --module fr.cli.train "$@" train.strategy=deepspeed train.deepspeed_config="$ds_config"
