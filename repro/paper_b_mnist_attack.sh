#!/usr/bin/env bash
# Paper B, Exp. 2 on MNIST: attack each seed's TD net with its BU twin beside it (same images,
# paper B's protocol: repeats, per-sample minimum L2), then summarise over seeds. The BU twin is
# TD_MODEL's backbone (td-nin-light, td-uni-lenetfc -> bu-nin-light, bu-lenetfc). Usage:
#   repro/paper_b_mnist_attack.sh DATA_DIR RUNS EPOCHS "SEEDS" ATTACKS N [TD_MODEL]
#   repro/paper_b_mnist_attack.sh ../shared/data runs/repro-b 12 "0 1 2" \
#       gaussian,uniform,gaussian-fb2,uniform-fb2 500
set -euo pipefail
data=${1:?DATA_DIR (holding MNIST/raw)}
runs=${2:-runs/repro-b}
epochs=${3:-12}
seeds=${4:-0 1 2}
attacks=${5:-paper-b}
n=${6:-1000}
td=${7:-td-lenetfc}
backbone=${td#td-}; backbone=${backbone#uni-}; backbone=${backbone#rev-}
bu=bu-$backbone
robust=${ROBUST:-robust}
tag=$(echo "$attacks" | tr ',' '+')
dirs=()
for seed in $seeds; do
  out="$runs/attack-$td-e$epochs-n$n-$tag-s$seed"
  dirs+=("$out")
  if [ -f "$out/attack.json" ]; then echo "done: $out"; continue; fi
  $robust attack -c "$runs/$td-mnist-e$epochs-s$seed" --vs "$runs/$bu-mnist-e$epochs-s$seed" \
    -d mnist --data-dir "$data" -n "$n" -a "$attacks" --repeats 3 --seed "$seed" -o "$out" \
    --no-progress
done
[ -n "${NO_SUMMARY:-}" ] || python "$(dirname "$0")/summarize_paper_b.py" "${dirs[@]}" --out "$runs/summary-$td-e$epochs-n$n-$tag"
