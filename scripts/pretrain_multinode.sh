#!/usr/bin/env bash
# Pretrain the paper recipe on several nodes with torchrun. Run this same script on every node.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 ./scripts/pretrain_multinode.sh      # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 ./scripts/pretrain_multinode.sh      # on node1
#
# The global batch stays 524,288 tokens = 512 sequences of 1024: each rank takes 512 / world size of
# them (the world size must divide 512) in micro-batches of the largest size not above micro_batch that
# divides that, and accumulates the rest (see `dmas-repro train --preset paper --plan`).
# The data directory and OUT must be on a filesystem all nodes share (rank 0 writes checkpoints).
# Prepare the data once beforehand, e.g.
#   dmas-repro prepare-data --source fineweb-edu --out data/fineweb-edu --max-tokens 23000000000
# --resume makes the command restartable: it continues from the newest complete checkpoint in
# OUT, or starts fresh when there is none. Extra arguments are passed on (e.g. micro_batch=8).
set -euo pipefail

: "${NNODES:?set NNODES (number of nodes)}"
: "${NODE_RANK:?set NODE_RANK (0 .. NNODES-1)}"
: "${MASTER_ADDR:?set MASTER_ADDR (host name of node 0)}"
MASTER_PORT="${MASTER_PORT:-29500}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(nvidia-smi --list-gpus | wc -l)}"
OUT="${OUT:-runs/paper}"
DATA="${DATA:-data/fineweb-edu}"

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"

exec torchrun \
  --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "${RDZV_ID:-dmas-repro-paper}" \
  -m dmas_repro train --preset paper --out "$OUT" --resume "data_dir=$DATA" "$@"
