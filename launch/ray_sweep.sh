#!/usr/bin/env bash
# A Ray Tune sweep of fr trainings (docs/distributed.md, "Hyperparameter sweeps on Ray Tune").
#
#   launch/ray_sweep.sh SWEEP_FILE [--resume] [--address ADDRESS]
#
# Without an address a local Ray instance is started for the sweep and stopped after it. On a cluster
# (`ray start --head` on one node, `ray start --address=HEAD:6379` on the others) run it on the head node
# with RAY_ADDRESS=auto (or --address auto), or from elsewhere with RAY_ADDRESS=ray://HEAD:10001.
# The sweep's `output` must then be on a file system every node reaches (NFS, ...).
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 SWEEP_FILE [--resume] [--address ray://HOST:10001|auto]" >&2
    exit 2
fi
sweep=$1
shift

args=()
if [ -n "${RAY_ADDRESS:-}" ]; then
    args+=(--address "$RAY_ADDRESS")
fi
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
exec python -m fr.cli.sweep "$sweep" "${args[@]}" "$@"
