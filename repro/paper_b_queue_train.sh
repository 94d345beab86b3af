#!/usr/bin/env bash
# Paper B MNIST training queue (one core): 12-epoch BU/TD seeds 0-2, then the 3-epoch control.
set -uo pipefail
export OMP_NUM_THREADS=1 ROBUST=${ROBUST:-robust}
data=${DATA:-../shared/data}
while [ -n "${WAIT_PID:-}" ] && kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
repro/paper_b_mnist_train.sh "$data" runs/repro-b 12 "0 1 2" "bu-lenetfc td-lenetfc"
repro/paper_b_mnist_train.sh "$data" runs/repro-b 3 "0 1 2" "bu-lenetfc td-lenetfc"
