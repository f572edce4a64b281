#!/usr/bin/env bash
# Train with torchrun: one process per GPU (or per CPU slot with ACCELERATOR=cpu: gloo).
#
#   NGPU=4 CONFIG=configs/quickstart.yaml launch/torchrun.sh [--key value ...]
#   # multi-node: the same command on every node, NODE_RANK 0..NNODES-1
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 NGPU=8 CONFIG=... launch/torchrun.sh
#
# Environment (defaults): NGPU (1) processes per node, CONFIG (configs/quickstart.yaml),
# NNODES (1), NODE_RANK (0), MASTER_ADDR (localhost), MASTER_PORT (29500),
# ACCELERATOR (gpu if nvidia-smi sees NGPU GPUs, else cpu), RUN_DIR
# (runs/torchrun-<config name>-<NNODES>x<NGPU>: run it again to resume), PYTHON (python),
# DRY_RUN=1 prints the command instead of running it. Extra arguments go to `unifews-dist fit`.
set -euo pipefail
NGPU=${NGPU:-1}
CONFIG=${CONFIG:-configs/quickstart.yaml}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-python}
RUN_DIR=${RUN_DIR:-runs/torchrun-$(basename "$CONFIG" .yaml)-${NNODES}x${NGPU}}
if [ -z "${ACCELERATOR:-}" ]; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    ACCELERATOR=$([ "${gpus:-0}" -ge "$NGPU" ] && echo gpu || echo cpu)
fi
for v in NGPU NNODES NODE_RANK MASTER_PORT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "torchrun.sh: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
[ "$NGPU" -ge 1 ] && [ "$NNODES" -ge 1 ] && [ "$NODE_RANK" -lt "$NNODES" ] || {
    echo "torchrun.sh: need NGPU >= 1, NNODES >= 1 and NODE_RANK < NNODES (got $NGPU, $NNODES, $NODE_RANK)" >&2; exit 2; }
[ -f "$CONFIG" ] || { echo "torchrun.sh: CONFIG=$CONFIG does not exist" >&2; exit 2; }

if [ "$NNODES" -eq 1 ]; then
    rdzv=(--standalone)
else  # c10d rendezvous on MASTER_ADDR:MASTER_PORT, one id per run directory
    rdzv=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --rdzv_backend=c10d
          --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$(basename "$RUN_DIR")")
fi
cmd=("$PYTHON" -m torch.distributed.run "${rdzv[@]}" --nproc_per_node="$NGPU"
     -m unifews_dist fit --config "$CONFIG" --run_dir "$RUN_DIR"
     --trainer.accelerator "$ACCELERATOR" --trainer.devices "$NGPU" --trainer.num_nodes "$NNODES"
     --trainer.strategy ddp "$@")
if [ -n "${DRY_RUN:-}" ]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
exec "${cmd[@]}"
