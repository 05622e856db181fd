#!/usr/bin/env bash
# Run THERE (the GPU machine), from the repository root, with the wheels of prepare.sh carried along:
#
#   device run: bash benchmarks/gpu/run.sh        carry: ["benchmarks/gpu/wheels"]
#
# 1. installs the carried wheels offline next to the image's torch and JAX (only what is missing);
# 2. prints benchmarks/speed.py's table for QMIX+DMAC: the stochastic game on the GPU (env, policy and updates
#    there) at 64 / 1024 / 8192 envs, and SMAX 3m (JAX on the GPU) at 64 / 1024 envs;
# 3. fits QMIX+DMAC (the shipped configs, the paper's game) on the GPU for FIT_SECONDS (default 120) and prints
#    the env steps it made and its evaluations.
# Without a GPU it falls back to the CPU with small sizes (8 / 64 envs), so it can be tried anywhere.
# Budget: under 8 minutes on a GPU. Everything also goes to $OUT (or ./gpu-run) as speed.md and fit.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT:-gpu-run}
mkdir -p "$OUT_DIR"
FIT_SECONDS=${FIT_SECONDS:-120}
export PYTHONUNBUFFERED=1
# JAX would otherwise take 75% of the GPU's memory at its first call, leaving torch too little.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if ! "$PYTHON" -c "import torchrl, tensordict, jsonargparse, jaxmarl" 2>/dev/null; then
  if ! ls benchmarks/gpu/wheels/*.whl >/dev/null 2>&1; then
    echo "run.sh: torchrl/tensordict/jsonargparse/jaxmarl are missing and no wheels were carried: run benchmarks/gpu/prepare.sh here first, then carry benchmarks/gpu/wheels" >&2
    exit 1
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/dmac-site benchmarks/gpu/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/dmac-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  ACCELERATOR=gpu GAME_ENVS="64 1024 8192" SMAX_ENVS="64 1024"
  "$PYTHON" -c "import torch, jax; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| jax', jax.__version__, jax.devices())"
else
  ACCELERATOR=cpu GAME_ENVS="8 64" SMAX_ENVS="8 64"
  echo "run.sh: no CUDA device: falling back to the CPU with small sizes"
fi

{
  echo "## QMIX+DMAC speed, accelerator $ACCELERATOR ($(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
  for n in $GAME_ENVS; do
    # at least 4 collects of n 30-step episodes after the first (1 update per collect)
    steps=$(( n * 30 * 5 > 20000 ? n * 30 * 5 : 20000 ))
    "$PYTHON" benchmarks/speed.py --envs stochastic_game --n-envs "$n" --algorithms qmix_dmac --accelerator "$ACCELERATOR" \
      --env-steps "$steps" --train-steps "$steps" | { [ "$n" = "${GAME_ENVS%% *}" ] && cat || tail -n +3; }
  done
  for n in $SMAX_ENVS; do
    steps=$(( n * 60 * 4 > 20000 ? n * 60 * 4 : 20000 ))
    "$PYTHON" benchmarks/speed.py --envs smax --n-envs "$n" --algorithms qmix_dmac --accelerator "$ACCELERATOR" \
      --env-steps "$steps" --train-steps "$steps" | tail -n +3
  done
} | tee "$OUT_DIR/speed.md"

echo "## QMIX+DMAC fit for ${FIT_SECONDS} s on $ACCELERATOR" | tee "$OUT_DIR/fit.log"
runs=$(mktemp -d)
timeout $(( FIT_SECONDS + 120 )) "$PYTHON" -m dmac_lightning fit \
  --config configs/algorithms/qmix_dmac.yaml --config configs/stochastic_game/game.yaml --config configs/stochastic_game/dmac.yaml \
  --trainer.accelerator "$ACCELERATOR" --trainer.max_time "00:00:00:${FIT_SECONDS}" --trainer.default_root_dir "$runs" \
  --trainer.enable_progress_bar false >>"$OUT_DIR/fit.log" 2>&1
status=$?
"$PYTHON" benchmarks/gpu/summarize_fit.py "$runs" "$FIT_SECONDS" | tee -a "$OUT_DIR/fit.log"
exit $status
