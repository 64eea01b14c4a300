#!/usr/bin/env bash
# Fault-tolerant training with torchrun's elastic agent: when a worker dies (a crash, an OOM kill, a lost GPU),
# torchrun stops the others and starts all of them again, up to MAX_RESTARTS times. Every start passes
# `--resume auto`, so the restarted workers continue from the run's newest checkpoint (or start fresh if there is
# none yet): a failure costs at most --checkpoint-every steps, and the final generator is the one an uninterrupted
# run would have produced.
#
#   launch/torchrun_elastic.sh --checkpoint-every 200                    # all GPUs of this machine
#   NPROC_PER_NODE=2 launch/torchrun_elastic.sh --split test --max-steps 300 --checkpoint-every 50   # 2 CPU processes
#
# Several machines: run the same line on every machine, with the same RUN_NAME and the address of one of them:
#   NNODES=2 RDZV_ENDPOINT=node0.example.com:29400 RUN_NAME=big launch/torchrun_elastic.sh --checkpoint-every 200
# (the c10d rendezvous assigns the machine ranks; the output folder must be on a filesystem all machines share).
#
# Settings (environment variables):
#   NPROC_PER_NODE  processes per machine: "gpu" (one per GPU, the default) or a number
#   NNODES          machines (default 1)
#   MAX_RESTARTS    how many times the workers are restarted after a failure (default 3)
#   RDZV_ENDPOINT   host:port of the rendezvous; any machine of the job (default 127.0.0.1:29400)
#   RUN_NAME        the run folder's name, fixed for the whole job so that restarts find its checkpoints
#                   (default: a timestamp; required with NNODES > 1, where every machine must name the same run)
#   PYTHON          the interpreter (default python)
# Everything after the script's name goes to train_ddp.py. Relative paths are relative to the current folder, as
# with train_ddp.py itself: the run lands in ./runs/$RUN_NAME/ (or under --output-dir).
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NPROC_PER_NODE="${NPROC_PER_NODE:-gpu}"
NNODES="${NNODES:-1}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
RDZV_ENDPOINT="${RDZV_ENDPOINT:-127.0.0.1:29400}"
PYTHON="${PYTHON:-python}"
if [[ -z "${RUN_NAME:-}" ]]; then
    if [[ "$NNODES" != 1 ]]; then
        echo "torchrun_elastic.sh: set RUN_NAME (the same on every machine) when NNODES=$NNODES" >&2
        exit 2
    fi
    RUN_NAME="$(date +%Y%m%d-%H%M%S)"
fi
# By default the workers share the rendezvous' TCP store, and after a restart they find the dead workers' addresses
# still in it ("Gloo connectFullMesh failed ... Connection refused"; pytorch/pytorch#135712): give every restart
# a fresh store instead.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

echo "torchrun_elastic.sh: run $RUN_NAME, $NNODES machine(s) x $NPROC_PER_NODE process(es), rendezvous" \
     "$RDZV_ENDPOINT, up to $MAX_RESTARTS restart(s)"
exec "$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" \
    --nproc-per-node "$NPROC_PER_NODE" \
    --max-restarts "$MAX_RESTARTS" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$RDZV_ENDPOINT" \
    --rdzv-id "$RUN_NAME" \
    "$repository/train_ddp.py" --run-name "$RUN_NAME" --resume auto "$@"
