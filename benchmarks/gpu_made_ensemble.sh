#!/usr/bin/env bash
# The 32-mask, two-layer MADE ensemble of configs/made-ensemble.toml (Germain et al. 2015: 86.64
# nats) on a GPU, as one command that ends within 10 minutes: it trains for at most TRAIN_SECONDS,
# scores the test set with the 32-mask mixture, and copies the results and the run's metrics
# into OUT_DIR. Run it again on the same machine and it resumes the run from its last checkpoint
# (benchmarks/runs/made-ensemble-static).
#
#   bash benchmarks/gpu_made_ensemble.sh OUT_DIR [DEVICE=cuda] [TRAIN_SECONDS=420] [MODEL=made-ensemble]
#
# genzoo need not be installed: the script runs it from src/ with the machine's own PyTorch
# (PYTHON, default python3). Data: $GENZOO_DATA, else ./.data if it exists, else ../shared/data;
# the folder must hold binarized_mnist.npz, since the machine may have no network.
# MODEL names another static config (e.g. fvsbn) for a quick check of the script itself.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu_made_ensemble.sh OUT_DIR [DEVICE] [TRAIN_SECONDS] [MODEL]}
device=${2:-cuda}
seconds=${3:-420}
model=${4:-made-ensemble}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${GENZOO_DATA:-}" ] && [ -d .data ]; then
  export GENZOO_DATA="$PWD/.data"
fi
python=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$python" benchmarks/binarized_mnist.py --models "$model" --protocols static --device "$device" \
  --max-seconds "$seconds" 2>&1 | tee "$out/$model.log"
cp benchmarks/results/binarized-mnist.json benchmarks/results/binarized-mnist.md "$out/"
cp "benchmarks/runs/$model-static/metrics.jsonl" "$out/$model-metrics.jsonl"
