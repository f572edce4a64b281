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
# DRY_RUN=1 prints the command instead of running it, LAUNCHER (fork): `fork` runs torchrun as
# `python -m unifews_dist.launch`, which forks the ranks of a node after importing torch, PyG and
# Lightning once, so they share those pages (0.36 GiB less per rank; see README), `torchrun`
# runs plain torchrun (each rank a new interpreter). Extra arguments go to `unifews-dist fit`.
set -euo pipefail
NGPU=${NGPU:-1}
CONFIG=${CONFIG:-configs/quickstart.yaml}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-python}
LAUNCHER=${LAUNCHER:-fork}
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
case "$LAUNCHER" in
    fork) launcher=(-m unifews_dist.launch); module=() ;;
    torchrun) launcher=(-m torch.distributed.run); module=(-m unifews_dist) ;;
    *) echo "torchrun.sh: LAUNCHER must be fork or torchrun, got '$LAUNCHER'" >&2; exit 2 ;;
esac
[ -f "$CONFIG" ] || { echo "torchrun.sh: CONFIG=$CONFIG does not exist" >&2; exit 2; }

if [ "$NNODES" -eq 1 ]; then
    rdzv=(--standalone)
else  # c10d rendezvous on MASTER_ADDR:MASTER_PORT, one id per run directory
    rdzv=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --rdzv_backend=c10d
          --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$(basename "$RUN_DIR")")
fi
cmd=("$PYTHON" "${launcher[@]}" "${rdzv[@]}" --nproc_per_node="$NGPU"
     "${module[@]}" fit --config "$CONFIG" --run_dir "$RUN_DIR"
     --trainer.accelerator "$ACCELERATOR" --trainer.devices "$NGPU" --trainer.num_nodes "$NNODES"
     --trainer.strategy ddp "$@")
if [ -n "${DRY_RUN:-}" ]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
exec "${cmd[@]}"
