#!/usr/bin/env bash
# The prepared accelerator check (about 8 minutes): run it as ONE command the first time a GPU or TPU is lent.
#
# It records the device, runs both benchmarks (bound propagators and the GLS member axis), a short RGS and
# PGPE run of the `tiny` config (synthetic data: no data set needed) and the bound tests, and writes at most
# 8 files into $OUT (default experiments/results/accelerator): env.txt, bench_bounds.{json,md},
# bench_gls.{json,md}, gls_runs.txt, tests.txt. Each step has its own time limit, so one slow step cannot
# take the others' time; a step that fails is recorded and the script goes on.
#
# The device image has jax, flax, optax and orbax but not evosax: carry its wheel. On this machine:
#     pip download --no-deps evosax -d .whl          # .whl/ is git-ignored; carry it
# then, on the device (the device tool's `run`, carry [".whl"]):
#     bash experiments/accelerator_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/results/accelerator}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log its status and wall time
  local name=$1 limit=$2
  shift 2
  local began=$SECONDS
  timeout "$limit" "$@"
  local status=$?
  echo "step $name: exit $status, $((SECONDS - began)) s (limit $limit s)" | tee -a "$OUT/env.txt" >&2
}

$PY -c "import evosax" 2>/dev/null || $PY -m pip install -q --no-deps --no-index --find-links .whl evosax
{
  date -u
  uptime
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import jax, jaxlib, flax, optax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, \
'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())"
  git rev-parse --short HEAD 2>/dev/null || echo "commit: not a git checkout"
} > "$OUT/env.txt" 2>&1

# Bounds and training steps: CNN3 and CNN7 at batch 128, every mode the CPU table has.
step bench_bounds 170 $PY experiments/bench_bounds.py --archs cnn3,cnn7 \
  --relaxations ibp,crown-ibp,crown,alpha-crown --modes single,grad,fused,vmap --batch 128 --repeats 3 \
  --out "$OUT/bench_bounds.json" > "$OUT/bench_bounds.md" 2>&1

# GLS member axis: one vmap against chunks and a Python loop, PGPE populations and RGS samples.
step bench_gls 150 $PY experiments/bench_gls.py --relaxations ibp crown-ibp deeppoly --populations 16 64 256 \
  --samples 4 16 --batch 32 --repeats 2 --out "$OUT/gls" > /dev/null 2>&1
cp "$OUT/gls/bench_gls.json" "$OUT/bench_gls.json" 2>/dev/null
cp "$OUT/gls/bench_gls.md" "$OUT/bench_gls.md" 2>/dev/null
rm -rf "$OUT/gls"

# A short RGS and PGPE run of each kind, with their own step-time estimates.
{
  for method in rgs pgpe; do
    step "train_$method" 45 $PY -m jaxcert.train --config tiny --method "$method" --relaxation crown-ibp \
      --steps 40 --out "/tmp/accelerator-$method" --fresh --no-progress
  done
} > "$OUT/gls_runs.txt" 2>&1

# The bound tests (soundness and tightness of every relaxation) on the accelerator.
step tests 120 $PY -m pytest -q -x -p no:cacheprovider tests/test_ibp.py tests/test_crown.py \
  tests/test_crown_ibp.py tests/test_alpha_crown.py tests/test_deepz.py tests/test_hbox.py > "$OUT/tests.txt" 2>&1

ls -la "$OUT" >&2
