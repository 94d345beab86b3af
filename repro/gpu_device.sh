#!/usr/bin/env bash
# Bootstrap of repro/gpu_session.sh on a bare, offline GPU machine that has PyTorch but not our
# other dependencies (this workplace's lent H200): install the wheels carried in .whl/ into
# /tmp/site, unpack the data carried in .devdata/ (cifar10-jpeg.tar.gz, MNIST/raw/), run the
# session with DEADLINE_S, and pack its results into OUT (at most 8 files of <= 16 MiB):
# console.log, results.tgz (everything but weights), weights.tgz.part-* (the models, and the
# last.safetensors of a train step cut by the deadline, to resume elsewhere). A folder
# .devdata/resume/ (an earlier lease's OUT, unpacked) is copied in first: its studies resume.
#
#   bash repro/gpu_device.sh OUT [DEADLINE_S]
#
# The device tool sends the checkout's files (64 MiB at most); docs/data alone is over 60 MB.
# Session 19 kept it home by untracking it for the call (nothing is committed meanwhile):
#   git rm -r -q --cached docs/data && echo /docs/data/ >> .git/info/exclude   # before
#   git reset -q -- docs/data && sed -i '/^\/docs\/data\/$/d' .git/info/exclude  # after
# with .whl/ (pip download of foolbox, eagerpy, GitPython, gitdb, smmap, imagecorruptions-imaug,
# typer and its pydantic, rich, shellingham for cp312) and .devdata/ in .git/info/exclude and
# named in the call's carry.
set -uo pipefail
out=${1:?OUT}
deadline=${2:-480}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 5; }
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/cifar /tmp/mnist
tar xzf .devdata/cifar10-jpeg.tar.gz -C /tmp/cifar && cp -r .devdata/MNIST /tmp/mnist/ \
  || { echo "data unpack failed"; exit 6; }
if [ -d .devdata/resume ]; then mkdir -p /tmp/g && cp -r .devdata/resume/. /tmp/g/; fi
ROBUST="python3 -m robustcli" bash repro/gpu_session.sh /tmp/cifar /tmp/mnist /tmp/g "$deadline" \
  2>&1 | tee "$out/console.log"
nvidia-smi >> "$out/console.log" 2>&1
cd /tmp/g || exit 7
tar czf "$out/results.tgz" --exclude='*.safetensors' .
{ find . -name model.safetensors -not -path './smoke/*'
  for f in $(find . -name last.safetensors); do [ -f "${f%/*}/model.safetensors" ] || echo "$f"; done
} | tar czf /tmp/weights.tgz -T -
split -b 15M /tmp/weights.tgz "$out/weights.tgz.part-"
ls -la "$out"
