#!/usr/bin/env bash
# The prepared GPU session of issue #15 (one large GPU, about 15 minutes of device time in all,
# start-up included, so about 9 minutes of work): paper A's Table 1 on ResNet-20 and paper B's
# LeNetFC runs at the paper's 30 epochs, side by side, as the `gpu` profiles of
#   studies/ranabhat2025-table1-resnet20.yaml  6 variants x 3 seeds, fast recipe, 15 epochs,
#                                              full eval-c (19 x 5 x 10,000), 9 worker processes
#   studies/lelekas2020-fig6.yaml              BU / TD / TD_uni / TD_rev x 3 seeds, 30 epochs,
#                                              5 cheap attacks x 3 repeats on 1,000 test images
# Both are studies: what is cut by DEADLINE_S is kept and resumes on a rerun. Session 19's
# H200 leases held about half of it: the 9 plain / PP / PP + GELU trainings, 3 BU LeNetFCs and
# partial runs (docs/results.md); bring back last.safetensors (gpu_device.sh does) to resume.
#
#   repro/gpu_session.sh CIFAR_TREE MNIST_DIR OUT [DEADLINE_S]   # on the GPU machine
#   TINY=1 repro/gpu_session.sh - - /tmp/gpu-tiny                  # the same pipeline on CPU
#
# CIFAR_TREE: the extracted CIFAR-10 (JPEG mirror) tree; MNIST_DIR: a folder holding MNIST/raw.
# DEADLINE_S (default 480): seconds after the start at which unfinished steps are stopped, so
# that the reports and the archive of the results are written inside the device's time limit.
# First a smoke check (train, eval-c, attack on the GPU in about a minute): if it fails, the
# script stops there and the rest of the device time is left for a fixed rerun.
# TINY=1 runs the studies' smoke profiles (embedded digits) so the script itself is tested.
# A second, shorter lease (a rerun that resumes OUT): SMOKE=0 skips the smoke check, STUDIES
# names the studies to run (default "table1 fig6"), REPORT=0 leaves the reports to later.
set -uo pipefail
cifar=${1:?CIFAR_TREE}
mnist=${2:?MNIST_DIR}
out=${3:?OUT}
deadline=${4:-480}
robust=${ROBUST:-robust}  # e.g. ROBUST="python3 -m robustcli" where only PYTHONPATH has it
here=$(cd "$(dirname "$0")/.." && pwd)
t_start=$(date +%s)
mkdir -p "$out"
log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - t_start ))s] $*" | tee -a "$out/session.log"; }
timed() {  # NAME CMD...: run, keep its output in OUT/NAME.log, log the wall time and status
  local name=$1 t0 rc; shift; t0=$(date +%s)
  "$@" > "$out/$name.log" 2>&1; rc=$?
  tail -n 5 "$out/$name.log"
  log "$name: rc=$rc, $(( $(date +%s) - t0 )) s"
  return $rc
}
log "start on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo cpu)"
"${PYTHON:-python3}" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' \
  2>&1 | tee -a "$out/session.log"

if [ -n "${TINY:-}" ]; then
  pa=(--profile smoke) pb=(--profile smoke) da=() db=() smoke_data=(-d digits)
  mnist_data=()
else
  pa=(--profile gpu) pb=(--profile gpu) da=(--data-dir "$cifar") db=(--data-dir "$mnist")
  smoke_data=(-d cifar10 --data-dir "$cifar") mnist_data=(-d mnist --data-dir "$mnist")
fi

# smoke: every code path of the session once on this device (and the CIFAR-10 decode cache)
[ "${SMOKE:-1}" = 0 ] || { timed smoke_train $robust train -m pp-resnet20 "${smoke_data[@]}" -e 1 \
  -o "$out/smoke" --force --progress plain \
  && timed smoke_evalc $robust eval-c "$out/smoke" --generate -c gaussian_noise,glass_blur,frost \
    -s 5 -n "${TINY:+16}${TINY:-500}" "${da[@]}" -o "$out/smoke_evalc.json" --force --progress plain \
  && timed smoke_attack $robust attack td-rev-lenetfc --untrained "${mnist_data[@]}" -n 64 \
    -a gaussian,blur -o "$out/smoke_attack" --force --progress plain \
  || { log "smoke check failed: stopping (see the smoke_*.log)"; exit 3; }; }
studies=${STUDIES:-table1 fig6}

left=$(( deadline - ($(date +%s) - t_start) )); [ "$left" -ge 1 ] || left=1  # timeout 0 = none
log "studies start, ${left} s left before the deadline"
# each study in its own process group (setsid), so that its workers go with it at the deadline
pid_a= pid_b=
if [[ " $studies " = *" table1 "* ]]; then
  setsid timeout -k 10 "$left" $robust study "$here/studies/ranabhat2025-table1-resnet20.yaml" \
    "${pa[@]}" "${da[@]}" -j 9 -o "$out/table1" --progress plain >> "$out/table1.log" 2>&1 &
  pid_a=$!
fi
if [[ " $studies " = *" fig6 "* ]]; then
  setsid timeout -k 10 "$left" $robust study "$here/studies/lelekas2020-fig6.yaml" \
    "${pb[@]}" "${db[@]}" -j 6 -o "$out/fig6" --progress plain >> "$out/fig6.log" 2>&1 &
  pid_b=$!
fi
for p in $pid_a $pid_b; do wait "$p"; log "study (pid $p): rc=$? (124: stopped at the deadline)"; done
for p in $pid_a $pid_b; do kill -9 -- "-$p" 2>/dev/null; done  # workers left by a stopped study
[ "${REPORT:-1}" = 0 ] && { log done; exit 0; }

for s in table1:ranabhat2025-table1-resnet20 fig6:lelekas2020-fig6; do
  prof=("${pa[@]}"); [ "${s%%:*}" = fig6 ] && prof=("${pb[@]}")
  $robust study "$here/studies/${s#*:}.yaml" "${prof[@]}" -o "$out/${s%%:*}" --report \
    --format markdown > "$out/${s%%:*}.md" 2> "$out/${s%%:*}_report.log" || true
done
log done
