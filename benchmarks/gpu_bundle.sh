#!/usr/bin/env bash
# The carry bundle of a GPU visit (benchmarks/gpu_visit.sh), made here with the registries.
#
#   bash benchmarks/gpu_bundle.sh [DIR] [PYTHON_VERSION]     (default: .gpu 3.12)
#
# What a bare GPU machine of this workplace lacks — no internet, Python 3.12, torch and most of
# the scientific stack preinstalled (the device tool's KINDS.md) — in two folders, each under
# the 64 MiB one call may carry together with the repository:
#   DIR/a: Optuna and its missing dependencies as wheels, elasticdeform's sdist (built there),
#          the four MNIST IDX files (gzip) and the first part of the converted ResNet-50
#          weights; SHA256SUMS of the whole weights file and of the IDX files;
#   DIR/b: the rest of the weights (a split, not a lossy cast: the visit joins the parts on
#          the warm machine and checks the SHA-256 before use).
# The folder is ignored by git (.git/info/exclude), so it travels only when a call carries it.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.gpu}
PYV=${2:-3.12}
PY=${PYTHON:-.venv/bin/python}
CACHE=${MNISTLAB_CACHE:-$HOME/.cache/mnistlab}
WEIGHTS=$CACHE/weights/resnet50-imported.pt
PART_A_BYTES=${PART_A_BYTES:-44000000}  # call 1 also carries wheels and MNIST

grep -qx "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >> .git/info/exclude
rm -rf "$DIR" && mkdir -p "$DIR/a/wheels" "$DIR/a/sdist" "$DIR/a/mnist" "$DIR/b"

# Optuna and what the device image does not have (numpy, tqdm, PyYAML, packaging, MarkupSafe
# and typing-extensions are there); pinned to the versions this project is tested with.
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64 --platform any)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
  --implementation cp "${plat[@]}" -d "$DIR/a/wheels" \
  optuna==5.1.0 alembic==1.20.1 SQLAlchemy==2.1.9 greenlet==3.5.6 Mako==1.4.3 colorlog==6.12.0
# elasticdeform 0.5.1's wheel was built against NumPy 1: its source, compiled there.
"$PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$DIR/a/sdist" \
  elasticdeform==0.5.1

[ -f "$CACHE/mnist/train-images-idx3-ubyte" ] || "$PY" -m mnistlab data fetch
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
         t10k-labels-idx1-ubyte; do
  gzip -9 -c "$CACHE/mnist/$f" > "$DIR/a/mnist/$f.gz"
done
[ -f "$WEIGHTS" ] || "$PY" -m mnistlab weights import resnet50
head -c "$PART_A_BYTES" "$WEIGHTS" > "$DIR/a/resnet50.part-a"
tail -c +"$((PART_A_BYTES + 1))" "$WEIGHTS" > "$DIR/b/resnet50.part-b"
(cd "$CACHE/weights" && sha256sum resnet50-imported.pt) > "$DIR/a/SHA256SUMS"
(cd "$CACHE/mnist" && sha256sum train-images-idx3-ubyte train-labels-idx1-ubyte \
  t10k-images-idx3-ubyte t10k-labels-idx1-ubyte) >> "$DIR/a/SHA256SUMS"
du -sh "$DIR/a" "$DIR/b"
