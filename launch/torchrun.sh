#!/usr/bin/env bash
# Launch fr-train with torchrun on this node; run the same command on every node.
#   single node:        launch/torchrun.sh 8 configs/ms1mv3_r50.py [key=value ...]
#   multi-node, static: NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch/torchrun.sh 8 configs/glint360k_r100.py
#                       (each node with its own NODE_RANK; MASTER_ADDR is node 0, MASTER_PORT defaults to 29500)
#   multi-node, c10d:   NNODES=2 RDZV_ENDPOINT=10.0.0.1:29500 RDZV_ID=job42 launch/torchrun.sh 8 CONFIG ...
#                       (ranks are assigned by the rendezvous, so no NODE_RANK; NNODES=MIN:MAX is elastic)
# CONFIG may also be an arcface_torch config file as it is, with or without .py (docs/migration.md).
# MAX_RESTARTS (default 0) restarts the workers of every node after a failure (c10d rendezvous); pair it with
# train.resume=auto so they continue from the last checkpoint.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 GPUS_PER_NODE CONFIG [key=value ...]" >&2
  exit 2
fi
nproc=$1; shift
nnodes=${NNODES:-1}
if [ -n "${RDZV_ENDPOINT:-}" ]; then
  where=(--rdzv_backend=c10d --rdzv_endpoint="$RDZV_ENDPOINT" --rdzv_id="${RDZV_ID:-fr}")
elif [[ "$nnodes" == *:* ]]; then
  echo "$0: error: NNODES=$nnodes (elastic) needs RDZV_ENDPOINT=HOST:PORT" >&2
  exit 2
else
  where=(--node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}"
         --master_port="${MASTER_PORT:-29500}")
fi
exec torchrun --nnodes="$nnodes" --nproc_per_node="$nproc" "${where[@]}" \
  --max_restarts="${MAX_RESTARTS:-0}" -m fr.cli.train "$@"
