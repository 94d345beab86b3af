#!/usr/bin/env bash
# Paper B MNIST attack queue (one core): the additive-noise attacks (Foolbox 3 search and Foolbox 2
# search) on 1,000 test images per seed, as each seed's models appear; then the summaries.
set -uo pipefail
export OMP_NUM_THREADS=1 ROBUST=${ROBUST:-robust}
data=${DATA:-../shared/data}
noise=gaussian,uniform,gaussian-fb2,uniform-fb2
while [ -n "${WAIT_PID:-}" ] && kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
for epochs in 12 3; do
  n=1000; [ "$epochs" = 3 ] && n=${N_SHORT:-300}  # the short-training control on fewer images
  for seed in 0 1 2; do
    while [ ! -f "runs/repro-b/td-lenetfc-mnist-e$epochs-s$seed/model.safetensors" ]; do sleep 30; done
    repro/paper_b_mnist_attack.sh "$data" runs/repro-b "$epochs" "$seed" "$noise" "$n"
  done
  repro/paper_b_mnist_attack.sh "$data" runs/repro-b "$epochs" "0 1 2" "$noise" "$n"
done
