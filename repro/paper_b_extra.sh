#!/usr/bin/env bash
# Paper B (Lelekas et al. 2020): the experiments beyond BU vs TD LeNetFC on MNIST.
#   repro/paper_b_extra.sh MNIST_DATA CIFAR_TREE RUNS STEP...
# STEP (run in the order given; each skips what is already done):
#   raw      input normalisation: BU/TD LeNetFC, 3 epochs, seeds 0-2, trained on /255 pixels
#            without mean/std (--normalize none, the paper's input), additive-noise attacks on
#            300 images; compare with the normalised 3-epoch runs (same seeds and images).
#   branch   Fig. 5 on MNIST: the 12-epoch TD LeNetFC (seed 0), adversarials fed to one input.
#   cifar    NIN-light on CIFAR-10 (JPEG mirror; the zoo's 1x28x28 input, so grey 28x28),
#            BU and TD, 3 epochs (the fewest the recipe's two drops allow), seeds $CIFAR_SEEDS
#            (default 0); attacks on 200 images and the Fig. 5 branch test, per seed.
#   arrange  TD_uni and TD_rev LeNetFC, 3 epochs, seeds 0-2 (TD_rev: $REV_SEEDS, default 0: it
#            costs 10x TD's multiply-adds), Gaussian/uniform noise vs BU on 200 images.
#   six      Fig. 6's other six attacks on 1,000 images, 12-epoch models, seed 0.
#   nin      NIN-light on MNIST (paper B's Fig. 5 setting): BU and TD, 4 epochs, seeds 0-2, fp32;
#            Fig. 6's six non-sparse attacks on 150 images per seed, salt-and-pepper on 100, and
#            the Fig. 5 branch test (Gaussian, uniform, blur) on 100 images of each seed in
#            $NIN_BRANCH_SEEDS (default 0).
#   resnet32 ResNet32 BU and TD on colour CIFAR-10 (JPEG mirror; paper B's CIFAR model),
#            $R32_EPOCHS (default 10) epochs of the paper's recipe with its mean subtraction
#            (--normalize mean), seeds $R32_SEEDS (default "0 1 2"); Fig. 6's six non-sparse attacks
#            on $R32_N (default 200) images per seed.
#   r32noise Gaussian and uniform noise on the resnet32 step's models (trained if missing, same
#            $R32_EPOCHS and $R32_SEEDS), $R32_NOISE_N (default 1000) images per seed drawn
#            afresh (--seed 10+S: not the resnet32 step's 200-image draw, which --seed S makes a
#            prefix of). $R32_ATTACKS (default gaussian,uniform) attacks the same images with
#            other attacks (the folder is then named after them, e.g. blur+contrast+spatial).
#   r32branch Fig. 5 on colour CIFAR-10 with the resnet32 step's TD models (same $R32_EPOCHS and
#            $R32_SEEDS; they must exist): Gaussian, uniform and blur, adversarials fed to each
#            input and attacks on the high or the medium input alone (the low input alone is
#            left out: blur there searches for hours and never fooled it), $R32_BRANCH_N
#            (default 500) images per seed drawn with --seed 10+S (within the r32noise step's
#            1,000 images).
# Steps raw to six need the 3- and 12-epoch BU/TD runs of repro/paper_b_mnist_train.sh in RUNS;
# nin trains its own.
# PRECISION (fp32, bf16) pins the training precision of the cifar and resnet32 steps (default:
# train's auto).
set -euo pipefail
mnist=${1:?MNIST_DATA (holding MNIST/raw)}
cifar=${2:?CIFAR_TREE}
runs=${3:?RUNS}
shift 3
here=$(dirname "$0")
robust=${ROBUST:-robust}
noise=gaussian,uniform,gaussian-fb2,uniform-fb2
nonsparse=gaussian,uniform,blur,contrast,blended,spatial   # Fig. 6 without the two sparse attacks
rev_seeds=${REV_SEEDS:-0}
attack() {  # OUT ARGS...: one robust attack run unless its result exists
  local out=$1; shift
  if [ -f "$out/attack.json" ]; then echo "done: $out"; return; fi
  $robust attack "$@" --repeats 3 -o "$out" --no-progress
}
train_cifar() {  # MODEL EPOCHS SEED [ARGS...]: one CIFAR-10 run of -r topdown unless it exists
  local m=$1 e=$2 s=$3; shift 3
  local run="$runs/cifar/$m-cifar10-e$e-s$s"
  [ -f "$run/model.safetensors" ] || $robust train -m "$m" -d cifar10 --data-dir "$cifar" \
    -r topdown -e "$e" --seed "$s" -o "$run" --progress plain --force \
    ${PRECISION:+--precision "$PRECISION"} "$@"
}
r32_pair() {  # EPOCHS SEED OUT ARGS...: BU and TD ResNet32 of SEED (trained unless done), TD vs BU
  local e=$1 s=$2 out=$3; shift 3
  for m in bu-resnet32 td-resnet32; do train_cifar $m "$e" "$s" --normalize mean; done
  attack "$out" -c "$runs/cifar/td-resnet32-cifar10-e$e-s$s" \
    --vs "$runs/cifar/bu-resnet32-cifar10-e$e-s$s" -d cifar10 --data-dir "$cifar" "$@"
}
for step in "$@"; do
  case $step in
    raw)
      NORMALIZE=none ROBUST=$robust "$here/paper_b_mnist_train.sh" "$mnist" "$runs/raw" 3 "0 1 2"
      for s in 0 1 2; do
        attack "$runs/raw/attack-td-lenetfc-e3-n300-noise-s$s" -c "$runs/raw/td-lenetfc-mnist-e3-s$s" \
          --vs "$runs/raw/bu-lenetfc-mnist-e3-s$s" -d mnist --data-dir "$mnist" -n 300 -a $noise \
          --seed "$s"
      done ;;
    branch)
      attack "$runs/branch-td-lenetfc-e12-s0" -c "$runs/td-lenetfc-mnist-e12-s0" \
        --branch all,high,mid,low -d mnist --data-dir "$mnist" -n 200 \
        -a gaussian,uniform,salt-pepper,blur --seed 0 ;;
    cifar)
      for s in ${CIFAR_SEEDS:-0}; do
        for m in bu-nin-light td-nin-light; do train_cifar $m 3 "$s"; done
        attack "$runs/cifar/attack-td-nin-light-e3-n200-s$s" \
          -c "$runs/cifar/td-nin-light-cifar10-e3-s$s" --vs "$runs/cifar/bu-nin-light-cifar10-e3-s$s" \
          -d cifar10 --data-dir "$cifar" -n 200 -a gaussian,uniform,blur --seed "$s"
        attack "$runs/cifar/branch-td-nin-light-e3-s$s" -c "$runs/cifar/td-nin-light-cifar10-e3-s$s" \
          --branch all,high,mid,low -d cifar10 --data-dir "$cifar" -n 200 -a gaussian,uniform,blur \
          --seed "$s"
      done ;;
    arrange)
      ROBUST=$robust "$here/paper_b_mnist_train.sh" "$mnist" "$runs" 3 "0 1 2" td-uni-lenetfc
      ROBUST=$robust "$here/paper_b_mnist_train.sh" "$mnist" "$runs" 3 "$rev_seeds" td-rev-lenetfc
      for td in td-uni-lenetfc td-rev-lenetfc; do
        seeds="0 1 2"; [ $td = td-rev-lenetfc ] && seeds=$rev_seeds
        for s in $seeds; do
          attack "$runs/attack-$td-e3-n200-gu-s$s" -c "$runs/$td-mnist-e3-s$s" \
            --vs "$runs/bu-lenetfc-mnist-e3-s$s" -d mnist --data-dir "$mnist" -n 200 \
            -a gaussian,uniform --seed "$s"
        done
      done ;;
    six)
      NO_SUMMARY=1 ROBUST=$robust "$here/paper_b_mnist_attack.sh" "$mnist" "$runs" 12 0 \
        salt-pepper,pointwise,blur,contrast,blended,spatial 1000 ;;
    nin)
      PRECISION=fp32 ROBUST=$robust "$here/paper_b_mnist_train.sh" "$mnist" "$runs" 4 "0 1 2" \
        "bu-nin-light td-nin-light"
      NO_SUMMARY=1 ROBUST=$robust "$here/paper_b_mnist_attack.sh" "$mnist" "$runs" 4 "0 1 2" \
        $nonsparse 150 td-nin-light
      NO_SUMMARY=1 ROBUST=$robust "$here/paper_b_mnist_attack.sh" "$mnist" "$runs" 4 "0 1 2" \
        salt-pepper 100 td-nin-light
      for s in ${NIN_BRANCH_SEEDS:-0}; do
        attack "$runs/branch-td-nin-light-e4-n100-s$s" -c "$runs/td-nin-light-mnist-e4-s$s" \
          --branch all,high,mid,low -d mnist --data-dir "$mnist" -n 100 -a gaussian,uniform,blur \
          --seed "$s"
      done ;;
    resnet32)
      e=${R32_EPOCHS:-10}
      n=${R32_N:-200}
      for s in ${R32_SEEDS:-0 1 2}; do
        r32_pair "$e" "$s" "$runs/cifar/attack-td-resnet32-e$e-n$n-s$s" -n "$n" -a $nonsparse --seed "$s"
      done ;;
    r32noise)
      e=${R32_EPOCHS:-10} n=${R32_NOISE_N:-1000} a=${R32_ATTACKS:-gaussian,uniform}
      tag=$([ "$a" = gaussian,uniform ] && echo noise || echo "${a//,/+}")
      for s in ${R32_SEEDS:-0 1 2}; do
        r32_pair "$e" "$s" "$runs/cifar/attack-td-resnet32-e$e-n$n-$tag-s$s" -n "$n" -a "$a" \
          --seed $((10 + s))
      done ;;
    r32branch)
      e=${R32_EPOCHS:-10} n=${R32_BRANCH_N:-500}
      for s in ${R32_SEEDS:-0 1 2}; do
        attack "$runs/cifar/branch-td-resnet32-e$e-n$n-s$s" -c "$runs/cifar/td-resnet32-cifar10-e$e-s$s" \
          --branch all,high,mid -d cifar10 --data-dir "$cifar" -n "$n" -a gaussian,uniform,blur \
          --seed $((10 + s))
      done ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
