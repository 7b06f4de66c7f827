#!/usr/bin/env bash
# Launch fr-train with torchrun on this node.
#   single node:  launch/torchrun.sh 8 configs/ms1mv3_r50.py [key=value ...]
#   multi-node:   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch/torchrun.sh 8 configs/wf42m.py
#                 (run the same command on every node with its own NODE_RANK)
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 GPUS_PER_NODE CONFIG [key=value ...]" >&2
  exit 2
fi
nproc=$1; shift
exec torchrun \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
  --nproc_per_node="$nproc" -m fr.cli.train "$@"
