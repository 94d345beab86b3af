#!/usr/bin/env bash
# Paper B MNIST attack queue (one core each): the additive-noise attacks (Foolbox 3 search and
# Foolbox 2 search) for the jobs given as EPOCHS:SEED:N, each started once its models exist.
# This session ran two queues side by side:
#   WAIT_PID=<s0 attack> repro/paper_b_queue_attack.sh 12:0:1000 12:1:500 3:0:300 3:2:300
#   WAIT_PID=<train queue> repro/paper_b_queue_attack.sh 12:2:500 3:1:300
# then: python repro/summarize_paper_b.py runs/repro-b/attack-td-lenetfc-e12-* --out ...
set -uo pipefail
export OMP_NUM_THREADS=1 ROBUST=${ROBUST:-robust}
data=${DATA:-../shared/data}
noise=gaussian,uniform,gaussian-fb2,uniform-fb2
while [ -n "${WAIT_PID:-}" ] && kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
for job in "$@"; do
  IFS=: read -r epochs seed n <<< "$job"
  while [ ! -f "runs/repro-b/td-lenetfc-mnist-e$epochs-s$seed/model.safetensors" ]; do sleep 30; done
  repro/paper_b_mnist_attack.sh "$data" runs/repro-b "$epochs" "$seed" "$noise" "$n"
done
