#!/usr/bin/env bash
# The prepared GPU session of issues #15 / #16 (one large GPU, about 15 minutes of device time in
# all, start-up included): paper A's Table 1 on ResNet-20 (7 variants x 3 seeds, our fast recipe,
# 15 epochs, full eval-c 19 x 5 x 10,000) and paper B's Fig. 6 on LeNetFC (BU, TD, TD_uni, TD_rev x
# 3 seeds, 30 epochs, the 8 attacks x 3 repeats on the whole MNIST test set), then the eval-c and
# training speed checks of #16. Every step is a study step: an interrupted session resumes.
#
#   repro/gpu_session.sh CIFAR_TREE MNIST_DIR OUT [JOBS]     # on the GPU machine
#   TINY=1 repro/gpu_session.sh - - /tmp/gpu-tiny 2           # the same pipeline on CPU in minutes
#
# CIFAR_TREE: the extracted CIFAR-10 (JPEG mirror) tree; MNIST_DIR: a folder holding MNIST/raw.
# JOBS: steps run side by side (local executor; a ResNet-20 uses a small part of an H200).
# TINY=1 runs the studies' smoke profiles (embedded digits) so the script itself is tested.
set -euo pipefail
cifar=${1:?CIFAR_TREE}
mnist=${2:?MNIST_DIR}
out=${3:?OUT}
jobs=${4:-8}
robust=${ROBUST:-robust}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/session.log"; }
timed() {  # NAME CMD...: run, log the wall time
  local name=$1 t0; shift; t0=$(date +%s)
  "$@" 2>&1 | tee "$out/$name.log" | tail -n 40
  log "$name: $(( $(date +%s) - t0 )) s"
}
log "start on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo cpu)"
if [ -n "${TINY:-}" ]; then
  pa=(--profile smoke) pb=(--profile smoke) da=() db=()
else
  pa=(--profile gpu) pb=(--profile gpu) da=(--data-dir "$cifar") db=(--data-dir "$mnist")
fi
timed table1 $robust study "$here/studies/ranabhat2025-table1-resnet20.yaml" "${pa[@]}" "${da[@]}" \
  -j "$jobs" -o "$out/table1" --progress plain
timed fig6 $robust study "$here/studies/lelekas2020-fig6.yaml" "${pb[@]}" "${db[@]}" \
  -j "$jobs" -o "$out/fig6" --progress plain
for s in table1 fig6; do
  $robust study "$here/studies/$([ $s = table1 ] && echo ranabhat2025-table1-resnet20 || echo lelekas2020-fig6).yaml" \
    "${pa[@]}" -o "$out/$s" --report --format markdown > "$out/$s.md" || true
done
if [ -z "${TINY:-}" ]; then  # #16's GPU goals: full eval-c in <= 30 s, ResNet-20 >= 91 % in <= 2 min
  timed evalc_speed $robust eval-c "$out/table1/runs/resnet20-s0/train" --generate -c all -s 1-5 \
    --data-dir "$cifar" --data-label "CIFAR-10 (JPEG mirror)" -o "$out/evalc_speed.json" --force
  timed train_speed $robust train -m resnet20 -d cifar10 --data-dir "$cifar" -e 15 -o "$out/r20-speed" --force
fi
log done
