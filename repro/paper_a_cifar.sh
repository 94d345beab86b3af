#!/usr/bin/env bash
# Paper A (Ranabhat et al. 2025), Table 1 on ResNet-20: plain, PP ReLU, PP + GELU, PP attn,
# PP attn + GELU, MSPP; one recipe for all (ours: `fast`), several seeds, each evaluated on the
# 19 generated CIFAR-10-C corruptions x 5 severities. Usage:
#   repro/paper_a_cifar.sh CIFAR_TREE OUT EPOCHS "SEEDS" N_EVAL ["MODELS"]
#   repro/paper_a_cifar.sh /data/cifar10-jpeg runs/repro-a 10 "0 1 2" 10000
# CIFAR_TREE: the extracted CIFAR-10 (JPEG mirror) ImageFolder tree (train/<class>, test/<class>).
# eval-c records per-image results (--per-image): summarize_paper_a.py adds intervals over images.
# PRECISION=fp32 pins the training precision (default: train's `auto`, which is bf16 autocast on
# CPUs with native bf16): pin it when new seeds are to be paired with runs from another machine.
# EVAL_PRECISION=fp32 pins eval-c's precision (default `auto`: bf16-checked on CPUs with native
# bf16 for models without push-pull kernel layers, fp32 for the others): pin it to evaluate every
# model of a comparison in the same arithmetic.
# CIFAR_C_DIR=DIR reads the corrupted images from a folder written once by
# `robust corrupt DIR --data-dir CIFAR_TREE -c all -s 1-5 --seed 0` instead of generating them
# again for every run (the same images: --generate and corrupt draw from the same seed).
# EVAL_DIR=DIR writes the eval-c JSONs (and the summary) there instead of OUT: the published
# all-10,000-image evaluations live in docs/data/repro-a10k, beside the checkpoints' repro-a.
# NO_SUMMARY=1 skips the summary (e.g. when EVAL_DIR is a published data folder).
set -euo pipefail
data=${1:?CIFAR_TREE}
out=${2:-runs/repro-a}
epochs=${3:-10}
seeds=${4:-0 1 2}
n=${5:-10000}
models=${6:-resnet20 pp-resnet20 pp-gelu-resnet20 ppattn-resnet20 ppattn-gelu-resnet20 mspp-resnet20}
robust=${ROBUST:-robust}
evals=${EVAL_DIR:-$out}
mkdir -p "$evals"
files=()
for seed in $seeds; do
  for model in $models; do
    run="$out/$model-e$epochs-s$seed"
    if [ ! -f "$run/model.safetensors" ]; then
      resume=""; [ -f "$run/last.safetensors" ] && resume="--resume"
      $robust train -m "$model" -d cifar10 --data-dir "$data" -r fast -e "$epochs" --seed "$seed" \
        -o "$run" $resume --progress plain ${PRECISION:+--precision "$PRECISION"}
    fi
    res="$evals/evalc-$model-e$epochs-n$n-s$seed.json"
    files+=("$res")
    images=(--generate)
    if [ -n "${CIFAR_C_DIR:-}" ]; then images=(--cifar-c-dir "$CIFAR_C_DIR"); fi
    [ -f "$res" ] || $robust eval-c "$run" "${images[@]}" -c all -s 1-5 -n "$n" --data-dir "$data" \
      --data-label "CIFAR-10 (JPEG mirror)" --seed 0 -o "$res" --no-progress --per-image \
      ${EVAL_PRECISION:+--precision "$EVAL_PRECISION"}
  done
done
[ -n "${NO_SUMMARY:-}" ] || python "$(dirname "$0")/summarize_paper_a.py" "${files[@]}" --out "$evals/summary-e$epochs-n$n"
