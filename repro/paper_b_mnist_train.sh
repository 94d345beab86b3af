#!/usr/bin/env bash
# Paper B (Lelekas et al. 2020), LeNetFC on the real MNIST: BU and TD (and optionally TD_uni,
# TD_rev), paper B's recipe (SGD 0.1 Nesterov, x0.1 at 50 % and 80 %, batch 128, no
# augmentation), several seeds. Usage:
#   repro/paper_b_mnist_train.sh DATA_DIR OUT_DIR EPOCHS "SEEDS" "MODELS"
#   repro/paper_b_mnist_train.sh ../shared/data runs/repro-b 12 "0 1 2" "bu-lenetfc td-lenetfc"
# PRECISION=fp32 pins the training precision (default: train's `auto`, which is bf16 autocast on
# CPUs with native bf16); the published seeds were trained in fp32.
set -euo pipefail
data=${1:?DATA_DIR (holding MNIST/raw)}
out=${2:-runs/repro-b}
epochs=${3:-30}
seeds=${4:-0 1 2}
models=${5:-bu-lenetfc td-lenetfc}
robust=${ROBUST:-robust}
for seed in $seeds; do
  for model in $models; do
    run="$out/$model-mnist-e$epochs-s$seed"
    if [ -f "$run/model.safetensors" ]; then echo "done: $run"; continue; fi
    resume=""; [ -f "$run/last.safetensors" ] && resume="--resume"
    $robust train -m "$model" -d mnist --data-dir "$data" -r topdown -e "$epochs" \
      --seed "$seed" -o "$run" $resume --progress plain ${NORMALIZE:+--normalize "$NORMALIZE"} \
      ${PRECISION:+--precision "$PRECISION"}
  done
done
