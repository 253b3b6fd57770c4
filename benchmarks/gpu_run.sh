#!/usr/bin/env bash
# One binarized-MNIST benchmark run on a GPU as one command that ends within 10 minutes: it
# trains MODEL under PROTOCOL for at most TRAIN_SECONDS, scores the test set, and copies the
# results table and the run's metrics into OUT_DIR. Run it again on the same machine and it
# resumes the run from its last checkpoint (benchmarks/runs/MODEL-PROTOCOL); TRAIN_SECONDS counts
# the run's training time in all, so a second call needs a larger one (420 more: 840). The run's
# planned epochs are fitted to TRAIN_SECONDS (--fit-epochs-to-time): however fast the machine, its
# cosine schedule ends inside the budget, so one call yields a finished model. A MODEL without a
# config for PROTOCOL is refused before anything runs; a relative OUT_DIR is taken from the
# caller's folder.
#
#   bash benchmarks/gpu_run.sh OUT_DIR MODEL [PROTOCOL=static] [TRAIN_SECONDS=420] [DEVICE=cuda]
#   bash benchmarks/gpu_run.sh "$OUT" made-ensemble     # the 32-mask two-layer MADE (86.64 nats)
#
# genzoo need not be installed: the script runs it from src/ with the machine's own PyTorch
# (PYTHON, default python3). Data: $GENZOO_DATA, else ./.data if it exists, else ../shared/data;
# the folder must hold binarized_mnist.npz (static) or mnist.npz (dynamic), since the machine may
# have no network.
set -euo pipefail
usage="usage: bash benchmarks/gpu_run.sh OUT_DIR MODEL [PROTOCOL] [TRAIN_SECONDS] [DEVICE]"
out=${1:?$usage}
model=${2:?$usage}
protocol=${3:-static}
seconds=${4:-420}
device=${5:-cuda}
repo=$(cd "$(dirname "$0")/.." && pwd)
# the model and protocol are checked before anything is created or copied: a bad one used to
# leave OUT_DIR holding the published table and end in a failed cp
case "$protocol" in
  static) configs=configs ;;
  dynamic) configs=configs/dynamic ;;
  *) echo "gpu_run.sh: PROTOCOL must be static or dynamic, got '$protocol'" >&2; exit 2 ;;
esac
if [[ "$model" == */* || ! -f "$repo/$configs/$model.toml" ]]; then
  accepted=$(cd "$repo/$configs" && ls -- *.toml | sed 's/\.toml$//' | paste -sd ' ' -)
  echo "gpu_run.sh: no $protocol config for model '$model' ($configs/$model.toml); accepted: $accepted" >&2
  exit 2
fi
# OUT_DIR is made absolute before the cd into the repository, so a relative one is taken from the
# caller's folder rather than landing inside the repository
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$repo"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${GENZOO_DATA:-}" ] && [ -d .data ]; then
  export GENZOO_DATA="$PWD/.data"
fi
python=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$python" benchmarks/binarized_mnist.py --models "$model" --protocols "$protocol" --device "$device" \
  --max-seconds "$seconds" --fit-epochs-to-time 2>&1 | tee "$out/$model-$protocol.log"
cp benchmarks/results/binarized-mnist.json benchmarks/results/binarized-mnist.md "$out/"
cp "benchmarks/runs/$model-$protocol/metrics.jsonl" "$out/$model-$protocol-metrics.jsonl"
