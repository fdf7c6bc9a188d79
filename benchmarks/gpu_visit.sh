#!/usr/bin/env bash
# One prepared visit to a GPU machine: install what it lacks from the carried bundle, place the
# data and weights, run the CUDA-only tests, then every study, and pack what comes back.
#
#   bash benchmarks/gpu_visit.sh place OUT        # call 1 (carry .gpu/a): wheels, sdist, data
#   bash benchmarks/gpu_visit.sh run   OUT        # call 2 (carry .gpu/b): weights, tests, studies
#   bash benchmarks/gpu_visit.sh all   OUT        # both, where one call can carry the bundle
#
# Options (after OUT): --device cuda|cpu (cuda), --profile full|quick (full), --bundle DIR
# (.gpu), --with-paper (also the opt-in stn-paper), --run-seconds N (420: the studies' limit).
# Environment: PYTHON (python3: the machine's, holding torch), SITE (/tmp/mnistlab-site: the
# installed wheels, outside any virtual environment), MNISTLAB_CACHE (/tmp/mnistlab-cache),
# RESULTS (/tmp/mnistlab-results). Files written outside OUT stay on a warm machine between
# the two calls (call 2 must follow call 1 within the machine's warm time, 30 s).
#
# Into OUT (at most 8 files come back): visit.log, stages.json (seconds per stage),
# env.txt, cuda_tests.log, throughput.json, results.tar.gz (every metrics.json and config.json,
# the manifest with each study's wall time, report.md and report.html).
set -uo pipefail
STAGE=${1:?stage: place, run or all}
OUT=${2:?output folder}
shift 2
DEVICE=cuda PROFILE=full BUNDLE=.gpu WITH=() RUN_SECONDS=420
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift ;;
    --profile) PROFILE=$2; shift ;;
    --bundle) BUNDLE=$2; shift ;;
    --with-paper) WITH=(--with stn-paper) ;;
    --run-seconds) RUN_SECONDS=$2; shift ;;
    *) echo "gpu_visit: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/mnistlab-site}
export MNISTLAB_CACHE=${MNISTLAB_CACHE:-/tmp/mnistlab-cache}
RESULTS=${RESULTS:-/tmp/mnistlab-results}
export PYTHONPATH=$SITE:$REPO/src PYTHONUNBUFFERED=1 MNISTLAB_PROGRESS=lines
mkdir -p "$OUT"
exec > >(tee -a "$OUT/visit.log") 2>&1
STAGES=$OUT/stages.json
[ -f "$STAGES" ] || echo '{}' > "$STAGES"

stage() {  # stage NAME COMMAND...: run, time, record seconds and status in stages.json
  local name=$1 t0 rc
  shift
  echo "== $name: $*"
  t0=$(date +%s.%N)
  "$@"
  rc=$?
  "$PY" - "$STAGES" "$name" "$t0" "$rc" <<'EOF'
import json, sys, time
path, name, t0, rc = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
d = json.load(open(path))
d[name] = {"seconds": round(time.time() - t0, 1), "exit": rc}
json.dump(d, open(path, "w"), indent=1)
EOF
  echo "== $name: exit $rc"
  return $rc
}

install_wheels() {
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$BUNDLE"/a/wheels/*.whl
}

build_elasticdeform() {  # from source against the machine's NumPy (its wheel wants NumPy 1)
  "$PY" -c "import elasticdeform" 2>/dev/null && return 0
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
    --target "$SITE" "$BUNDLE"/a/sdist/elasticdeform-*.tar.gz
}

place_data() {
  mkdir -p "$MNISTLAB_CACHE/mnist" "$MNISTLAB_CACHE/weights"
  for f in "$BUNDLE"/a/mnist/*.gz; do
    gunzip -c "$f" > "$MNISTLAB_CACHE/mnist/$(basename "$f" .gz)"
  done
  cp "$BUNDLE/a/resnet50.part-a" "$MNISTLAB_CACHE/weights/resnet50.part-a"
  cp "$BUNDLE/a/SHA256SUMS" "$MNISTLAB_CACHE/SHA256SUMS"
  (cd "$MNISTLAB_CACHE/mnist" && grep idx ../SHA256SUMS | sha256sum -c --quiet)
}

join_weights() {  # the two parts, checked against the SHA-256 of the file they came from
  local w=$MNISTLAB_CACHE/weights
  cat "$w/resnet50.part-a" "$BUNDLE/b/resnet50.part-b" > "$w/resnet50-imported.pt"
  (cd "$w" && grep resnet50 ../SHA256SUMS | sha256sum -c --quiet) && rm -f "$w/resnet50.part-a"
}

describe() {
  { date -u; uname -a; nvidia-smi 2>/dev/null || echo "no nvidia-smi"; "$PY" -V
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
              torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    "$PY" -c "import optuna, elasticdeform; print('optuna', optuna.__version__, 'elasticdeform ok')"
  } > "$OUT/env.txt" 2>&1
}

cuda_tests() {
  "$PY" -m pytest -q -p no:cacheprovider --timeout 300 tests/test_cuda.py \
    > "$OUT/cuda_tests.log" 2>&1
  local rc=$?
  tail -3 "$OUT/cuda_tests.log"
  return $rc
}

studies() {
  timeout "$RUN_SECONDS" "$PY" -m mnistlab run all --profile "$PROFILE" --protocol both \
    --device "$DEVICE" --results "$RESULTS" "${WITH[@]}"
}

throughput() {  # smaller on a CPU rehearsal: the GPU's numbers are the ones that matter
  local size=()
  [ "$DEVICE" = cpu ] && size=(--images 256 --samples 1280)
  "$PY" benchmarks/gpu_throughput.py --device "$DEVICE" "${size[@]}" -o "$OUT/throughput.json"
}

pack() {
  (cd "$RESULTS" && find . \( -name metrics.json -o -name config.json -o -name manifest.json \
    -o -name report.md -o -name report.html -o -name 'run.log' \) -print0 \
    | tar -czf "$OUT/results.tar.gz" --null -T -)
}

case $STAGE in
  place|all)
    stage wheels install_wheels
    stage elasticdeform build_elasticdeform
    stage data place_data ;;&
  run|all)
    stage weights join_weights || exit 1
    stage describe describe
    stage cuda_tests cuda_tests
    stage throughput throughput
    stage studies studies
    stage pack pack ;;
  place) ;;
  *) echo "gpu_visit: unknown stage $STAGE (place, run or all)" >&2; exit 2 ;;
esac
cat "$STAGES"
